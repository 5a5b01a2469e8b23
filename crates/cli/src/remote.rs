//! `pixeldit-run --triton URL --model NAME`: the forwards run on a Triton Inference Server.

use crate::run_cli::SampleArgs;
use anyhow::{bail, Result};
use pixeldit_runtime::Backend;
use pixeldit_spec::ModelMetadata;

/// A model served by Triton: the backend that runs its forwards and its metadata from the server.
pub(crate) struct Remote {
    /// Runs the forwards on the server.
    pub backend: Box<dyn Backend>,
    /// The model's metadata from its Triton configuration.
    pub meta: ModelMetadata,
}

/// The served model when `--triton` is given.
pub(crate) fn connect(a: &SampleArgs) -> Result<Option<Remote>> {
    if a.triton_url().is_some() {
        bail!("--triton: not available in this build yet");
    }
    Ok(None)
}
