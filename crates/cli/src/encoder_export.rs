//! `pixeldit-export --text-encoder`: the Gemma-2 text encoder of a text-to-image model as ONNX.

use crate::progress;
use anyhow::{bail, Context, Result};
use pixeldit_exporter::model::gemma::{self, EncoderExport, GemmaConfig, GemmaWeights};
use pixeldit_graph::WriteProgress;
use pixeldit_runtime::prompt::{PromptKind, PromptTokenizer};
use pixeldit_spec::Precision;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `--text-encoder` and its companion flags ask for.
#[derive(Debug, Clone)]
pub struct EncoderRequest {
    /// `--text-encoder`: a preset name, a Hugging Face `config.json`, or a checkpoint directory holding one.
    pub encoder: String,
    /// `--checkpoint`.
    pub checkpoint: Option<PathBuf>,
    /// `--random-init` with `--seed`.
    pub random_seed: Option<u64>,
    /// `--tokenizer`.
    pub tokenizer: Option<PathBuf>,
    /// `--seq-len`.
    pub seq_len: Option<usize>,
    /// `--precision`.
    pub precision: Precision,
    /// `-o`.
    pub output: PathBuf,
    /// `-q`.
    pub quiet: bool,
}

/// The config, the checkpoint directory it came with (if any), from `--text-encoder`.
fn resolve_config(spec: &str) -> Result<(GemmaConfig, Option<PathBuf>)> {
    let path = Path::new(spec);
    if path.is_dir() {
        let cfg_path = path.join("config.json");
        if !cfg_path.is_file() {
            bail!(
                "--text-encoder {spec}: the directory has no config.json (a Hugging Face checkpoint directory, \
                 e.g. a download of Efficient-Large-Model/gemma-2-2b-it, is expected)"
            );
        }
        let mut cfg = GemmaConfig::from_hf_config(&cfg_path)?;
        // Name the export after the checkpoint directory (e.g. gemma-2-2b-it) rather than its config path.
        if let Some(name) = path
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        {
            cfg.name = name;
        }
        return Ok((cfg, Some(path.to_path_buf())));
    }
    if path.is_file() && spec.ends_with(".safetensors") {
        return Ok((single_file_config(path)?, None));
    }
    if path.is_file() || spec.ends_with(".json") {
        return Ok((GemmaConfig::from_hf_config(path)?, None));
    }
    Ok((GemmaConfig::preset(spec)?, None))
}

/// The configuration of a single-file text encoder (ComfyUI's `gemma_2_2b_it_elm_*.safetensors`, which carry no
/// config.json): the text-encoder preset whose every tensor shape the file has.
fn single_file_config(path: &Path) -> Result<GemmaConfig> {
    let weights = GemmaWeights::open(path)?;
    let mut tried = Vec::new();
    for p in pixeldit_spec::TEXT_ENCODER_PRESETS {
        let cfg = GemmaConfig::preset(p.name)?;
        match weights.check(&cfg.parameter_shapes()) {
            Ok(_) => return Ok(cfg),
            Err(e) => tried.push(format!("{}: {e}", p.name)),
        }
    }
    bail!(
        "--text-encoder {}: a single-file Gemma-2 checkpoint must match a text-encoder preset, and it matches none \
         ({}); pass --text-encoder CONFIG.json --checkpoint FILE instead",
        path.display(),
        tried.join("; ")
    )
}

/// The sequence length of the export: `--seq-len`, else the prompt recipe's length for the tokenizer.
fn sequence_length(req: &EncoderRequest, tokenizer: Option<&PromptTokenizer>) -> Result<usize> {
    if let Some(n) = req.seq_len {
        return Ok(n);
    }
    let Some(t) = tokenizer else {
        bail!(
            "the text encoder is exported for a fixed sequence length: pass --tokenizer tokenizer.json (the prompt \
             recipe then needs len(tokenize(CHI)) + 298 tokens) or --seq-len N"
        );
    };
    Ok(t.sequence_len(PromptKind::Prompt))
}

/// Exports the encoder and prints the summary line.
pub fn run(req: &EncoderRequest) -> Result<()> {
    let (cfg, dir) = resolve_config(&req.encoder)?;
    // `--text-encoder FILE.safetensors` is also the checkpoint.
    let file =
        Some(PathBuf::from(&req.encoder)).filter(|p| p.is_file() && req.encoder.ends_with(".safetensors"));
    let weights = match (req.random_seed, req.checkpoint.as_ref().or(file.as_ref()), &dir) {
        (Some(seed), _, _) => GemmaWeights::random(&cfg.parameter_shapes(), seed),
        (None, Some(p), _) => GemmaWeights::open(p)?,
        (None, None, Some(d)) => GemmaWeights::open(d)?,
        (None, None, None) => bail!(
            "no text encoder weights: pass --checkpoint DIR (Hugging Face layout: model.safetensors or \
             model.safetensors.index.json with its shards) or --random-init"
        ),
    };
    let tokenizer_path = req.tokenizer.clone().or_else(|| {
        let d = req.checkpoint.as_ref().filter(|p| p.is_dir()).or(dir.as_ref())?;
        Some(d.join("tokenizer.json")).filter(|p| p.is_file())
    });
    // Read once: it sets the sequence length and must match the embedding table.
    let tokenizer = tokenizer_path
        .as_deref()
        .map(PromptTokenizer::from_file)
        .transpose()?;
    let export = EncoderExport {
        sequence_length: sequence_length(req, tokenizer.as_ref())?,
        precision: req.precision,
    };
    export.matrix_dtype()?;
    if let (Some(t), Some(path)) = (&tokenizer, &tokenizer_path) {
        if t.vocab_size() != cfg.vocab_size {
            bail!(
                "tokenizer {} has {} tokens but the encoder's embedding table has {} rows: not the same model",
                path.display(),
                t.vocab_size(),
                cfg.vocab_size
            );
        }
    }
    let unused = weights.check(&cfg.parameter_shapes())?;
    if !req.quiet {
        for k in &unused {
            crate::note!("warning: unused checkpoint key '{k}'");
        }
        crate::note!(
            "pixeldit-export: Gemma-2 {} ({} layers, width {}), {} tokens, {}, weights {}",
            cfg.name,
            cfg.num_hidden_layers,
            cfg.hidden_size,
            export.sequence_length,
            export.precision,
            weights.origin()
        );
    }
    let bar = progress::bytes(0, req.quiet);
    let on_tensor = |p: WriteProgress<'_>| {
        bar.set_length(p.bytes_total);
        bar.set_position(p.bytes_done);
        bar.set_message(p.name.to_string());
    };
    let start = Instant::now();
    let report = gemma::export_to_file(&cfg, &weights, &export, &req.output, Some(&on_tensor))
        .with_context(|| format!("exporting the text encoder to {}", req.output.display()))?;
    bar.finish_and_clear();
    crate::say!(
        "wrote {} (Gemma-2 {}, {:.2}M parameters, {} tokens, {}, {:.1} MB{}) in {:.1} s",
        req.output.display(),
        cfg.name,
        report.weight_params as f64 / 1e6,
        export.sequence_length,
        export.precision,
        report.model_bytes as f64 / 1e6,
        report
            .external_path
            .as_ref()
            .map(|p| format!(" + {} {:.1} MB", p.display(), report.external_bytes as f64 / 1e6))
            .unwrap_or_default(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
