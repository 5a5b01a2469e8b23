//! The Triton repository writer and validator on a fake model file (validation looks at the layout, not the ONNX
//! bytes), and `config.pbtxt` through Triton's schema.

use pixeldit_spec::{
    AttentionMode, ModelConfig, ModelMetadata, Precision, SamplerDefaults, META_FORMAT_VERSION,
};
use pixeldit_triton::config::{
    check_attention, config_text, default_model_name, model_config, trt_precision_mode, CONFIG_FILE,
    ONNX_FILE, PLAN_FILE, README_FILE,
};
use pixeldit_triton::pb::inference::model_config::SchedulingChoice;
use pixeldit_triton::repository::onnx_path;
use pixeldit_triton::{
    pbtxt, validate_model_dir, validate_repository, write_model_config, Platform, TritonOptions,
};
use std::path::{Path, PathBuf};

fn meta(preset: &str, precision: Precision) -> ModelMetadata {
    let config = ModelConfig::preset(preset).unwrap();
    ModelMetadata {
        format_version: META_FORMAT_VERSION,
        height: 32,
        width: 32,
        precision,
        attention: AttentionMode::Decomposed,
        pixel_ops: Default::default(),
        sampler: SamplerDefaults {
            ..config.sampler.clone()
        },
        config,
        weights_sha256: "00".into(),
        weights_source: "random-init:seed=0".into(),
        exporter_version: "test".into(),
        quantization: None,
        patch_split: None,
        dynamic: None,
    }
}

/// A repository with a fake model file.
fn repo(opts: &TritonOptions) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let m = meta("tiny", Precision::Fp16);
    let name = opts
        .model_name
        .clone()
        .unwrap_or_else(|| default_model_name("tiny"));
    let onnx = onnx_path(d.path(), &name, opts.platform);
    std::fs::create_dir_all(onnx.parent().unwrap()).unwrap();
    std::fs::write(&onnx, b"onnx").unwrap();
    write_model_config(d.path(), &m, opts).unwrap();
    let dir = d.path().join(name);
    (d, dir)
}

fn edit(dir: &Path, from: &str, to: &str) {
    let p = dir.join(CONFIG_FILE);
    let t = std::fs::read_to_string(&p).unwrap();
    assert!(t.contains(from), "{from} not in\n{t}");
    std::fs::write(&p, t.replacen(from, to, 1)).unwrap();
}

fn err(dir: &Path) -> String {
    match validate_repository(dir.parent().unwrap()) {
        Ok(m) => panic!("expected an error, got {m:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn config_is_generated_from_the_io_spec_and_reads_back() {
    let opts = TritonOptions::default();
    for preset in ["tiny", "t2i-tiny"] {
        let m = meta(preset, Precision::Fp16);
        let cfg = model_config(&m, "m", &opts).unwrap();
        let text = config_text(&cfg);
        assert_eq!(
            text,
            config_text(&model_config(&m, "m", &opts).unwrap()),
            "deterministic"
        );
        // Triton's schema reads back exactly what was written, metadata JSON included.
        let parsed = pbtxt::parse(&text, Path::new("config.pbtxt")).unwrap();
        assert_eq!(parsed, cfg, "{preset}: round trip");
        let json = &parsed.parameters["pixeldit.metadata"].string_value;
        assert_eq!(ModelMetadata::from_json(json).unwrap(), m);
        insta::assert_snapshot!(format!("config_{preset}"), text);
    }
    let text = config_text(&model_config(&meta("tiny", Precision::Fp16), "m", &opts).unwrap());
    for want in [
        "name: \"m\"",
        "platform: \"onnxruntime_onnx\"",
        "max_batch_size: 16",
        "dims: [ 3, 32, 32 ]",
        "data_type: TYPE_INT64",
        "preferred_batch_size: [ 8, 16 ]",
        "max_queue_delay_microseconds: 1000",
        "name: \"tensorrt\"",
        "key: \"precision_mode\"\n        value: \"FP16\"",
        "key: \"pixeldit.metadata\"",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert_eq!(trt_precision_mode(Precision::Int8), "INT8");
    assert_eq!(default_model_name("XL-256"), "pixeldit_xl_256");
}

#[test]
fn max_batch_size_zero_keeps_the_batch_axis() {
    let opts = TritonOptions {
        max_batch_size: 0,
        preferred_batch_sizes: None,
        ..Default::default()
    };
    let cfg = model_config(&meta("tiny", Precision::Fp32), "m", &opts).unwrap();
    assert_eq!(cfg.input[0].dims, vec![-1, 3, 32, 32]);
    assert_eq!(cfg.input[1].dims, vec![-1]);
    assert!(!matches!(
        cfg.scheduling_choice,
        Some(SchedulingChoice::DynamicBatching(_))
    ));
    let bad = TritonOptions {
        max_batch_size: 0,
        ..Default::default()
    };
    assert!(model_config(&meta("tiny", Precision::Fp32), "m", &bad).is_err());
    let bad = TritonOptions {
        preferred_batch_sizes: Some(vec![32]),
        ..Default::default()
    };
    let e = model_config(&meta("tiny", Precision::Fp32), "m", &bad).unwrap_err();
    assert!(e.to_string().contains("preferred batch size 32"), "{e}");
}

#[test]
fn written_repositories_validate() {
    let (_d, dir) = repo(&TritonOptions::default());
    let m = validate_repository(dir.parent().unwrap()).unwrap();
    assert_eq!(m[0].name, "pixeldit_tiny");
    assert_eq!(m[0].versions, vec![1]);
    let (_d, dir) = repo(&TritonOptions {
        platform: Platform::TensorRtPlan,
        ..Default::default()
    });
    let text = std::fs::read_to_string(dir.join(CONFIG_FILE)).unwrap();
    assert!(text.contains("platform: \"tensorrt_plan\"") && text.contains("KIND_GPU"));
    assert!(!text.contains("gpu_execution_accelerator"));
    let readme = std::fs::read_to_string(dir.join(README_FILE)).unwrap();
    assert!(
        readme.contains("trtexec --onnx=model.onnx --saveEngine=1/model.plan")
            && readme.contains("--maxShapes=x:16x3x32x32,t:16,y:16")
            && readme.contains("--stronglyTyped"),
        "{readme}"
    );
    assert!(validate_model_dir(&dir, true).unwrap().plan_pending);
    // Strict validation wants the plan.
    assert!(err(&dir).contains("1/model.plan is missing: build it on the target GPU"));
    std::fs::write(dir.join("1").join(PLAN_FILE), b"plan").unwrap();
    validate_repository(dir.parent().unwrap()).unwrap();
}

#[test]
fn broken_repositories_give_clear_errors() {
    // Wrong dims (batch axis listed although max_batch_size > 0).
    let (_d, dir) = repo(&TritonOptions::default());
    edit(&dir, "dims: [ 3, 32, 32 ]", "dims: [ -1, 3, 32, 32 ]");
    let e = err(&dir);
    assert!(e.contains("input 'x' dims [-1, 3, 32, 32]: dim 0 is -1"), "{e}");
    assert!(e.contains("batch axis is implicit"), "{e}");
    // Wrong size.
    let (_d, dir) = repo(&TritonOptions::default());
    edit(&dir, "dims: [ 3, 32, 32 ]", "dims: [ 3, 64, 64 ]");
    let e = err(&dir);
    assert!(
        e.contains("'x' has dims [3, 64, 64] but the model exported at 32x32 takes [3, 32, 32]"),
        "{e}"
    );
    // Missing dims.
    let (_d, dir) = repo(&TritonOptions::default());
    edit(&dir, "  dims: [ 3, 32, 32 ]\n", "");
    assert!(err(&dir).contains("input 'x' has no dims"));
    // Missing version folder.
    let (_d, dir) = repo(&TritonOptions::default());
    std::fs::remove_dir_all(dir.join("1")).unwrap();
    let e = err(&dir);
    assert!(
        e.contains("pixeldit_tiny: no version folder: expected a numeric directory such as 1/"),
        "{e}"
    );
    // Missing model file.
    let (_d, dir) = repo(&TritonOptions::default());
    std::fs::remove_file(dir.join("1").join(ONNX_FILE)).unwrap();
    assert!(err(&dir).contains("1/model.onnx is missing"));
    // Name differs from the directory.
    let (_d, dir) = repo(&TritonOptions::default());
    edit(&dir, "name: \"pixeldit_tiny\"", "name: \"other\"");
    assert!(err(&dir).contains("model name 'other' differs from its directory name 'pixeldit_tiny'"));
    // Platform typo, preferred size over the maximum, precision typo.
    let (_d, dir) = repo(&TritonOptions::default());
    edit(&dir, "onnxruntime_onnx", "onnxruntime");
    edit(&dir, "[ 8, 16 ]", "[ 8, 32 ]");
    edit(&dir, "\"FP16\"", "\"fp16\"");
    let e = err(&dir);
    assert!(e.contains("unknown platform 'onnxruntime'"), "{e}");
    assert!(e.contains("preferred_batch_size 32 is outside 1..=16"), "{e}");
    assert!(e.contains("precision_mode 'fp16'"), "{e}");
}

#[test]
fn schema_errors_name_the_file_and_position() {
    // Syntax error, unknown field, bad enum value: Triton's schema through the text-format parser.
    for (from, to, want) in [
        ("max_batch_size: 16", "max_batch_size: {", "line 4"),
        ("max_batch_size: 16", "max_batch_sise: 16", "max_batch_sise"),
        ("data_type: TYPE_INT64", "data_type: TYPE_INT65", "TYPE_INT65"),
    ] {
        let (_d, dir) = repo(&TritonOptions::default());
        edit(&dir, from, to);
        let e = err(&dir);
        assert!(e.contains("config.pbtxt: not a valid Triton ModelConfig"), "{e}");
        assert!(e.contains(want), "{want} not in {e}");
    }
}

#[test]
fn custom_attention_is_rejected_unless_forced() {
    let e = check_attention(AttentionMode::Custom, Platform::OnnxRuntime, false).unwrap_err();
    assert!(e.to_string().contains("--attention decomposed"), "{e}");
    check_attention(AttentionMode::Custom, Platform::OnnxRuntime, true).unwrap();
    check_attention(AttentionMode::Decomposed, Platform::TensorRtPlan, false).unwrap();
    check_attention(AttentionMode::Onnx23, Platform::OnnxRuntime, false).unwrap();
    assert!(check_attention(AttentionMode::Onnx23, Platform::TensorRtPlan, false).is_err());
}

/// The pipeline's config parameters, as Triton hands them to `model.py` (JSON), are what the sampler library reads:
/// the keys are the same, and the library builds a pipeline from a written configuration.
#[test]
fn pipeline_config_is_read_by_the_sampler_library() {
    use pixeldit_triton::config as w;
    use pixeldit_triton_pipeline::config as r;
    for (written, read) in [
        (w::DENOISER_KEY, r::DENOISER_KEY),
        (w::DENOISER_MBS_KEY, r::DENOISER_MBS_KEY),
        (w::TEXT_ENCODER_KEY, r::TEXT_ENCODER_KEY),
        (w::TEXT_ENCODER_META_PARAM, r::TEXT_ENCODER_META_PARAM),
        (w::TOKENIZER_KEY, r::TOKENIZER_KEY),
        (w::TOKENIZER_FILE, r::TOKENIZER_FILE),
        (w::PIXEL_MODEL_KEY, r::PIXEL_MODEL_KEY),
    ] {
        assert_eq!(written, read);
    }
    // model.py reads one parameter itself: the library's file name.
    let model_py = pixeldit_triton::pipeline::MODEL_PY;
    for s in [w::LIBRARY_KEY, w::LIBRARY_FILE] {
        assert!(model_py.contains(&format!("\"{s}\"")), "model.py lacks \"{s}\"");
    }
    let m = meta("tiny", Precision::Fp32);
    let opts = pixeldit_triton::PipelineOptions {
        denoiser: "pixeldit_tiny".into(),
        denoiser_max_batch_size: 8,
        instances: 2,
        library: PathBuf::from("unused.so"),
        text: None,
        pixel_model: Some("pixeldit_tiny_pixel".into()),
    };
    let cfg = pixeldit_triton::pipeline::pipeline_config(&m, &opts, None).unwrap();
    let params: serde_json::Map<String, serde_json::Value> = cfg
        .parameters
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::json!({ "string_value": v.string_value })))
        .collect();
    let json =
        serde_json::json!({"name": cfg.name, "backend": cfg.backend, "parameters": params}).to_string();
    let read = pixeldit_triton_pipeline::PipelineConfig::from_model_config(&json, Path::new("1")).unwrap();
    assert_eq!(read.denoiser, "pixeldit_tiny");
    assert_eq!(read.denoiser_max_batch_size, 8);
    assert_eq!(read.text_encoder, None);
    assert_eq!(read.pixel_model.as_deref(), Some("pixeldit_tiny_pixel"));
    // A pixel-level model for metadata without a split is a configuration error.
    let e = pixeldit_triton_pipeline::Pipeline::new(&read)
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no patch-level split"), "{e}");
    let read = pixeldit_triton_pipeline::PipelineConfig {
        pixel_model: None,
        ..read
    };
    let p = pixeldit_triton_pipeline::Pipeline::new(&read).unwrap();
    assert_eq!(p.sample_shape(), [m.config.in_channels, 32, 32]);
}

/// With a patch-level split the denoiser declares `patch_tokens` and `write_pixel_model` moves the pixel level into
/// `<denoiser>_pixel` with its own config (`x, t, patch_tokens -> v`), which validates; the checks catch a pixel
/// model missing its cut input and one for a model without a split; the `cond` cut is refused.
#[test]
fn pixel_level_model_is_written_and_validated() {
    use pixeldit_spec::{PatchCut, PatchSplit};
    use pixeldit_triton::config::{pixel_model_config, pixel_model_name};
    use pixeldit_triton::repository::write_pixel_model;
    let mut m = meta("tiny", Precision::Fp32);
    m.patch_split = Some(PatchSplit {
        cut: PatchCut::Tokens,
        tensor: "patch_tokens".into(),
    });
    let opts = TritonOptions::default();
    let d = tempfile::tempdir().unwrap();
    let onnx = onnx_path(d.path(), "m", opts.platform);
    std::fs::create_dir_all(onnx.parent().unwrap()).unwrap();
    std::fs::write(&onnx, b"onnx").unwrap();
    let pixel_onnx = pixeldit_spec::pixel_level_path(&onnx);
    std::fs::write(&pixel_onnx, b"pixel").unwrap();
    std::fs::write(pixel_onnx.with_file_name("model.pixel.onnx.data"), b"data").unwrap();
    let named = TritonOptions {
        model_name: Some("m".into()),
        ..opts.clone()
    };
    write_model_config(d.path(), &m, &named).unwrap();
    let text = std::fs::read_to_string(d.path().join("m").join(CONFIG_FILE)).unwrap();
    assert!(text.contains("name: \"patch_tokens\""), "{text}");
    let name = pixel_model_name("m");
    assert_eq!(name, "m_pixel");
    let dir = write_pixel_model(d.path(), &m, &name, &opts, &pixel_onnx).unwrap();
    assert_eq!(std::fs::read(dir.join("1").join(ONNX_FILE)).unwrap(), b"pixel");
    assert_eq!(
        std::fs::read(dir.join("1/model.pixel.onnx.data")).unwrap(),
        b"data"
    );
    assert!(!pixel_onnx.exists());
    let models = validate_repository(d.path()).unwrap();
    assert_eq!(models.len(), 2);
    let cfg = pixel_model_config(&m, &name, &opts).unwrap();
    let inputs: Vec<&str> = cfg.input.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(inputs, ["x", "t", "patch_tokens"]);
    assert_eq!(cfg.output[0].name, "v");
    // The cut input missing; then a pixel model whose metadata has no split.
    edit(&dir, "name: \"patch_tokens\"", "name: \"tokens\"");
    let e = err(&dir);
    assert!(
        e.contains("m_pixel: tensor 'patch_tokens' of the exported model is not declared"),
        "{e}"
    );
    edit(&dir, "name: \"tokens\"", "name: \"patch_tokens\"");
    edit(&dir, ",\\\"patch_split\\\"", ",\\\"unused\\\"");
    let e = err(&dir);
    assert!(
        e.contains("a pixel-level model ('pixeldit.pixel_level') of a model without a patch-level split"),
        "{e}"
    );
    // No split: no pixel model; the cond cut: refused, naming the way out.
    let plain = meta("tiny", Precision::Fp32);
    let e = pixel_model_config(&plain, "p", &opts).unwrap_err().to_string();
    assert!(e.contains("no patch-level split"), "{e}");
    m.patch_split.as_mut().unwrap().cut = PatchCut::Cond;
    let e = model_config(&m, "m", &opts).unwrap_err().to_string();
    assert!(e.contains("--patch-split tokens"), "{e}");
}
