//! `y_embedder` and `y_pos_embedding`: the text stream `RMSNorm(Linear(E -> D)(text)) + pos` (spec 5.2).

use crate::nn::Ctx;
use crate::Result;
use pixeldit_graph::{DType, Value};

/// `[B, L, E]` text-encoder states -> `[B, L, D]` text tokens (`y_pos_embedding` is `[1, L, D]`).
pub fn text_embedder(cx: &mut Ctx, text: Value) -> Result<Value> {
    let h = cx.linear(text, "y_embedder.proj", true)?;
    let h = cx.rms_norm(h, "y_embedder.norm.weight")?;
    let pos = cx.weight("y_pos_embedding", DType::F32)?;
    Ok(cx.g.scoped("y_pos_embedding", |g| g.add(h, pos))?)
}
