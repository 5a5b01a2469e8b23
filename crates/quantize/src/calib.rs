//! Timestep-aware calibration: the fp32 model, with every selected Linear input added as an extra graph output
//! ("tap"), runs through the runtime's sampler (CFG batches on the model's time grid, from noise at t = 0 to data
//! at t = 1) for a set of classes and seeds. For each tap and each forward it records max |x|, a percentile of
//! |x| and the per-channel max |x_j| (for SmoothQuant), tagged with the forward's t. A static scale must cover
//! every timestep, so the chosen range is the largest per-forward statistic over the whole trajectory; the
//! per-timestep values are kept in the report to show how the range moves with t.

use crate::config::CalibConfig;
use crate::select::Linear;
use crate::{QuantizeError, Result};
use ndarray::{ArrayView1, ArrayView4};
use pixeldit_graph::{Graph, Value};
use pixeldit_runtime::{backend, io, model, sampler, LoadOptions};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

/// Statistics of one timestep (all forwards at that t, all seeds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepStats {
    /// Time of the forward (0 = noise, 1 = data).
    pub t: f32,
    /// max |x|.
    pub amax: f32,
    /// Largest per-forward percentile of |x|.
    pub pct: f32,
}

/// Statistics of one Linear input over the whole calibration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorStats {
    /// max |x| over every forward.
    pub amax: f32,
    /// Largest per-forward percentile of |x|.
    pub pct: f32,
    /// max |x_j| per input channel (for SmoothQuant).
    #[serde(skip)]
    pub channel_amax: Vec<f32>,
    /// Per timestep, in time order.
    pub per_t: Vec<StepStats>,
}

impl TensorStats {
    fn new(channels: usize) -> Self {
        TensorStats {
            amax: 0.0,
            pct: 0.0,
            channel_amax: vec![0.0; channels],
            per_t: Vec::new(),
        }
    }

    /// Folds one forward's tap (row-major `[rows, channels]`) in.
    fn observe(&mut self, data: &[f32], t: f32, percentile: f64) {
        let channels = self.channel_amax.len();
        let mut abs: Vec<f32> = data.iter().map(|v| v.abs()).collect();
        for row in abs.chunks(channels.max(1)) {
            for (m, v) in self.channel_amax.iter_mut().zip(row) {
                *m = m.max(*v);
            }
        }
        let amax = abs.iter().copied().fold(0.0f32, f32::max);
        let pct = percentile_of(&mut abs, percentile);
        self.amax = self.amax.max(amax);
        self.pct = self.pct.max(pct);
        match self.per_t.iter_mut().find(|s| s.t == t) {
            Some(s) => {
                s.amax = s.amax.max(amax);
                s.pct = s.pct.max(pct);
            }
            None => self.per_t.push(StepStats { t, amax, pct }),
        }
    }
}

/// The `p`-th percentile (nearest rank) of non-negative values; reorders `v`.
pub fn percentile_of(v: &mut [f32], p: f64) -> f32 {
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    let k = rank.clamp(1, v.len()) - 1;
    let (_, x, _) = v.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
    *x
}

/// The result of a calibration run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// Classes sampled.
    pub classes: Vec<i64>,
    /// Seeds sampled.
    pub seeds: Vec<u64>,
    /// Sampler steps.
    pub steps: usize,
    /// Sampler (update rule).
    pub sampler: String,
    /// CFG scale.
    pub cfg_scale: f32,
    /// Time shift of the grid.
    pub time_shift: f64,
    /// Percentile recorded as `pct`.
    pub percentile: f64,
    /// Backend that ran the fp32 model (`ort/CPUExecutionProvider`, `tract`).
    pub backend: String,
    /// Network forwards run.
    pub forwards: usize,
    /// Distinct t values seen.
    pub timesteps: Vec<f32>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Statistics per layer scope.
    pub layers: BTreeMap<String, TensorStats>,
}

/// Writes a graph to a file with the PixelDiT metadata of the fp32 model (the exporter's writer).
pub type ModelWriter<'a> = &'a mut dyn FnMut(&Graph, &Path) -> Result<()>;

/// Name of the graph output that taps the `i`-th distinct Linear input.
pub fn tap_name(i: usize) -> String {
    format!("pixeldit.calib.{i}")
}

/// Adds one graph output per distinct input of `layers`; returns the output names and, per layer scope, the
/// index of its tap.
pub fn add_taps(g: &mut Graph, layers: &[&Linear]) -> Result<(Vec<String>, HashMap<String, usize>)> {
    let mut by_value: HashMap<Value, usize> = HashMap::new();
    let mut names = Vec::new();
    let mut of_scope = HashMap::new();
    for l in layers {
        let i = match by_value.get(&l.input) {
            Some(i) => *i,
            None => {
                let i = names.len();
                let name = tap_name(i);
                g.output(&name, l.input)?;
                names.push(name);
                by_value.insert(l.input, i);
                i
            }
        };
        of_scope.insert(l.scope.clone(), i);
    }
    Ok((names, of_scope))
}

/// Runs the calibration of `layers` on the fp32 graph `g` (which is not modified): writes a tapped copy with
/// `write` into a temporary directory, loads it with `cfg.backend` on the CPU and samples.
pub fn calibrate(
    g: &Graph,
    layers: &[&Linear],
    cfg: &CalibConfig,
    write: ModelWriter,
) -> Result<Calibration> {
    let start = Instant::now();
    let inputs: Vec<&str> = g.inputs().iter().map(|v| g.info(*v).name.as_str()).collect();
    if inputs != ["x", "t", "y"] {
        return Err(QuantizeError::Invalid(format!(
            "activation calibration runs the class-conditional sampler (inputs x, t, y), this graph has inputs {inputs:?}; \
             use bf16, int8-weights or fp8-weights"
        )));
    }
    let mut tapped = g.clone();
    let (names, of_scope) = add_taps(&mut tapped, layers)?;
    let dir = tempfile::Builder::new()
        .prefix("pixeldit-calib.")
        .tempdir()
        .map_err(|source| QuantizeError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
    let path = dir.path().join("calibration.onnx");
    write(&tapped, &path)?;
    drop(tapped);
    let meta = model::read_metadata(&path)?;
    let opts = LoadOptions::default()
        .with_backend(cfg.backend)
        .with_device(pixeldit_runtime::Device::Cpu);
    let mut sel = backend::load(&path, &opts)?;
    let backend_name = sel.candidate.to_string();

    let mut scfg = sampler::SamplerConfig::from_defaults(&meta.sampler)?;
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
        return Err(pixeldit_runtime::RuntimeError::ClassOutOfRange {
            class: *c,
            num_classes: meta.config.num_classes,
        }
        .into());
    }

    let channels: Vec<usize> = {
        let mut c = vec![0; names.len()];
        for l in layers {
            c[of_scope[&l.scope]] = l.in_features;
        }
        c
    };
    let mut stats: Vec<TensorStats> = channels.iter().map(|c| TensorStats::new(*c)).collect();
    let mut forwards = 0usize;
    let mut timesteps: Vec<f32> = Vec::new();
    for &seed in &cfg.seeds {
        let noise = io::seeded_noise(seed, [classes.len(), 3, meta.height, meta.width]);
        let mut model = |x: ArrayView4<f32>, t: ArrayView1<f32>, y: ArrayView1<i64>| {
            let (v, taps) = sel.backend.run_with_outputs(x, t, y, &names)?;
            let tt = t[0];
            for ((s, tap), name) in stats.iter_mut().zip(&taps).zip(&names) {
                let data = tap
                    .as_slice()
                    .filter(|d| d.len() % s.channel_amax.len().max(1) == 0);
                let data = data.ok_or_else(|| {
                    pixeldit_runtime::RuntimeError::Shape(format!(
                        "tap '{name}' has shape {:?}, expected [rows, {}]",
                        tap.shape(),
                        s.channel_amax.len()
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
        sampler::sample(
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

/// `n` classes spread evenly over `0..num_classes` (all of them when there are at most `n`).
pub fn spread_classes(num_classes: usize, n: usize) -> Vec<i64> {
    if num_classes <= n {
        return (0..num_classes as i64).collect();
    }
    (0..n).map(|i| (i * num_classes / n) as i64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        let mut v: Vec<f32> = (1..=10000).map(|i| i as f32).collect();
        assert_eq!(percentile_of(&mut v, 99.99), 9999.0);
        assert_eq!(percentile_of(&mut v, 100.0), 10000.0);
        assert_eq!(percentile_of(&mut v, 50.0), 5000.0);
        assert_eq!(percentile_of(&mut [3.0], 99.0), 3.0);
    }

    #[test]
    fn classes_are_spread() {
        assert_eq!(spread_classes(10, 8), vec![0, 1, 2, 3, 5, 6, 7, 8]);
        assert_eq!(spread_classes(1000, 4), vec![0, 250, 500, 750]);
        assert_eq!(spread_classes(3, 8), vec![0, 1, 2]);
    }
}
