//! `y_embedder` and `y_pos_embedding`: the text stream `RMSNorm(Linear(E -> D)(text)) + pos` (spec 5.2).

use crate::nn::Ctx;
use crate::Result;
use pixeldit_graph::{DType, Value};
use pixeldit_spec::ModelConfig;

/// `[B, L, E]` text-encoder states -> `[B, L, D]` text tokens (`y_pos_embedding` is `[1, L, D]`).
pub fn text_embedder(cx: &mut Ctx, cfg: &ModelConfig, text: Value) -> Result<Value> {
    let d = cfg.hidden_size;
    let len = cx.g.shape(text)[1].fixed().expect("fixed text length");
    let h = cx.linear(text, "y_embedder.proj", d, true)?;
    let h = cx.rms_norm(h, "y_embedder.norm.weight")?;
    let pos = cx.weight("y_pos_embedding", &[1, len, d], DType::F32)?;
    Ok(cx.g.scoped("y_pos_embedding", |g| g.add(h, pos))?)
}
