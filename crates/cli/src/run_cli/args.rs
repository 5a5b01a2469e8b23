//! The flags of `pixeldit-run` sampling: backend selection (shared with `bench`) and the sampling flags.

use clap::Args;
use pixeldit_runtime::backend::{BackendKind, Device, LoadOptions};
use pixeldit_runtime::patch_cache::{CachePolicy, Reuse, Schedule};
use pixeldit_runtime::{SamplerKind, SamplerOverrides};
use pixeldit_spec::Precision;
use std::path::PathBuf;

/// Backend selection flags (shared by sampling and `bench`).
#[derive(Args, Clone)]
pub(crate) struct BackendArgs {
    /// Backend: auto (TensorRT, CUDA, ORT CPU, tract: first that loads), ort, tract, or openvino (OpenVINO's CPU
    /// plugin, library from scripts/setup.sh; runs exports made with --attention decomposed or onnx23).
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    pub(crate) backend: BackendKind,
    /// Device: auto, tensorrt, cuda or cpu. An explicit GPU device that fails is an error, never a fallback.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    pub(crate) device: Device,
    /// Path of libonnxruntime.so.1.31.1 (overrides ORT_DYLIB_PATH).
    #[arg(long, value_name = "FILE")]
    pub(crate) ort_lib: Option<PathBuf>,
    /// Path of OpenVINO's libopenvino_c.so* (overrides PIXELDIT_OPENVINO_LIB; default .cache/openvino/).
    #[arg(long, value_name = "FILE")]
    pub(crate) openvino_lib: Option<PathBuf>,
    /// TensorRT engine cache directory (default: .trt-cache next to the model).
    #[arg(long, value_name = "DIR")]
    pub(crate) trt_cache: Option<PathBuf>,
    /// Threads for ONNX Runtime's intra-op pool and tract's matrix products (default: one per core).
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// ONNX Runtime graph optimization level: 0 off, 1 basic, 2 extended, 3 all. Level 2+ fuses INT8 Q/DQ MatMuls
    /// into a u8s8 kernel that can saturate on CPUs without AVX-VNNI; use 1 to compare int8 variants.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=3))]
    pub(crate) ort_opt_level: u8,
    /// Let idle ONNX Runtime worker threads spin. Faster on an idle machine (B-256 batch 2: ~4%), slower when other
    /// work shares the cores (up to ~30%), hence off by default.
    #[arg(long)]
    pub(crate) ort_spin: bool,
}

impl BackendArgs {
    pub(crate) fn options(&self, precision: Precision) -> LoadOptions {
        let mut o = crate::load_options()
            .with_backend(self.backend)
            .with_device(self.device)
            .with_ort_lib(self.ort_lib.clone())
            .with_openvino_lib(self.openvino_lib.clone())
            .with_trt_cache_dir(self.trt_cache.clone())
            .with_precision(Some(precision));
        o.threads = self.threads;
        o.ort_opt_level = Some(self.ort_opt_level);
        o.ort_spinning = self.ort_spin;
        o
    }
}

#[derive(Args)]
pub(crate) struct SampleArgs {
    /// Exported model (.onnx with pixeldit.metadata). With --triton it is optional and only supplies the
    /// metadata (default: the server's model configuration).
    #[arg(required_unless_present = "triton")]
    pub(crate) model: Option<PathBuf>,
    /// Class label of every image.
    #[arg(long, conflicts_with = "classes")]
    pub(crate) class: Option<i64>,
    /// Comma-separated class labels, one image each.
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub(crate) classes: Option<Vec<i64>>,
    /// Images per run (with --class, or repeating one prompt's embeddings).
    #[arg(long)]
    pub(crate) batch: Option<usize>,
    /// Noise seed.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Steps, at most 1000 (default from metadata).
    #[arg(long)]
    pub(crate) steps: Option<usize>,
    /// CFG weight, 0..=100 (default from metadata; 1 disables guidance and the uncond half of the batch).
    #[arg(long)]
    pub(crate) cfg: Option<f32>,
    /// Sampler (default from metadata: flow_dpm for class-conditional models, dpmpp_2m for text-to-image models);
    /// every sampler works with every model kind.
    #[arg(long, value_enum)]
    pub(crate) sampler: Option<SamplerKind>,
    /// Time shift, > 0 and <= 100 (default from metadata).
    #[arg(long)]
    pub(crate) shift: Option<f64>,
    /// Guidance interval lo,hi: CFG applies for lo < tau < hi (strict), tau the sampler's time variable (flow time t,
    /// 0 = noise, for flow_dpm/euler/heun; noise level sigma for dpmpp_2m). Clamped to [0, 1] as the official
    /// samplers do (default from metadata).
    #[arg(long, value_name = "LO,HI", value_parser = parse_interval)]
    pub(crate) interval: Option<(f64, f64)>,
    /// Patch-level step cache: run the whole model at one forward in N (placed by --patch-cache-schedule) and only
    /// the pixel level in between, on the patch tokens of the last whole forwards (per set of condition rows; 1 =
    /// every forward, the uncached result). Needs the pixel-level graph `<model>.pixel.onnx` that pixeldit-export
    /// writes by default; with --triton, the server's pipeline model runs it (calling NAME_pixel). See README
    /// "Patch-level step cache" for speed and quality per setting. [default: off]
    #[arg(long, value_name = "N", conflicts_with = "patch_cache_threshold")]
    pub(crate) patch_cache: Option<usize>,
    /// Adaptive patch-level cache: run the whole model when the relative L1 change of the model input x,
    /// accumulated over the forwards since the last whole forward, reaches X (> 0; larger reuses more).
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    pub(crate) patch_cache_threshold: Option<f64>,
    /// With a patch cache: what the pixel-level-only forwards use, the last whole forward's patch tokens (hold) or
    /// their linear extrapolation in time from the last two whole forwards (extrapolate).
    #[arg(long, value_enum, default_value_t = Reuse::Extrapolate, value_name = "HOW")]
    pub(crate) patch_cache_reuse: Reuse,
    /// With --patch-cache N: where its ceil(F/N) whole forwards (of F) go: front (dense in the first,
    /// noise-dominated steps where the patch tokens change fastest, sparse at the end; digits N = 2: 42-43 dB from
    /// the uncached images instead of 23-38 dB) or uniform (every N-th forward).
    #[arg(long, value_enum, default_value_t = Schedule::Front, value_name = "HOW")]
    pub(crate) patch_cache_schedule: Schedule,
    /// Output PNG (see --grid for several images).
    #[arg(short, long, default_value = "out.png")]
    pub(crate) output: PathBuf,
    /// With several images, write one grid PNG at -o instead of numbered files.
    #[arg(long)]
    pub(crate) grid: bool,
    /// Image height in pixels [default: the model's]. A dynamic-size model (pixeldit-export --dynamic-size) takes
    /// multiples of 16 in its exported range; a static model only its own size.
    #[arg(long, value_name = "PX", conflicts_with = "aspect_ratio")]
    pub(crate) height: Option<usize>,
    /// Image width in pixels [default: the model's]; see --height.
    #[arg(long, value_name = "PX", conflicts_with = "aspect_ratio")]
    pub(crate) width: Option<usize>,
    /// Dynamic-size models: the size of the model's bucket table whose H/W is nearest to this aspect ratio H:W
    /// (text-to-image models: the official 33 test buckets), printed on stderr.
    #[arg(long, value_name = "H:W")]
    pub(crate) aspect_ratio: Option<String>,
    /// Initial noise, .npy f32 [K,3,H,W] (replaces --seed).
    #[arg(long, value_name = "FILE.npy")]
    pub(crate) noise: Option<PathBuf>,
    /// Text-to-image models: the prompt. It is tokenized with --tokenizer and encoded with --text-encoder by the
    /// official recipe (CHI system prompt, len(tokenize(CHI)) + 298 tokens, BOS and the last 299 positions kept);
    /// a longer prompt is truncated as the recipe does, with a note on stderr. `--batch K` repeats it.
    #[arg(long, conflicts_with_all = ["text_embeddings", "prompts_file"])]
    pub(crate) prompt: Option<String>,
    /// Text-to-image models: a file with one prompt per line (blank lines skipped), one image each.
    #[arg(long, value_name = "FILE", conflicts_with = "text_embeddings")]
    pub(crate) prompts_file: Option<PathBuf>,
    /// Text-to-image models: the negative prompt for CFG with --prompt/--prompts-file (no CHI prefix, 300 tokens)
    /// [default: "", the empty prompt].
    #[arg(long, conflicts_with = "negative_embeddings")]
    pub(crate) negative_prompt: Option<String>,
    /// The Gemma-2 text encoder exported by `pixeldit-export --text-encoder` (with --prompt/--prompts-file). It
    /// runs on the same backend selection as the model (--backend, --device), locally also with --triton.
    #[arg(long, value_name = "FILE.onnx")]
    pub(crate) text_encoder: Option<PathBuf>,
    /// The encoder's tokenizer.json [default: tokenizer.json next to --text-encoder].
    #[arg(long, value_name = "FILE")]
    pub(crate) tokenizer: Option<PathBuf>,
    /// Text-to-image models: hidden states of the prompt, `[300, 2304]` or `[K, 300, 2304]` (.npy f32, or
    /// safetensors F32/F16/BF16).
    ///
    /// These are the last hidden state of Gemma-2-2B-IT (`AutoModelForCausalLM.get_decoder()`, after its final
    /// norm) for the prompt prefixed with the model's "CHI" system prompt, tokenized with right padding to
    /// len(tokenize(chi)) + 300 - 2 tokens, of which token 0 (BOS) and the last 299 positions are kept: 300 rows of
    /// 2304, padding positions included. `--batch K` repeats one prompt K times. See README "Text-to-image".
    #[arg(long, value_name = "FILE")]
    pub(crate) text_embeddings: Option<PathBuf>,
    /// Text-to-image models: hidden states of the negative prompt for CFG (the empty prompt "" for plain guidance):
    /// encoded without the CHI prefix, padded to 300 tokens, the first 300 rows; same formats as --text-embeddings.
    #[arg(long, value_name = "FILE")]
    pub(crate) negative_embeddings: Option<PathBuf>,
    /// Also save the final float x (before quantization to u8) as .npy f32 [K,3,H,W].
    #[arg(long, value_name = "FILE.npy")]
    pub(crate) save_raw: Option<PathBuf>,
    /// Also write what ran as JSON: model, backend, provider, precision, sampler settings, conditions, noise
    /// source, ms per step and total seconds (for scripts; the same as the summary line on stdout).
    #[arg(long, value_name = "FILE.json")]
    pub(crate) report_json: Option<PathBuf>,
    /// Quiet: print nothing but errors (no progress bar, no notes, no summary line).
    #[arg(long, short)]
    pub(crate) quiet: bool,
    /// Run the forward passes on a Triton Inference Server, e.g. http://127.0.0.1:8000 (KServe v2 HTTP with
    /// binary tensors), with the same samplers; a model written by `pixeldit-export --triton-repo` carries its
    /// metadata in the server's model configuration. --backend/--device do not apply.
    #[arg(long, value_name = "URL", requires = "triton_model")]
    pub(crate) triton: Option<String>,
    /// Model name on the Triton server (with --triton).
    #[arg(long = "model", id = "triton_model", value_name = "NAME", requires = "triton")]
    pub(crate) triton_model: Option<String>,
    /// Model version on the Triton server (default: the server's version policy).
    #[arg(long, value_name = "V", requires = "triton")]
    pub(crate) triton_version: Option<String>,
    /// With --triton: drive every step from this client even when the server has the pipeline model NAME_pipeline
    /// (which otherwise samples each image inside the server, one request per image).
    #[arg(long, requires = "triton")]
    pub(crate) triton_step_wise: bool,
    #[command(flatten)]
    pub(crate) backend: BackendArgs,
}

impl SampleArgs {
    /// The backend options of a sampling run: with the patch-level step cache, the whole model's and the pixel
    /// level's ONNX Runtime sessions share one CPU arena (the pixel level's first forward then reuses memory the
    /// whole model's forwards already touched).
    pub(crate) fn load_options(&self, precision: Precision) -> LoadOptions {
        let mut opts = self.backend.options(precision);
        opts.ort_shared_arena = self.patch_cache.is_some() || self.patch_cache_threshold.is_some();
        opts
    }

    /// The patch-cache policy of the flags, checked (`None`: no cache).
    pub(crate) fn patch_cache(&self) -> pixeldit_runtime::Result<Option<CachePolicy>> {
        let policy = match (self.patch_cache, self.patch_cache_threshold) {
            (Some(n), _) => Some(self.patch_cache_schedule.policy(n)),
            (None, Some(x)) => Some(CachePolicy::Threshold(x)),
            (None, None) => None,
        };
        policy.as_ref().map(CachePolicy::validate).transpose()?;
        Ok(policy)
    }

    /// The sampler flags as overrides of the model's defaults.
    pub(crate) fn sampler_overrides(&self) -> SamplerOverrides {
        SamplerOverrides {
            kind: self.sampler,
            steps: self.steps,
            cfg_scale: self.cfg,
            interval: self.interval,
            shift: self.shift,
        }
    }
}

fn parse_interval(s: &str) -> std::result::Result<(f64, f64), String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [lo, hi] = parts.as_slice() else {
        return Err(format!("expected LO,HI, got '{s}'"));
    };
    let p = |v: &str| v.parse::<f64>().map_err(|_| format!("'{v}' is not a number"));
    Ok((p(lo)?, p(hi)?))
}
