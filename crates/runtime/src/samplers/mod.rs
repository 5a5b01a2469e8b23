//! The samplers, as pure functions over a `model(x, t, cond) -> v` closure:
//!
//! * [`flow`]: the class-conditional rectified-flow sampler (`flow_dpm`, `euler`, `heun`, batched CFG).
//! * [`dpm_solver`]: the text-to-image DPM-Solver++ 2M sampler (flow shift, CFG with a negative prompt).

pub mod dpm_solver;
pub mod flow;
