//! The `--triton-repo` options of `pixeldit-export` (the writer is `pixeldit-triton`).

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use pixeldit_exporter::ExportOptions;
use pixeldit_spec::{AttentionMode, ModelMetadata, PatchCut};
use pixeldit_triton::config::{self as triton, README_FILE};
use pixeldit_triton::pipeline::{find_library, PipelineOptions, TextPipeline};
use pixeldit_triton::repository::onnx_path;
use pixeldit_triton::{InstanceKind, Platform, RepositoryReport, TritonOptions};
use std::path::{Path, PathBuf};

/// Triton Inference Server model repository.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Triton model repository")]
pub struct TritonArgs {
    /// Write a Triton model repository at DIR instead of -o: NAME/config.pbtxt (generated from the I/O contract,
    /// with the model metadata under parameters "pixeldit.metadata") and NAME/1/model.onnx (+ .data); with the
    /// patch-level split (onnxruntime_onnx, unless --no-patch-split) also NAME_pixel, the pixel level that the
    /// pipeline's patch cache calls. The attention then defaults to `decomposed`: a stock Triton backend cannot run
    /// the custom op.
    #[arg(long, value_name = "DIR", conflicts_with = "output")]
    pub triton_repo: Option<PathBuf>,
    /// Model name (= directory name) in the repository [default: pixeldit_<preset>, e.g. pixeldit_xl_256].
    #[arg(long, value_name = "NAME", requires = "triton_repo")]
    pub model_name: Option<String>,
    /// Triton platform: onnxruntime_onnx (serves 1/model.onnx; TensorRT accelerator block unless
    /// --no-tensorrt-accelerator) or tensorrt_plan (writes NAME/model.onnx and README.txt with the trtexec command
    /// that builds 1/model.plan on the target GPU).
    #[arg(long, value_enum, default_value_t = PlatformArg::OnnxruntimeOnnx)]
    pub triton_platform: PlatformArg,
    /// max_batch_size (> 0: batch axis implicit in dims, dynamic batching possible; 0: no batching).
    #[arg(long, default_value_t = 16)]
    pub max_batch_size: usize,
    /// dynamic_batching preferred_batch_size, comma-separated [default: max/2,max].
    #[arg(long, value_delimiter = ',', value_name = "N,..")]
    pub preferred_batch_size: Option<Vec<usize>>,
    /// dynamic_batching max_queue_delay_microseconds.
    #[arg(long, default_value_t = 1000, value_name = "US")]
    pub max_queue_delay_us: u64,
    /// No dynamic_batching block.
    #[arg(long, conflicts_with = "preferred_batch_size")]
    pub no_dynamic_batching: bool,
    /// instance_group count.
    #[arg(long, default_value_t = 1)]
    pub instance_count: usize,
    /// instance_group kind: auto, gpu or cpu [default: auto for onnxruntime_onnx, gpu for tensorrt_plan].
    #[arg(long, value_enum, value_name = "KIND")]
    pub instance_kind: Option<InstanceKindArg>,
    /// onnxruntime_onnx: no TensorRT execution accelerator block (plain CUDA / CPU execution).
    #[arg(long)]
    pub no_tensorrt_accelerator: bool,
    /// TensorRT workspace in MiB (accelerator max_workspace_size_bytes, trtexec --memPoolSize).
    #[arg(long, default_value_t = 4096, value_name = "MIB")]
    pub trt_workspace_mib: u64,
    /// Accept --attention custom for Triton (only for servers that load a pixeldit.RotaryAttention kernel).
    #[arg(long)]
    pub triton_allow_custom_op: bool,
    /// Do not write the pipeline model NAME_pipeline (class-conditional models get it by default: one request ->
    /// one image, the sampler running inside the server; see README "Deploying with Triton").
    #[arg(long)]
    pub no_triton_pipeline: bool,
    /// Python-backend instances of the pipeline model (each serves one request at a time; their forwards meet in
    /// the denoiser's dynamic batcher).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub pipeline_instances: usize,
    /// The pipeline's sampler library [default: libpixeldit_triton_pipeline.so next to pixeldit-export, or
    /// PIXELDIT_PIPELINE_LIB].
    #[arg(long, value_name = "FILE")]
    pub pipeline_lib: Option<PathBuf>,
    /// Text-to-image models: the exported text encoder (`pixeldit-export --text-encoder`), served beside the model
    /// as NAME_text_encoder so that the pipeline takes prompts. Without it a text-to-image repository has no
    /// pipeline.
    #[arg(long, value_name = "FILE.onnx", requires = "triton_repo")]
    pub pipeline_text_encoder: Option<PathBuf>,
    /// The encoder's tokenizer.json [default: tokenizer.json next to --pipeline-text-encoder].
    #[arg(long, value_name = "FILE", requires = "pipeline_text_encoder")]
    pub pipeline_tokenizer: Option<PathBuf>,
}

/// `--triton-platform`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlatformArg {
    /// Triton's onnxruntime backend.
    #[value(name = "onnxruntime_onnx")]
    OnnxruntimeOnnx,
    /// Triton's TensorRT backend (engine built on the target GPU).
    #[value(name = "tensorrt_plan")]
    TensorrtPlan,
}

/// `--instance-kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InstanceKindArg {
    /// KIND_AUTO.
    Auto,
    /// KIND_GPU.
    Gpu,
    /// KIND_CPU.
    Cpu,
}

/// A planned repository export.
pub struct TritonPlan {
    repo: PathBuf,
    opts: TritonOptions,
    /// The pipeline model, when one is written.
    pipeline: Option<PipelineOptions>,
    /// The pixel-level model (`NAME_pixel`), when the export has the patch-level split.
    pixel_model: Option<String>,
    /// Why no pipeline is written, when that is worth saying.
    note: Option<String>,
}

impl TritonArgs {
    /// The attention lowering when `--attention` is not given.
    pub fn default_attention(&self) -> AttentionMode {
        if self.triton_repo.is_some() {
            AttentionMode::Decomposed
        } else {
            AttentionMode::Custom
        }
    }

    /// Whether the export gets its patch-level split: always without `--triton-repo`; in a repository on the
    /// onnxruntime platform (the pixel level is served as `NAME_pixel`), not for TensorRT plans.
    pub fn serves_patch_split(&self) -> bool {
        self.triton_repo.is_none() || self.triton_platform == PlatformArg::OnnxruntimeOnnx
    }

    /// `None` without `--triton-repo`; otherwise checks the options against the export.
    pub fn plan(&self, export: &ExportOptions) -> Result<Option<TritonPlan>> {
        let Some(repo) = &self.triton_repo else {
            return Ok(None);
        };
        let platform = match self.triton_platform {
            PlatformArg::OnnxruntimeOnnx => Platform::OnnxRuntime,
            PlatformArg::TensorrtPlan => Platform::TensorRtPlan,
        };
        triton::check_attention(export.attention, platform, self.triton_allow_custom_op)?;
        if export.pixel_ops == pixeldit_spec::PixelOps::Fused && !self.triton_allow_custom_op {
            anyhow::bail!(
                "--pixel-ops fused writes the pixeldit.PixelModulate and pixeldit.PixelGatedMlp custom ops, which \
                 Triton's backends cannot run; use --pixel-ops standard (the default), or pass \
                 --triton-allow-custom-op if your server loads kernels for them"
            );
        }
        let mbs = self.max_batch_size;
        let preferred = if self.no_dynamic_batching || mbs == 0 {
            None
        } else {
            Some(self.preferred_batch_size.clone().unwrap_or_else(|| {
                let mut v = vec![(mbs / 2).max(1), mbs];
                v.dedup();
                v
            }))
        };
        let opts = TritonOptions {
            model_name: self.model_name.clone(),
            platform,
            max_batch_size: mbs,
            preferred_batch_sizes: preferred,
            max_queue_delay_us: self.max_queue_delay_us,
            instance_count: self.instance_count,
            instance_kind: self.instance_kind.map(|k| match k {
                InstanceKindArg::Auto => InstanceKind::Auto,
                InstanceKindArg::Gpu => InstanceKind::Gpu,
                InstanceKindArg::Cpu => InstanceKind::Cpu,
            }),
            tensorrt_accelerator: !self.no_tensorrt_accelerator,
            trt_workspace_bytes: self.trt_workspace_mib << 20,
        };
        let name = opts
            .model_name
            .clone()
            .unwrap_or_else(|| triton::default_model_name(&export.config.name));
        let opts = TritonOptions {
            model_name: Some(name),
            ..opts
        };
        opts.check()?;
        if export.patch_cut == Some(PatchCut::Cond) {
            anyhow::bail!(
                "--patch-split cond is not served by Triton (its tensor [B*L, D] has no batch axis): use --patch-split \
                 tokens (the default) or --no-patch-split"
            );
        }
        let pixel_model = export
            .patch_cut
            .is_some()
            .then(|| triton::pixel_model_name(opts.model_name.as_deref().expect("set above")));
        // The pipeline is checked before the (long) export: class-conditional models only, library present.
        let t2i = export.config.kind == pixeldit_spec::ModelKind::T2i;
        if !t2i && self.pipeline_text_encoder.is_some() {
            anyhow::bail!(
                "--pipeline-text-encoder is for text-to-image models; {} is class-conditional",
                export.config.name
            );
        }
        let text = self.pipeline_text_encoder.as_ref().map(|enc| TextPipeline {
            encoder_onnx: enc.clone(),
            tokenizer: self
                .pipeline_tokenizer
                .clone()
                .unwrap_or_else(|| enc.with_file_name(triton::TOKENIZER_FILE)),
        });
        if let Some(t) = &text {
            for (what, p) in [
                ("--pipeline-text-encoder", &t.encoder_onnx),
                ("the tokenizer", &t.tokenizer),
            ] {
                if !p.is_file() {
                    anyhow::bail!("{what} {}: no such file", p.display());
                }
            }
        }
        let note = (t2i && text.is_none() && !self.no_triton_pipeline).then(|| {
            "no pipeline model: pass --pipeline-text-encoder gemma.onnx (pixeldit-export --text-encoder) to serve \
             prompts in the server; the denoiser is served step-wise"
                .to_string()
        });
        let pipeline = if self.no_triton_pipeline || (t2i && text.is_none()) {
            None
        } else {
            if self.pipeline_instances == 0 {
                anyhow::bail!("--pipeline-instances must be at least 1");
            }
            let lib = self
                .pipeline_lib
                .clone()
                .or_else(find_library)
                .with_context(|| {
                    format!(
                        "the Triton pipeline model needs {}: build it with `cargo build -p pixeldit-triton-pipeline` \
                         (it lands next to pixeldit-export), pass --pipeline-lib FILE, or --no-triton-pipeline",
                        triton::LIBRARY_FILE
                    )
                })?;
            if !lib.is_file() {
                anyhow::bail!("--pipeline-lib {}: no such file", lib.display());
            }
            Some(PipelineOptions {
                denoiser: opts.model_name.clone().expect("set above"),
                denoiser_max_batch_size: opts.max_batch_size,
                instances: self.pipeline_instances,
                library: lib,
                text,
                pixel_model: pixel_model.clone(),
            })
        };
        Ok(Some(TritonPlan {
            repo: repo.clone(),
            opts,
            pipeline,
            pixel_model,
            note,
        }))
    }
}

impl TritonPlan {
    /// Where the ONNX goes (its directories are created).
    pub fn onnx_path(&self) -> Result<PathBuf> {
        let name = self.opts.model_name.as_deref().expect("set by plan");
        let p = onnx_path(&self.repo, name, self.opts.platform);
        let dir = p.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(p)
    }

    /// Writes config.pbtxt (and README.txt) for the exported model and validates the model directory.
    pub fn finish(&self, meta: &ModelMetadata) -> Result<RepositoryReport> {
        let r = pixeldit_triton::write_model_config(&self.repo, meta, &self.opts)?;
        crate::say!(
            "wrote Triton model {} ({}): {}",
            self.opts.model_name.as_deref().unwrap_or_default(),
            self.opts.platform,
            r.config_path.display()
        );
        if let Some(cmd) = &r.trtexec {
            crate::say!(
                "build {}/1/model.plan on the target GPU (see {}):\n  cd {} && {}",
                r.model_dir.display(),
                r.model_dir.join(README_FILE).display(),
                r.model_dir.display(),
                cmd
            );
        }
        if let Some(name) = &self.pixel_model {
            let onnx = onnx_path(
                &self.repo,
                self.opts.model_name.as_deref().unwrap_or_default(),
                self.opts.platform,
            );
            let dir = pixeldit_triton::repository::write_pixel_model(
                &self.repo,
                meta,
                name,
                &self.opts,
                &pixeldit_spec::pixel_level_path(&onnx),
            )?;
            crate::say!(
                "wrote Triton model {} (the pixel level alone, for requests with a patch cache)",
                dir.display()
            );
        }
        if let Some(n) = &self.note {
            crate::note!("pixeldit-export: {n}");
        }
        if let Some(p) = &self.pipeline {
            let dir = pixeldit_triton::pipeline::write_pipeline(&self.repo, meta, p)?;
            crate::say!(
                "wrote Triton pipeline model {} (python backend, {} instance(s)): one request -> one image",
                dir.display(),
                p.instances
            );
        }
        Ok(r)
    }
}
