//! The pipeline model written next to a denoiser (`NAME_pipeline`): Triton's python backend running
//! `model.py` (`crates/triton/python/model.py`) with the sampler library `libpixeldit_triton_pipeline.so` (the crate
//! `pixeldit-triton-pipeline`). One request (class, seed, optional sampler settings) gives one image; every network
//! forward is a BLS request to the denoiser model, whose dynamic batcher then batches the steps of concurrent
//! requests.
//!
//! Inputs (KServe v2): `class` INT64 [1] (class-conditional) or `prompt` BYTES [1] and optional `negative_prompt`
//! BYTES [1] (text-to-image), `seed` UINT64 [1]; optional `index` UINT64 [1] (position in the seed's noise stream),
//! `steps` INT32 [1], `cfg` FP32 [1], `sampler` BYTES [1] (class-conditional), `interval` FP32 [2], `shift` FP32 [1],
//! and the patch-level step cache (`pixeldit-run --patch-cache`): `patch_cache` INT32 [1] (N >= 1) or
//! `patch_cache_threshold` FP32 [1] (> 0), with `patch_cache_reuse` BYTES [1] (`extrapolate` or `hold`) and, with
//! `patch_cache`, `patch_cache_schedule` BYTES [1] (`front` or `uniform`). Outputs: `image` UINT8 [3, H, W], `x` FP32
//! [C, H, W].
//!
//! Cached requests run the denoiser (which then also outputs `patch_tokens`) on full forwards and the pixel-level
//! model `<denoiser>_pixel` ([`crate::config::pixel_model_name`]) in between; a repository exported with
//! `--no-patch-split` has no pixel model and refuses them.
//!
//! A text-to-image pipeline also needs the exported text encoder, served beside it as `<denoiser>_text_encoder`
//! (onnxruntime, inputs `input_ids`/`attention_mask` [-1, S], output `last_hidden_state` [-1, S, D]), and its
//! `tokenizer.json` in the pipeline's version folder; prompts are tokenized and encoded in the server.

use crate::config::{
    check_model_name, config_text, Platform, CONFIG_FILE, DENOISER_KEY, DENOISER_MBS_KEY, LIBRARY_FILE,
    LIBRARY_KEY, MODEL_PY_FILE, ONNX_FILE, PIXEL_MODEL_KEY, README_FILE, TEXT_ENCODER_KEY,
    TEXT_ENCODER_META_PARAM, TOKENIZER_FILE, TOKENIZER_KEY, VERSION,
};
use crate::error::{Result, TritonError};
use crate::pb::inference::model_instance_group::Kind;
use crate::pb::inference::{
    DataType, ModelConfig, ModelInput, ModelInstanceGroup, ModelOutput, ModelParameter,
};
use pixeldit_runtime::io::write_atomic;
use pixeldit_runtime::prompt::{PromptKind, PromptTokenizer, TEXT_TOKENS};
use pixeldit_runtime::text_encoder::read_metadata;
use pixeldit_spec::text_encoder::{
    TextEncoderMetadata, ATTENTION_MASK, INPUT_IDS, LAST_HIDDEN_STATE, TEXT_ENCODER_META_KEY,
};
use pixeldit_spec::{ModelKind, ModelMetadata, META_KEY};
use std::path::{Path, PathBuf};

/// `model.py`, the python-backend side of the pipeline (`crates/triton/python/model.py`), embedded.
pub const MODEL_PY: &str = include_str!("../python/model.py");

/// What [`write_pipeline`] writes beside a denoiser.
#[derive(Debug, Clone)]
pub struct PipelineOptions {
    /// The denoiser's Triton model name (the pipeline is `<denoiser>_pipeline`).
    pub denoiser: String,
    /// The denoiser's `max_batch_size`.
    pub denoiser_max_batch_size: usize,
    /// Python-backend instances of the pipeline (each serves one request at a time); at least 1.
    pub instances: usize,
    /// The sampler library to copy (`libpixeldit_triton_pipeline.so`, see [`find_library`]).
    pub library: PathBuf,
    /// Text-to-image models: the encoder and tokenizer served beside the pipeline.
    pub text: Option<TextPipeline>,
    /// The pixel-level model for the patch cache (`<denoiser>_pixel`), when the repository has one.
    pub pixel_model: Option<String>,
}

/// The text side of a text-to-image pipeline: the exported encoder (`pixeldit-export --text-encoder`) and its
/// tokenizer.
#[derive(Debug, Clone)]
pub struct TextPipeline {
    /// The encoder's ONNX file (its `.data` file beside it is copied too).
    pub encoder_onnx: PathBuf,
    /// Its `tokenizer.json`.
    pub tokenizer: PathBuf,
}

/// The encoder model's name for a denoiser: `<denoiser>_text_encoder`.
pub fn text_encoder_name(denoiser: &str) -> String {
    format!("{denoiser}_text_encoder")
}

/// The `ModelConfig` of the text encoder served beside a text-to-image pipeline (onnxruntime, no batching axis
/// declared implicitly: `[-1, S]` inputs).
pub fn text_encoder_config(name: &str, enc: &TextEncoderMetadata) -> Result<ModelConfig> {
    check_model_name(name)?;
    let s = enc.sequence_length as i64;
    let ids = |n: &str| ModelInput {
        name: n.into(),
        data_type: DataType::TypeInt64 as i32,
        dims: vec![-1, s],
        ..Default::default()
    };
    Ok(ModelConfig {
        name: name.to_string(),
        platform: Platform::OnnxRuntime.as_str().to_string(),
        max_batch_size: 0,
        default_model_filename: ONNX_FILE.to_string(),
        input: vec![ids(INPUT_IDS), ids(ATTENTION_MASK)],
        output: vec![ModelOutput {
            name: LAST_HIDDEN_STATE.into(),
            data_type: DataType::TypeFp32 as i32,
            dims: vec![-1, s, enc.hidden_size as i64],
            ..Default::default()
        }],
        instance_group: vec![ModelInstanceGroup {
            count: 1,
            kind: Kind::Auto as i32,
            ..Default::default()
        }],
        parameters: [(
            TEXT_ENCODER_META_KEY.to_string(),
            ModelParameter {
                string_value: enc.to_json(),
            },
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    })
}

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

/// The pipeline's `ModelConfig` for the denoiser of `opts` (its metadata `meta`), with `opts.instances`
/// python-backend instances; `text` is the encoder's metadata of a text-to-image pipeline.
pub fn pipeline_config(
    meta: &ModelMetadata,
    opts: &PipelineOptions,
    text: Option<&TextEncoderMetadata>,
) -> Result<ModelConfig> {
    let (denoiser, instances) = (opts.denoiser.as_str(), opts.instances);
    check_model_name(denoiser)?;
    if meta.config.kind == ModelKind::T2i && text.is_none() {
        return Err(TritonError::Options(format!(
            "{}: a text-to-image pipeline needs the exported text encoder (--pipeline-text-encoder)",
            meta.config.name
        )));
    }
    if instances == 0 {
        return Err(TritonError::Options(
            "pipeline instance count must be at least 1".into(),
        ));
    }
    // A dynamic-size model: the outputs have the request's size (`height`/`width` inputs).
    let (c, h, w) = match meta.dynamic {
        Some(_) => (meta.config.in_channels as i64, -1, -1),
        None => (
            meta.config.in_channels as i64,
            meta.height as i64,
            meta.width as i64,
        ),
    };
    let mut params = vec![
        (META_KEY, meta.to_json()),
        (DENOISER_KEY, denoiser.to_string()),
        (DENOISER_MBS_KEY, opts.denoiser_max_batch_size.to_string()),
        (LIBRARY_KEY, LIBRARY_FILE.to_string()),
    ];
    if let Some(pixel) = &opts.pixel_model {
        check_model_name(pixel)?;
        params.push((PIXEL_MODEL_KEY, pixel.clone()));
    }
    let mut inputs = match text {
        None => vec![input("class", DataType::TypeInt64, vec![1], false)],
        Some(enc) => {
            params.push((TEXT_ENCODER_KEY, text_encoder_name(denoiser)));
            params.push((TEXT_ENCODER_META_PARAM, enc.to_json()));
            params.push((TOKENIZER_KEY, TOKENIZER_FILE.to_string()));
            vec![
                input("prompt", DataType::TypeString, vec![1], false),
                input("negative_prompt", DataType::TypeString, vec![1], true),
            ]
        }
    };
    inputs.extend([
        input("seed", DataType::TypeUint64, vec![1], false),
        input("index", DataType::TypeUint64, vec![1], true),
        input("steps", DataType::TypeInt32, vec![1], true),
        input("cfg", DataType::TypeFp32, vec![1], true),
    ]);
    if text.is_none() {
        inputs.push(input("sampler", DataType::TypeString, vec![1], true));
    }
    inputs.extend([
        input("interval", DataType::TypeFp32, vec![2], true),
        input("shift", DataType::TypeFp32, vec![1], true),
        input("patch_cache", DataType::TypeInt32, vec![1], true),
        input("patch_cache_threshold", DataType::TypeFp32, vec![1], true),
        input("patch_cache_reuse", DataType::TypeString, vec![1], true),
        input("patch_cache_schedule", DataType::TypeString, vec![1], true),
    ]);
    if meta.dynamic.is_some() {
        inputs.extend([
            input("height", DataType::TypeInt32, vec![1], true),
            input("width", DataType::TypeInt32, vec![1], true),
        ]);
    }
    Ok(ModelConfig {
        name: pipeline_name(denoiser),
        backend: "python".into(),
        max_batch_size: 0,
        input: inputs,
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

/// Copies `from` to `to` through a temporary file in the same directory (no partial file on failure). Files are
/// copied, not read into memory: a text encoder's weights take gigabytes.
fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).map_err(|e| TritonError::io(from, e))?;
    std::fs::rename(&tmp, to).map_err(|e| TritonError::io(to, e))
}

/// Writes `<repo>/<denoiser>_pipeline/` (config.pbtxt, README.txt, 1/model.py, 1/libpixeldit_triton_pipeline.so
/// copied from `opts.library`; text-to-image: 1/tokenizer.json and the encoder model beside it) and validates it;
/// returns the model directory.
pub fn write_pipeline(repo: &Path, meta: &ModelMetadata, opts: &PipelineOptions) -> Result<PathBuf> {
    if !opts.library.is_file() {
        return Err(TritonError::Options(format!(
            "the pipeline's sampler library {} does not exist: build it with `cargo build -p \
             pixeldit-triton-pipeline` (or set PIXELDIT_PIPELINE_LIB), or pass --no-triton-pipeline",
            opts.library.display()
        )));
    }
    let enc_meta = match &opts.text {
        Some(t) => Some(check_text_pipeline(meta, t)?),
        None => None,
    };
    let cfg = pipeline_config(meta, opts, enc_meta.as_ref())?;
    if let (Some(t), Some(enc)) = (&opts.text, &enc_meta) {
        write_text_encoder(repo, &text_encoder_name(&opts.denoiser), enc, &t.encoder_onnx)?;
    }
    let dir = repo.join(&cfg.name);
    let version = dir.join(VERSION.to_string());
    std::fs::create_dir_all(&version).map_err(|e| TritonError::io(&version, e))?;
    write_atomic(&version.join(MODEL_PY_FILE), MODEL_PY.as_bytes())?;
    copy_atomic(&opts.library, &version.join(LIBRARY_FILE))?;
    if let Some(t) = &opts.text {
        copy_atomic(&t.tokenizer, &version.join(TOKENIZER_FILE))?;
    }
    write_atomic(&dir.join(CONFIG_FILE), config_text(&cfg).as_bytes())?;
    let readme = pipeline_readme(
        &cfg.name,
        meta,
        &opts.denoiser,
        enc_meta.is_some(),
        opts.pixel_model.as_deref(),
    );
    write_atomic(&dir.join(README_FILE), readme.as_bytes())?;
    crate::repository::validate_model_dir(&dir, false)?;
    Ok(dir)
}

/// The `README.txt` of pipeline model `name` for `denoiser`: what it runs, its inputs and outputs, a curl example.
fn pipeline_readme(
    name: &str,
    meta: &ModelMetadata,
    denoiser: &str,
    text: bool,
    pixel: Option<&str>,
) -> String {
    let conditions = if text {
        format!(
            "prompt BYTES [1] (optional negative_prompt BYTES [1]; tokenized with {VERSION}/{TOKENIZER_FILE} and \
             encoded by {})",
            text_encoder_name(denoiser)
        )
    } else {
        "class INT64 [1]".to_string()
    };
    format!(
        "{name}: one request -> one image for {denoiser} (PixelDiT {preset} {h}x{w} {prec}).\n\
         Triton python backend: {VERSION}/{MODEL_PY_FILE} loads {VERSION}/{LIBRARY_FILE} (pixeldit's sampler, the\n\
         same code as pixeldit-run) and sends every network forward to {denoiser} as a BLS request.\n\
         Inputs: {conditions}, seed UINT64 [1]; optional index UINT64 [1], steps INT32 [1], cfg FP32 [1],\n\
         sampler BYTES [1] (class-conditional), interval FP32 [2], shift FP32 [1], patch_cache INT32 [1] or\n\
         patch_cache_threshold FP32 [1] with patch_cache_reuse BYTES [1] and patch_cache_schedule BYTES [1]\n\
         (patch-level step cache{cache}).\n\
         Outputs: image UINT8 [3,H,W], x FP32 [C,H,W].\n\
         Example: curl -X POST localhost:8000/v2/models/{name}/infer -d \
         '{{\"inputs\":[{{\"name\":\"class\",\"datatype\":\"INT64\",\"shape\":[1],\"data\":[3]}},\
         {{\"name\":\"seed\",\"datatype\":\"UINT64\",\"shape\":[1],\"data\":[0]}}],\"outputs\":[{{\"name\":\"image\"}}]}}'\n",
        preset = meta.config.name,
        h = meta.height,
        w = meta.width,
        prec = meta.precision,
        cache = match pixel {
            Some(p) => format!(": pixel level {p}"),
            None => ": not in this repository, exported without the patch-level split".into(),
        },
    )
}

/// Checks the text side of a text-to-image pipeline against the model (text width, 300 tokens) and the tokenizer
/// (vocabulary, the recipe's sequence length) before anything is written; returns the encoder's metadata.
fn check_text_pipeline(meta: &ModelMetadata, t: &TextPipeline) -> Result<TextEncoderMetadata> {
    let bad = |m: String| TritonError::Options(m);
    let enc = read_metadata(&t.encoder_onnx)?;
    let tok = PromptTokenizer::from_file(&t.tokenizer)?;
    let text = meta
        .config
        .text
        .as_ref()
        .ok_or_else(|| bad(format!("{}: the model has no text input", meta.config.name)))?;
    let file = t.encoder_onnx.display();
    if enc.hidden_size != text.embed_dim {
        return Err(bad(format!(
            "text encoder {file}: hidden size {} does not match the text width {} of {}",
            enc.hidden_size, text.embed_dim, meta.config.name
        )));
    }
    if text.max_length != TEXT_TOKENS {
        return Err(bad(format!(
            "{} takes {} text tokens; the prompt recipe gives {TEXT_TOKENS}",
            meta.config.name, text.max_length
        )));
    }
    if tok.vocab_size() != enc.vocab_size {
        return Err(bad(format!(
            "text encoder {file}: its embedding table has {} rows but the tokenizer {} has {} tokens",
            enc.vocab_size,
            t.tokenizer.display(),
            tok.vocab_size()
        )));
    }
    let needed = tok.sequence_len(PromptKind::Prompt);
    if enc.sequence_length != needed {
        return Err(bad(format!(
            "text encoder {file}: exported for {} tokens, the prompt recipe with {} needs {needed}",
            enc.sequence_length,
            t.tokenizer.display()
        )));
    }
    Ok(enc)
}

/// Writes `<repo>/<name>/` for the text encoder: config.pbtxt and `1/model.onnx` (+ its external data file, under
/// the name the ONNX refers to).
fn write_text_encoder(repo: &Path, name: &str, enc: &TextEncoderMetadata, onnx: &Path) -> Result<()> {
    let cfg = text_encoder_config(name, enc)?;
    let dir = repo.join(name);
    let version = dir.join(VERSION.to_string());
    std::fs::create_dir_all(&version).map_err(|e| TritonError::io(&version, e))?;
    copy_atomic(onnx, &version.join(ONNX_FILE))?;
    let data_name = format!(
        "{}.data",
        onnx.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    let data = onnx.with_file_name(&data_name);
    if data.is_file() {
        copy_atomic(&data, &version.join(&data_name))?;
    }
    write_atomic(&dir.join(CONFIG_FILE), config_text(&cfg).as_bytes())?;
    crate::repository::validate_model_dir(&dir, false)?;
    Ok(())
}
