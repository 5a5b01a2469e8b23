//! Sessions with the `pixeldit` custom-op domain created from many threads at once, in a fresh process (its own test
//! binary, so no earlier session has registered the domain). ONNX Runtime registers the domain in a process-wide map
//! with a check-then-insert race; before the runtime serialized the first registration this failed with "the domain
//! is already exist" (seen in CI: quantize tests loading models in parallel).

mod util;

use pixeldit_runtime::backend::ort::{OrtBackend, OrtOptions};
use std::sync::{Arc, Barrier};

#[test]
fn sessions_with_the_custom_domain_can_be_created_concurrently() {
    let Some(lib) = util::need_ort("sessions_with_the_custom_domain_can_be_created_concurrently") else {
        return;
    };
    let model = util::fixture("rotary_attention_custom.onnx");
    let threads = 12;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (barrier, model, lib) = (barrier.clone(), model.clone(), lib.clone());
            std::thread::spawn(move || {
                let opts = OrtOptions {
                    library: Some(lib),
                    threads: Some(1),
                    ..Default::default()
                };
                barrier.wait();
                OrtBackend::with_options(&model, &opts).map(|_| ())
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        if let Err(e) = h.join().expect("thread panicked") {
            panic!("session {i}: {e}");
        }
    }
}
