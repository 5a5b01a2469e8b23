//! The calibration driver: writes the fp32 graph with every selected Linear input tapped as an extra output, runs
//! it through the runtime's class-conditional sampler (CFG batches on the model's time grid, from noise at t = 0 to
//! data at t = 1) for a set of classes and seeds, and folds every forward into `pixeldit_quantize`'s statistics.

use anyhow::{bail, Context, Result};
use ndarray::{ArrayView1, ArrayView4};
use pixeldit_exporter::{write_graph, ExportOptions, Weights};
use pixeldit_graph::Graph;
use pixeldit_quantize::calib::{add_taps, spread_classes, Calibration, TensorStats};
use pixeldit_quantize::{CalibConfig, Linear};
use pixeldit_runtime::samplers::flow;
use pixeldit_runtime::{backend, io, model, BackendKind, Denoiser, Device, LoadOptions, RuntimeError};
use pixeldit_spec::Precision;
use std::time::Instant;

/// Runs the calibration of `layers` on the fp32 graph `g` of `opts` (which is not modified): writes a tapped copy
/// into a temporary directory, loads it with `backend_kind` on the CPU and samples.
pub fn calibrate(
    g: &Graph,
    layers: &[&Linear],
    cfg: &CalibConfig,
    opts: &ExportOptions,
    weights: &Weights,
    backend_kind: BackendKind,
) -> Result<Calibration> {
    let start = Instant::now();
    let inputs: Vec<&str> = g.inputs().iter().map(|v| g.info(*v).name.as_str()).collect();
    if inputs != ["x", "t", "y"] {
        bail!(
            "activation calibration runs the class-conditional sampler (inputs x, t, y), this graph has inputs \
             {inputs:?}; use bf16, int8-weights or fp8-weights"
        );
    }
    let mut tapped = g.clone();
    let (names, of_scope) = add_taps(&mut tapped, layers)?;
    let dir = tempfile::Builder::new()
        .prefix("pixeldit-calib.")
        .tempdir()
        .context("creating a temporary directory for the calibration model")?;
    let path = dir.path().join("calibration.onnx");
    let mut fp32 = opts.clone();
    fp32.precision = Precision::Fp32;
    write_graph(&tapped, &fp32, weights, &path, None, None)?;
    drop(tapped);
    let meta = model::read_metadata(&path)?;
    let load = LoadOptions::default()
        .with_backend(backend_kind)
        .with_device(Device::Cpu);
    let sel = backend::load(&path, &load)?;
    let backend_name = sel.candidate.to_string();
    let mut denoiser = Denoiser::new(sel.backend, &meta);

    let mut scfg = flow::FlowSamplerConfig::from_defaults(&meta.sampler)?;
    scfg.steps = cfg.steps.unwrap_or(scfg.steps.min(25));
    if let Some(w) = cfg.cfg_scale {
        scfg.cfg_scale = w;
    }
    scfg.validate()?;
    let classes = if cfg.classes.is_empty() {
        spread_classes(meta.config.num_classes, 8)
    } else {
        cfg.classes.clone()
    };
    if let Some(c) = classes
        .iter()
        .find(|c| **c < 0 || **c >= meta.config.num_classes as i64)
    {
        return Err(RuntimeError::ClassOutOfRange {
            class: *c,
            num_classes: meta.config.num_classes,
        }
        .into());
    }

    let mut channels = vec![0; names.len()];
    for l in layers {
        channels[of_scope[&l.scope]] = l.in_features;
    }
    let mut stats: Vec<TensorStats> = channels.iter().map(|c| TensorStats::new(*c)).collect();
    let mut forwards = 0usize;
    let mut timesteps: Vec<f32> = Vec::new();
    for &seed in &cfg.seeds {
        let noise = io::seeded_noise(seed, [classes.len(), 3, meta.height, meta.width]);
        let mut model = |x: ArrayView4<f32>, t: ArrayView1<f32>, y: ArrayView1<i64>| {
            let (v, taps) = denoiser.class_velocity_with_outputs(x, t, y, &names)?;
            let tt = t[0];
            for ((s, tap), name) in stats.iter_mut().zip(&taps).zip(&names) {
                let width = s.channel_amax.len().max(1);
                let data = tap.as_slice().filter(|d| d.len() % width == 0).ok_or_else(|| {
                    RuntimeError::Shape(format!(
                        "tap '{name}' has shape {:?}, expected [rows, {width}]",
                        tap.shape()
                    ))
                })?;
                s.observe(data, tt, cfg.percentile);
            }
            if !timesteps.contains(&tt) {
                timesteps.push(tt);
            }
            forwards += 1;
            Ok(v)
        };
        flow::sample(
            &mut model,
            noise,
            &classes,
            meta.config.null_class(),
            &scfg,
            &mut |_| {},
        )?;
    }
    for s in &mut stats {
        s.per_t.sort_by(|a, b| a.t.total_cmp(&b.t));
    }
    timesteps.sort_by(f32::total_cmp);
    let layers_out = layers
        .iter()
        .map(|l| (l.scope.clone(), stats[of_scope[&l.scope]].clone()))
        .collect();
    Ok(Calibration {
        classes,
        seeds: cfg.seeds.clone(),
        steps: scfg.steps,
        sampler: scfg.kind.to_string(),
        cfg_scale: scfg.cfg_scale,
        time_shift: scfg.shift,
        percentile: cfg.percentile,
        backend: backend_name,
        forwards,
        timesteps,
        seconds: start.elapsed().as_secs_f64(),
        layers: layers_out,
    })
}
