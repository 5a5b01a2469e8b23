//! Generates the prost types of Triton's `model_config.proto` and its encoded `FileDescriptorSet` (read by
//! prost-reflect for the text format of `config.pbtxt`), without protoc.

use prost::Message;

fn main() {
    let dir = std::env::args().nth(1).expect("proto directory");
    let out = std::env::args().nth(2).expect("output directory");
    let fds = protox::compile([format!("{dir}/model_config.proto")], [dir.clone()]).expect("compiles");
    std::fs::write(format!("{out}/model_config.fds.bin"), fds.encode_to_vec()).expect("write descriptor set");
    let mut cfg = prost_build::Config::new();
    cfg.out_dir(&out);
    // Ordered maps: deterministic iteration and output.
    cfg.btree_map(["."]);
    cfg.compile_fds(fds).expect("generates");
}
