//! `pixeldit-run --triton URL --model NAME`: the forwards run on a Triton Inference Server, or whole images in its
//! pipeline model.

use super::sample::{finish, Finished};
use super::{SampleArgs, Target};
use anyhow::{Context, Result};
use ndarray::Axis;
use pixeldit_runtime::Backend;
use pixeldit_spec::ModelMetadata;
use pixeldit_triton::{ClientOptions, TritonModel};
use std::path::PathBuf;

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
    let (Some(url), Some(name)) = (a.triton.as_deref(), a.triton_model.as_deref()) else {
        return Ok(None);
    };
    let opts = ClientOptions {
        version: a.triton_version.clone(),
        ..Default::default()
    };
    let model = TritonModel::connect(url, name, &opts)?;
    let meta = match model.metadata() {
        Ok(m) => Some(m.clone()),
        Err(e) if a.model.is_none() => return Err(e.into()),
        Err(_) => None,
    };
    let pipeline = if a.triton_step_wise {
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

/// Images requested in flight at once from a pipeline model.
const PIPELINE_CONCURRENCY: usize = 16;

/// `--triton` with a pipeline model on the server (`NAME_pipeline`): one request per image, up to
/// [`PIPELINE_CONCURRENCY`] in flight; the samples come back as `x` and are written like local ones.
pub(super) fn sample_in_server(
    a: &SampleArgs,
    target: Target,
    requests: Vec<pixeldit_triton::PipelineRequest>,
    out_paths: &[PathBuf],
    steps: usize,
    sampler_line: String,
    report: serde_json::Value,
) -> Result<()> {
    let pipeline = target
        .pipeline
        .as_ref()
        .context("no pipeline model on the server")?;
    let name = pipeline.name().to_string();
    crate::note!(
        "pixeldit-run: using the Triton pipeline model {name} (one request per image, sampled in the server)"
    );
    let bar = crate::progress::steps(requests.len(), a.quiet);
    let start = std::time::Instant::now();
    let mut samples = Vec::with_capacity(requests.len());
    for chunk in requests.chunks(PIPELINE_CONCURRENCY) {
        let results: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|r| s.spawn(move || pipeline.generate(r)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("request thread"))
                .collect()
        });
        for r in results {
            let (_, x) = r?;
            samples.push(x);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let views: Vec<_> = samples.iter().map(|x| x.view().insert_axis(Axis(0))).collect();
    let x = ndarray::concatenate(Axis(0), &views)?
        .into_dimensionality::<ndarray::Ix4>()
        .context("the pipeline returned samples of another rank")?;
    let backend = target
        .remote
        .as_deref()
        .context("the pipeline runs on a Triton server")?;
    let mut report = report;
    report["triton_pipeline"] = serde_json::json!(name);
    report["requests"] = serde_json::json!(requests.len());
    finish(
        a,
        &x,
        out_paths,
        Finished {
            meta: &target.meta,
            backend,
            steps,
            seconds,
            report,
            sampler_line: format!("{sampler_line}, in the server ({name})"),
            forwards_line: format!("{} pipeline request(s), ", requests.len()),
        },
    )
}
