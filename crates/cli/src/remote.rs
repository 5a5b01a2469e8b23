//! `pixeldit-run --triton URL --model NAME`: the forwards run on a Triton Inference Server.

use crate::run_cli::SampleArgs;
use anyhow::Result;
use pixeldit_runtime::Backend;
use pixeldit_spec::ModelMetadata;
use pixeldit_triton::{ClientOptions, TritonModel};

/// A model served by Triton: the backend that runs its forwards and its metadata from the server.
pub(crate) struct Remote {
    /// Runs the forwards on the server.
    pub backend: Box<dyn Backend>,
    /// The model's metadata from its Triton configuration (`None` when the configuration has none and a local
    /// model file supplies it).
    pub meta: Option<ModelMetadata>,
    /// The pipeline model `NAME_pipeline` when the server has it ready (and `--triton-step-wise` is not given).
    pub pipeline: Option<TritonModel>,
}

/// The served model when `--triton URL --model NAME` is given. Without a local model file the server's model
/// configuration must carry the PixelDiT metadata.
pub(crate) fn connect(a: &SampleArgs) -> Result<Option<Remote>> {
    let (Some(url), Some(name)) = (a.triton_url(), a.triton_model_name()) else {
        return Ok(None);
    };
    let opts = ClientOptions {
        version: a.triton_version().map(str::to_string),
        ..Default::default()
    };
    let model = TritonModel::connect(url, name, &opts)?;
    let meta = match model.metadata() {
        Ok(m) => Some(m.clone()),
        Err(e) if a.model_path().is_none() => return Err(e.into()),
        Err(_) => None,
    };
    let pipeline = if a.triton_step_wise() {
        None
    } else {
        TritonModel::connect(url, &pixeldit_triton::pipeline::pipeline_name(name), &opts).ok()
    };
    Ok(Some(Remote {
        backend: Box::new(model),
        meta,
        pipeline,
    }))
}
