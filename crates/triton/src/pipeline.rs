//! The pipeline model written next to a denoiser (`NAME_pipeline`): Triton's python backend running
//! `crates/triton/pipeline/model.py` with the sampler library `libpixeldit_triton_pipeline.so` (the crate
//! `pixeldit-triton-pipeline`). One request (class, seed, optional sampler settings) gives one image; every network
//! forward is a BLS request to the denoiser model, whose dynamic batcher then batches the steps of concurrent
//! requests.
//!
//! Inputs (KServe v2): `class` INT64 [1], `seed` UINT64 [1]; optional `index` UINT64 [1] (position in the seed's
//! noise stream), `steps` INT32 [1], `cfg` FP32 [1], `sampler` BYTES [1], `interval` FP32 [2], `shift` FP32 [1].
//! Outputs: `image` UINT8 [3, H, W], `x` FP32 [C, H, W].

use crate::config::{check_model_name, config_text, CONFIG_FILE, README_FILE, VERSION};
use crate::error::{Result, TritonError};
use crate::pb::inference::model_instance_group::Kind;
use crate::pb::inference::{
    DataType, ModelConfig, ModelInput, ModelInstanceGroup, ModelOutput, ModelParameter,
};
use pixeldit_spec::{ModelKind, ModelMetadata, META_KEY};
use std::path::{Path, PathBuf};

/// File name of the sampler library in the pipeline's version folder.
pub const LIBRARY_FILE: &str = "libpixeldit_triton_pipeline.so";
/// The python-backend model file.
pub const MODEL_PY_FILE: &str = "model.py";
/// `model.py`, embedded.
pub const MODEL_PY: &str = include_str!("../pipeline/model.py");
/// Config parameter naming the denoiser model that the pipeline calls.
pub const DENOISER_KEY: &str = "pixeldit.denoiser";
/// Config parameter with the denoiser's `max_batch_size` (batch-only inputs are sent as `[B, 1]` when > 0).
pub const DENOISER_MBS_KEY: &str = "pixeldit.denoiser_max_batch_size";
/// Config parameter naming the library file.
pub const LIBRARY_KEY: &str = "pixeldit.library";

/// The pipeline model's name for a denoiser: `<denoiser>_pipeline`.
pub fn pipeline_name(denoiser: &str) -> String {
    format!("{denoiser}_pipeline")
}

/// Where the sampler library is looked for: `PIXELDIT_PIPELINE_LIB`, else next to the running executable (and in
/// its `deps/`, where `cargo test` leaves it).
pub fn find_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PIXELDIT_PIPELINE_LIB") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join(LIBRARY_FILE), dir.join("deps").join(LIBRARY_FILE)]
        .into_iter()
        .find(|p| p.is_file())
}

fn input(name: &str, dt: DataType, dims: Vec<i64>, optional: bool) -> ModelInput {
    ModelInput {
        name: name.into(),
        data_type: dt as i32,
        dims,
        optional,
        ..Default::default()
    }
}

/// The pipeline's `ModelConfig` for the denoiser `denoiser` (its metadata `meta`, its `max_batch_size`), with
/// `instances` python-backend instances (each one request at a time).
pub fn pipeline_config(
    meta: &ModelMetadata,
    denoiser: &str,
    denoiser_max_batch_size: usize,
    instances: usize,
) -> Result<ModelConfig> {
    check_model_name(denoiser)?;
    if meta.config.kind != ModelKind::C2i {
        return Err(TritonError::Options(format!(
            "{}: the in-server pipeline serves class-conditional models (text-to-image requests are not \
             implemented yet)",
            meta.config.name
        )));
    }
    if instances == 0 {
        return Err(TritonError::Options(
            "pipeline instance count must be at least 1".into(),
        ));
    }
    let (c, h, w) = (
        meta.config.in_channels as i64,
        meta.height as i64,
        meta.width as i64,
    );
    let params = [
        (META_KEY, meta.to_json()),
        (DENOISER_KEY, denoiser.to_string()),
        (DENOISER_MBS_KEY, denoiser_max_batch_size.to_string()),
        (LIBRARY_KEY, LIBRARY_FILE.to_string()),
    ];
    Ok(ModelConfig {
        name: pipeline_name(denoiser),
        backend: "python".into(),
        max_batch_size: 0,
        input: vec![
            input("class", DataType::TypeInt64, vec![1], false),
            input("seed", DataType::TypeUint64, vec![1], false),
            input("index", DataType::TypeUint64, vec![1], true),
            input("steps", DataType::TypeInt32, vec![1], true),
            input("cfg", DataType::TypeFp32, vec![1], true),
            input("sampler", DataType::TypeString, vec![1], true),
            input("interval", DataType::TypeFp32, vec![2], true),
            input("shift", DataType::TypeFp32, vec![1], true),
        ],
        output: vec![
            ModelOutput {
                name: "image".into(),
                data_type: DataType::TypeUint8 as i32,
                dims: vec![3, h, w],
                ..Default::default()
            },
            ModelOutput {
                name: "x".into(),
                data_type: DataType::TypeFp32 as i32,
                dims: vec![c, h, w],
                ..Default::default()
            },
        ],
        instance_group: vec![ModelInstanceGroup {
            count: instances as i32,
            kind: Kind::Cpu as i32,
            ..Default::default()
        }],
        parameters: params
            .into_iter()
            .map(|(k, v)| (k.to_string(), ModelParameter { string_value: v }))
            .collect(),
        ..Default::default()
    })
}

/// Copies `from` to `to` through a temporary file in the same directory (no partial file on failure).
fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).map_err(|e| TritonError::io(from, e))?;
    std::fs::rename(&tmp, to).map_err(|e| TritonError::io(to, e))
}

/// Writes `<repo>/<denoiser>_pipeline/` (config.pbtxt, README.txt, 1/model.py, 1/libpixeldit_triton_pipeline.so
/// copied from `library`) and validates it; returns the model directory.
pub fn write_pipeline(
    repo: &Path,
    meta: &ModelMetadata,
    denoiser: &str,
    denoiser_max_batch_size: usize,
    instances: usize,
    library: &Path,
) -> Result<PathBuf> {
    if !library.is_file() {
        return Err(TritonError::Options(format!(
            "the pipeline's sampler library {} does not exist: build it with `cargo build -p \
             pixeldit-triton-pipeline` (or set PIXELDIT_PIPELINE_LIB), or pass --no-triton-pipeline",
            library.display()
        )));
    }
    let cfg = pipeline_config(meta, denoiser, denoiser_max_batch_size, instances)?;
    let dir = repo.join(&cfg.name);
    let version = dir.join(VERSION.to_string());
    std::fs::create_dir_all(&version).map_err(|e| TritonError::io(&version, e))?;
    crate::repository::write_atomic(&version.join(MODEL_PY_FILE), MODEL_PY)?;
    copy_atomic(library, &version.join(LIBRARY_FILE))?;
    crate::repository::write_atomic(&dir.join(CONFIG_FILE), &config_text(&cfg))?;
    let readme = format!(
        "{name}: one request -> one image for {denoiser} (PixelDiT {preset} {h}x{w} {prec}).\n\
         Triton python backend: {VERSION}/{MODEL_PY_FILE} loads {VERSION}/{LIBRARY_FILE} (pixeldit's sampler, the\n\
         same code as pixeldit-run) and sends every network forward to {denoiser} as a BLS request.\n\
         Inputs: class INT64 [1], seed UINT64 [1]; optional index UINT64 [1], steps INT32 [1], cfg FP32 [1],\n\
         sampler BYTES [1], interval FP32 [2], shift FP32 [1]. Outputs: image UINT8 [3,H,W], x FP32 [C,H,W].\n\
         Example: curl -X POST localhost:8000/v2/models/{name}/infer -d \
         '{{\"inputs\":[{{\"name\":\"class\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[3]}},\
         {{\"name\":\"seed\",\"datatype\":\"UINT64\",\"shape\":[1],\"data\":[0]}}],\"outputs\":[{{\"name\":\"image\"}}]}}'\n",
        name = cfg.name,
        preset = meta.config.name,
        h = meta.height,
        w = meta.width,
        prec = meta.precision,
    );
    crate::repository::write_atomic(&dir.join(README_FILE), &readme)?;
    crate::repository::validate_model_dir(&dir, false)?;
    Ok(dir)
}
