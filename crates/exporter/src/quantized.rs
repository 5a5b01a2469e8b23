//! BF16, INT8 and FP8 variants through [`pixeldit_quantize`]: the fp32 graph is built as usual, the quantizer
//! calibrates it (writing a tapped fp32 copy with this crate's writer, so the runtime finds its metadata) and
//! rewrites it, and the result is written with the quantizer's summary in the metadata's `quantization` field
//! and as `<model>.quant.json` beside the model.
//!
//! Dependency direction: `exporter -> quantize -> {graph, runtime}`; the quantizer never sees [`ExportOptions`].

use crate::{build_graph, load_weights, write_graph, ExportOptions, ExportReport, Result, Weights};
use pixeldit_graph::{Graph, Progress};
use pixeldit_quantize::accuracy::{self, AccuracyReport, EvalConfig};
use pixeldit_quantize::{QuantConfig, QuantSummary, QuantizeError};
use pixeldit_spec::Precision;
use std::path::{Path, PathBuf};

/// A quantized export: the usual report plus the quantizer's summary and where it was written.
#[derive(Debug, Clone)]
pub struct QuantizedExport {
    /// Files, metadata, keys.
    pub report: ExportReport,
    /// Layers, scales and calibration.
    pub summary: QuantSummary,
    /// The summary JSON beside the model.
    pub summary_path: PathBuf,
}

/// `model.onnx` -> `model.quant.json`.
pub fn summary_path(model: &Path) -> PathBuf {
    model.with_extension("quant.json")
}

fn fp32(opts: &ExportOptions) -> ExportOptions {
    let mut o = opts.clone();
    o.precision = Precision::Fp32;
    o
}

/// The writer the quantizer uses for calibration models: an fp32 export of `graph` with full metadata.
fn writer<'a>(
    opts: &'a ExportOptions,
    weights: &'a Weights,
) -> impl FnMut(&Graph, &Path) -> pixeldit_quantize::Result<()> + 'a {
    move |g: &Graph, p: &Path| {
        write_graph(g, opts, weights, p, None, None)
            .map(|_| ())
            .map_err(|e| QuantizeError::External(Box::new(e)))
    }
}

/// Builds the fp32 graph of `opts` and applies `cfg` (calibrating first when activations are quantized).
pub fn build_quantized_graph(
    opts: &ExportOptions,
    cfg: &QuantConfig,
    weights: &Weights,
) -> Result<(Graph, QuantSummary)> {
    let f = fp32(opts);
    let mut g = build_graph(&f, weights)?;
    let mut w = writer(&f, weights);
    let summary = pixeldit_quantize::quantize(&mut g, cfg, &mut w)?;
    Ok((g, summary))
}

/// Exports the variant `cfg.precision` of `opts` to `path` and its summary to [`summary_path`].
pub fn export_quantized(
    opts: &ExportOptions,
    cfg: &QuantConfig,
    path: &Path,
    progress: Option<Progress>,
) -> Result<QuantizedExport> {
    let mut opts = opts.clone();
    opts.precision = cfg.precision;
    let (weights, keys) = load_weights(&opts)?;
    let (graph, summary) = build_quantized_graph(&opts, cfg, &weights)?;
    let json = summary.to_json();
    let (write, metadata) = write_graph(&graph, &opts, &weights, path, progress, Some(json.clone()))?;
    let summary_path = summary_path(path);
    let text = serde_json::to_string_pretty(&json).expect("json serializes") + "\n";
    std::fs::write(&summary_path, text).map_err(|source| QuantizeError::Io {
        path: summary_path.clone(),
        source,
    })?;
    Ok(QuantizedExport {
        report: ExportReport {
            write,
            keys,
            metadata,
            nodes: graph.nodes().len(),
        },
        summary,
        summary_path,
    })
}

/// Compares the exported model at `variant` with an fp32 export of the same options (written to a temporary
/// directory) on the CPU; see [`pixeldit_quantize::accuracy`].
pub fn accuracy_report(opts: &ExportOptions, variant: &Path, eval: &EvalConfig) -> Result<AccuracyReport> {
    let f = fp32(opts);
    let dir = tempfile::Builder::new()
        .prefix("pixeldit-accuracy.")
        .tempdir()
        .map_err(|source| QuantizeError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
    let reference = dir.path().join("fp32.onnx");
    crate::export_to_file(&f, &reference)?;
    let mut r = accuracy::evaluate(&reference, variant, eval)?;
    r.reference = format!("fp32 export of the same weights ({})", f.config.name);
    Ok(r)
}
