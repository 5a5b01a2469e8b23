//! Text-to-image from a prompt (issue 12): `pixeldit-export --text-encoder` on the tiny Hugging Face Gemma-2 of
//! `tests/golden/gemma/model`, the runtime's tokenizer + encoder on every backend against the embeddings that
//! `tools/gemma_text_embeddings.py` (transformers) made for the same texts, and `pixeldit-run --prompt` end to end.

use crate::util::*;
use pixeldit_runtime::backend;
use pixeldit_runtime::io;
use pixeldit_runtime::prompt::{PromptKind, PromptTokenizer};
use pixeldit_runtime::text_encoder::{self, TextEncoder};
use std::path::{Path, PathBuf};
use std::process::Command;

fn gemma_dir() -> PathBuf {
    workspace().join("tests/golden/gemma")
}

fn tokenizer_path() -> PathBuf {
    gemma_dir().join("model/tokenizer.json")
}

fn export_cmd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pixeldit-export"))
}

/// Exports the golden tiny Gemma-2 with `extra` flags to `dir/name`.
fn export_encoder(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let out = run(export_cmd()
        .arg("--text-encoder")
        .arg(gemma_dir().join("model"))
        .args(extra)
        .arg("-o")
        .arg(&path));
    assert!(out.status.success());
    path
}

/// A T2I test model whose text input fits the tiny encoder: `[300, 64]` (t2i-tiny otherwise).
fn export_t2i(dir: &Path, embed_dim: usize, max_length: usize) -> PathBuf {
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(workspace().join("graphs/t2i-tiny.json")).unwrap())
            .unwrap();
    cfg["name"] = "t2i-tiny-gemma".into();
    cfg["text"]["embed_dim"] = embed_dim.into();
    cfg["text"]["max_length"] = max_length.into();
    let cfg_path = dir.join(format!("t2i-{embed_dim}x{max_length}.json"));
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let path = dir.join(format!("t2i-{embed_dim}x{max_length}.onnx"));
    let out = run(export_cmd()
        .arg("--config")
        .arg(&cfg_path)
        .args(["--random-init", "--seed", "3", "-o"])
        .arg(&path));
    assert!(out.status.success());
    path
}

/// `(kind, text, [300, D] embeddings)` of every case that the Python recipe encoded.
fn recipe_cases() -> Vec<(PromptKind, String, String, Vec<f32>)> {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(gemma_dir().join("recipe.json")).unwrap()).unwrap();
    let bytes = std::fs::read(gemma_dir().join("recipe.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    meta["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap().to_string();
            let t = st.tensor(&format!("{name}.text")).unwrap();
            assert_eq!(t.dtype(), safetensors::Dtype::F32);
            let values = le_f32s(t.data());
            let kind = match c["kind"].as_str().unwrap() {
                "prompt" => PromptKind::Prompt,
                _ => PromptKind::Negative,
            };
            (kind, name, c["text"].as_str().unwrap().to_string(), values)
        })
        .collect()
}

fn open_encoder(path: &Path, c: backend::Candidate, opts: &backend::LoadOptions) -> TextEncoder {
    let meta = text_encoder::read_metadata(path).unwrap();
    let b = backend::load_candidate(path, c, opts, false).unwrap();
    TextEncoder::new(
        b,
        path,
        meta,
        PromptTokenizer::from_file(&tokenizer_path()).unwrap(),
    )
    .unwrap()
}

/// Prompts through an encoder exported at the recipe's length, negatives through one exported at 300 tokens: the
/// `[300, D]` embeddings of transformers at every kept position (padding included), on tract and ORT.
#[test]
fn prompt_embeddings_match_transformers_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    // The tokenizer next to the checkpoint sets the length (len(tokenize(CHI)) + 298 = 579).
    let prompt_enc = export_encoder(dir.path(), "gemma.onnx", &[]);
    assert_eq!(
        text_encoder::read_metadata(&prompt_enc).unwrap().sequence_length,
        579
    );
    let neg_enc = export_encoder(dir.path(), "gemma-300.onnx", &["--seq-len", "300"]);
    let cases = recipe_cases();
    assert!(cases.iter().any(|c| c.0 == PromptKind::Negative));
    for (c, opts) in candidates("prompt_embeddings_match_transformers_on_every_backend") {
        let mut prompt = open_encoder(&prompt_enc, c, &opts);
        let mut negative = open_encoder(&neg_enc, c, &opts);
        assert!(!prompt.negative_is_exact(), "window 12 < 300");
        assert!(negative.negative_is_exact());
        for (kind, name, text, expected) in &cases {
            let enc = match kind {
                PromptKind::Prompt => &mut prompt,
                PromptKind::Negative => &mut negative,
            };
            let got = enc.encode(*kind, std::slice::from_ref(text)).unwrap();
            assert_eq!(got.embeddings.shape(), [1, 300, 64]);
            let err = rel_l2(got.embeddings.as_slice().unwrap(), expected);
            eprintln!("{c} {name} ({kind:?}): relative L2 {err:.2e}");
            assert!(err < 1e-4, "{c} {name}: relative L2 {err}");
        }
        // A 300-token export cannot take a prompt (579 tokens): the error says how to re-export.
        let e = negative.encode(PromptKind::Prompt, &["a 7".into()]).unwrap_err();
        assert!(
            e.to_string().contains("needs 579") && e.to_string().contains("re-export"),
            "{e}"
        );
    }
}

/// `pixeldit-run` with the ONNX Runtime library when the test has one.
fn run_bin(dir: &Path, backend: &str) -> Command {
    let mut c = bin();
    c.current_dir(dir).args(["--backend", backend]);
    if backend == "ort" {
        c.arg("--ort-lib")
            .arg(ort_lib().expect("ORT checked by the caller"));
    }
    c
}

fn backends(test: &str) -> Vec<&'static str> {
    let mut v = vec!["tract"];
    if need_ort(test).is_some() {
        v.push("ort");
    }
    v
}

/// `pixeldit-run --prompt` gives the same image as `--text-embeddings` with the embeddings transformers made for
/// that prompt, on tract and ORT; with CFG the negative prompt is encoded too; `--prompts-file` makes one image per
/// line; a long prompt is truncated with a note.
#[test]
fn run_with_a_prompt_matches_run_with_reference_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    export_encoder(d, "gemma.onnx", &[]);
    let model = export_t2i(d, 64, 300);
    let cases = recipe_cases();
    let (_, _, text, reference) = cases.iter().find(|c| c.1 == "case_0").unwrap();
    assert_eq!(text, "the digit seven");
    io::write_atomic(
        &d.join("seven.npy"),
        &io::npy_bytes(&[300, 64], reference.iter().copied()),
    )
    .unwrap();
    let tok = tokenizer_path();
    for be in backends("run_with_a_prompt_matches_run_with_reference_embeddings") {
        let sample = |args: &[&str], raw: &str| {
            let out = run(run_bin(d, be)
                .arg(&model)
                .args(["--cfg", "1", "-o", "x.png", "--save-raw", raw])
                .args(args));
            assert!(out.status.success());
            io::read_npy(&d.join(raw)).unwrap()
        };
        let from_prompt = sample(
            &[
                "--prompt",
                "the digit seven",
                "--text-encoder",
                "gemma.onnx",
                "--tokenizer",
                tok.to_str().unwrap(),
            ],
            "p.npy",
        );
        let from_file = sample(&["--text-embeddings", "seven.npy"], "f.npy");
        let diff = max_abs_diff(from_prompt.as_slice().unwrap(), from_file.as_slice().unwrap());
        eprintln!("{be}: --prompt vs reference embeddings, max |dx| {diff:.2e}");
        assert!(diff < 1e-3, "{be}: max |dx| {diff}");
    }

    // CFG with a negative prompt, several prompts from a file, one of them past the token limit; the tokenizer is
    // found next to the encoder.
    std::fs::copy(&tok, d.join("tokenizer.json")).unwrap();
    let long = &cases.iter().find(|c| c.1 == "case_3").unwrap().2;
    std::fs::write(d.join("prompts.txt"), format!("the digit seven\n\n{long}\n")).unwrap();
    let out = run(run_bin(d, "tract")
        .arg(&model)
        .args(["--prompts-file", "prompts.txt", "--negative-prompt", "blurry"])
        .args([
            "--text-encoder",
            "gemma.onnx",
            "-o",
            "img.png",
            "--report-json",
            "r.json",
        ]));
    assert!(out.status.success());
    assert!(d.join("img_000.png").is_file() && d.join("img_001.png").is_file());
    assert!(!d.join("img_002.png").exists());
    let err = stderr(&out);
    assert!(
        err.contains("prompt 2 truncated to the official limit of 579 tokens"),
        "{err}"
    );
    assert!(!err.contains("prompt 1 truncated"), "{err}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("r.json")).unwrap()).unwrap();
    assert_eq!(report["conditions"]["negative_prompt"], "blurry");
    assert_eq!(report["conditions"]["prompts_truncated"], 1);
    assert!(report["guided_forwards"].as_u64().unwrap() > 0);
}

/// Mismatched files and missing flags: clear errors naming the file, exit 2, no image.
#[test]
fn prompt_path_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let encoder = export_encoder(d, "gemma.onnx", &[]);
    export_encoder(d, "gemma-300.onnx", &["--seq-len", "300"]);
    let model = export_t2i(d, 64, 300);
    let narrow = export_t2i(d, 48, 300);
    let short = export_t2i(d, 64, 8);
    // An encoder whose embedding table is not the tokenizer's vocabulary.
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(gemma_dir().join("model/config.json")).unwrap())
            .unwrap();
    cfg["vocab_size"] = 700.into();
    std::fs::write(d.join("config-700.json"), cfg.to_string()).unwrap();
    let out = run(export_cmd().current_dir(d).args([
        "--text-encoder",
        "config-700.json",
        "--random-init",
        "--seq-len",
        "579",
        "-o",
        "g700.onnx",
    ]));
    assert!(out.status.success());
    let tok = tokenizer_path();
    let tok = tok.to_str().unwrap();
    let fails = |model: &Path, args: &[&str], expect: &str| {
        let out = run(run_bin(d, "tract")
            .arg(model)
            .args(["--prompt", "a 7", "-o", "bad.png"])
            .args(args));
        assert_eq!(out.status.code(), Some(2), "{args:?} should fail");
        assert!(stderr(&out).contains(expect), "{args:?}: stderr lacks '{expect}'");
        assert!(!d.join("bad.png").exists());
    };
    fails(&model, &["--tokenizer", tok], "pass --text-encoder gemma.onnx");
    fails(
        &model,
        &["--text-encoder", "gemma.onnx"],
        "pass --tokenizer tokenizer.json",
    );
    fails(
        &model,
        &["--text-encoder", "missing.onnx", "--tokenizer", tok],
        "missing.onnx",
    );
    fails(
        &model,
        &["--text-encoder", "gemma.onnx", "--tokenizer", "missing.json"],
        "missing.json",
    );
    fails(
        &model,
        &["--text-encoder", "g700.onnx", "--tokenizer", tok],
        "embedding table has 700 rows but the tokenizer",
    );
    fails(
        &narrow,
        &["--text-encoder", "gemma.onnx", "--tokenizer", tok],
        "hidden size 64 does not match the text width 48",
    );
    fails(
        &short,
        &["--text-encoder", "gemma.onnx", "--tokenizer", tok],
        "takes 8 text tokens",
    );
    fails(
        &model,
        &["--text-encoder", "gemma-300.onnx", "--tokenizer", tok],
        "exported for 300 tokens, but the prompt recipe",
    );
    fails(&model, &["--text-embeddings", "x.npy"], "cannot be used with");
    let _ = encoder;

    // Export side: the sequence length must be known, the precision supported, the tokenizer the encoder's.
    let export_fails = |args: &[&str], expect: &str| {
        let out = run(export_cmd().current_dir(d).args(args).args(["-o", "bad.onnx"]));
        assert_eq!(out.status.code(), Some(2), "{args:?} should fail");
        assert!(stderr(&out).contains(expect), "{args:?}: stderr lacks '{expect}'");
        assert!(!d.join("bad.onnx").exists() && !d.join("bad.onnx.data").exists());
    };
    export_fails(
        &["--text-encoder", "gemma-tiny", "--random-init"],
        "pass --tokenizer",
    );
    export_fails(
        &[
            "--text-encoder",
            "gemma-tiny",
            "--random-init",
            "--seq-len",
            "300",
            "--precision",
            "fp8",
        ],
        "supports fp32, fp16 and bf16",
    );
    export_fails(
        &[
            "--text-encoder",
            "config-700.json",
            "--random-init",
            "--tokenizer",
            tok,
        ],
        "has 656 tokens but the encoder's embedding table has 700 rows",
    );
    export_fails(
        &["--text-encoder", "gemma-tiny", "--seq-len", "300"],
        "no text encoder weights",
    );
    export_fails(
        &["--text-encoder", "gemma-9b", "--random-init", "--seq-len", "300"],
        "unknown preset",
    );
}

/// fp16 and bf16 encoders: half-size matrices whose embeddings stay close to fp32 on every backend.
#[test]
fn half_precision_encoders_stay_close_to_fp32() {
    let dir = tempfile::tempdir().unwrap();
    let fp32 = export_encoder(dir.path(), "gemma.onnx", &[]);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let texts = vec!["the digit seven".to_string()];
    for (precision, tol) in [("fp16", 5e-3), ("bf16", 3e-2)] {
        let path = export_encoder(
            dir.path(),
            &format!("gemma-{precision}.onnx"),
            &["--precision", precision],
        );
        // 0.19M matrix/embedding parameters at 2 bytes instead of 4 (the masks and RoPE tables stay as they are).
        let saved = size(&fp32) - size(&path);
        assert!(saved > 350_000, "{precision} file only {saved} bytes smaller");
        for (c, opts) in candidates("half_precision_encoders_stay_close_to_fp32") {
            let reference = open_encoder(&fp32, c, &opts)
                .encode(PromptKind::Prompt, &texts)
                .unwrap();
            let got = open_encoder(&path, c, &opts)
                .encode(PromptKind::Prompt, &texts)
                .unwrap();
            let err = rel_l2(
                got.embeddings.as_slice().unwrap(),
                reference.embeddings.as_slice().unwrap(),
            );
            eprintln!("{c} {precision}: relative L2 vs fp32 {err:.2e}");
            assert!(err < tol, "{c} {precision}: relative L2 {err}");
        }
    }
}

/// `pixeldit-run bench` on a text encoder: one row per backend, encoding `--batch` texts per forward.
#[test]
fn bench_measures_a_text_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    export_encoder(d, "gemma.onnx", &[]);
    let out = run(bin().current_dir(d).args([
        "bench",
        "gemma.onnx",
        "--runs",
        "2",
        "--warmup",
        "0",
        "--batch",
        "2",
        "--backend",
        "tract",
    ]));
    assert!(out.status.success());
    let table = stdout(&out);
    assert!(
        table.contains("gemma.onnx (text encoder model, 579 tokens)"),
        "{table}"
    );
    assert!(table.contains("tract/tract-cpu"), "{table}");
    assert!(!d.join("BENCHMARKS.md").exists());
}
