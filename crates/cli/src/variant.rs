//! One exported variant of a model, whatever its precision: fp32/fp16 straight from the exporter; bf16, int8, fp8
//! and the weight-only variants as the exporter's fp32 graph rewritten by `pixeldit-quantize` (calibrated first
//! by [`crate::calibrate`] when activations are quantized), written with the quantizer's summary in the metadata's
//! `quantization` field and as `<model>.quant.json` beside the model.

use crate::calibrate::{calibrate, CalibInputs};
use anyhow::{Context, Result};
use pixeldit_exporter::{build_graph, load_weights, write_graph, ExportOptions, ExportReport, Weights};
use pixeldit_graph::{Graph, Progress};
use pixeldit_quantize::{apply, partition, Linear, QuantConfig, QuantSummary};
use pixeldit_spec::Precision;
use std::path::{Path, PathBuf};

/// What [`export_variant`] wrote.
#[derive(Debug, Clone)]
pub struct VariantExport {
    /// Files, metadata, keys.
    pub report: ExportReport,
    /// Layers, scales and calibration (quantized variants).
    pub summary: Option<QuantSummary>,
    /// The summary JSON beside the model (quantized variants).
    pub summary_path: Option<PathBuf>,
}

/// `model.onnx` -> `model.quant.json`.
pub fn summary_path(model: &Path) -> PathBuf {
    model.with_extension("quant.json")
}

/// `opts` with fp32 precision (the graph the quantizer starts from).
pub fn fp32(opts: &ExportOptions) -> ExportOptions {
    let mut o = opts.clone();
    o.precision = Precision::Fp32;
    o
}

/// Builds the fp32 graph of `opts` and applies `cfg`, calibrating first (CPU, with `calib`'s backend and text
/// conditions) when activations are quantized.
pub fn build_quantized_graph(
    opts: &ExportOptions,
    cfg: &QuantConfig,
    weights: &Weights,
    calib: &CalibInputs,
) -> Result<(Graph, QuantSummary)> {
    cfg.validate()?;
    let f = fp32(&pixeldit_exporter::with_pixel_ops_chosen(opts, weights));
    let mut g = build_graph(&f, weights)?;
    let calibration = if cfg.needs_calibration() {
        let (selected, _) = partition(&g, cfg);
        let refs: Vec<&Linear> = selected.iter().collect();
        Some(calibrate(&g, &refs, &cfg.calib, &f, weights, calib).context("calibration")?)
    } else {
        None
    };
    let summary = apply(&mut g, cfg, calibration)?;
    Ok((g, summary))
}

/// Exports the variant of `opts` to `path`: `quant` (with `opts.precision` = `quant.precision`) for bf16, int8,
/// fp8 and weight-only variants, `None` for fp32/fp16. Calibration (when needed) runs on the default backend with
/// the default text conditions; [`export_variant_with`] chooses them.
pub fn export_variant(
    opts: &ExportOptions,
    quant: Option<&QuantConfig>,
    path: &Path,
    progress: Option<Progress>,
) -> Result<VariantExport> {
    export_variant_with(opts, quant, &CalibInputs::default(), path, progress)
}

/// [`export_variant`] with the calibration's backend and text conditions.
pub fn export_variant_with(
    opts: &ExportOptions,
    quant: Option<&QuantConfig>,
    calib: &CalibInputs,
    path: &Path,
    progress: Option<Progress>,
) -> Result<VariantExport> {
    let Some(cfg) = quant else {
        let report = pixeldit_exporter::export_with_progress(opts, path, progress)?;
        return Ok(VariantExport {
            report,
            summary: None,
            summary_path: None,
        });
    };
    let mut opts = opts.clone();
    opts.precision = cfg.precision;
    let (weights, keys) = load_weights(&opts)?;
    let opts = pixeldit_exporter::with_pixel_ops_chosen(&opts, &weights);
    let (graph, summary) = build_quantized_graph(&opts, cfg, &weights, calib)?;
    let json = summary.to_json();
    let (write, metadata, pixel_level) =
        write_graph(&graph, &opts, &weights, path, progress, Some(json.clone()))?;
    let sp = summary_path(path);
    let text = serde_json::to_string_pretty(&json).expect("json serializes") + "\n";
    pixeldit_runtime::io::write_atomic(&sp, text.as_bytes())?;
    Ok(VariantExport {
        report: ExportReport {
            write,
            keys,
            metadata,
            nodes: graph.nodes().len(),
            pixel_level,
        },
        summary: Some(summary),
        summary_path: Some(sp),
    })
}

/// Exports `opts` to `path` with the default quantizer settings of its precision.
pub fn export_to_file(opts: &ExportOptions, path: &Path) -> Result<ExportReport> {
    let quant = QuantConfig::for_precision(opts.precision);
    Ok(export_variant(opts, quant.as_ref(), path, None)?.report)
}
