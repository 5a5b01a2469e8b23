//! `pixeldit-run --triton URL --model NAME`: the forwards run on a Triton Inference Server.

use crate::run_cli::SampleArgs;
use anyhow::{bail, Result};
use pixeldit_runtime::Backend;
use pixeldit_spec::ModelMetadata;

/// The remote backend and, when no local model file is given, the model's metadata from the server.
pub(crate) fn connect(a: &SampleArgs) -> Result<(Option<Box<dyn Backend>>, Option<ModelMetadata>)> {
    if a.triton_url().is_some() {
        bail!("--triton: not available in this build yet");
    }
    Ok((None, None))
}
