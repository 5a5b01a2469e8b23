//! Timestep-aware calibration statistics. A driver outside this crate (`pixeldit-cli`'s `calibrate`) runs the
//! fp32 model, with every selected Linear input added as an extra graph output ("tap", [`add_taps`]), through the
//! runtime's sampler (CFG batches on the model's time grid, from noise to data) for a set of conditions and
//! seeds, and folds each forward in with [`TensorStats::observe`]. For each tap and each forward it records max |x|, a percentile of
//! |x| and the per-channel max |x_j| (for SmoothQuant), tagged with the forward's t. A static scale must cover
//! every timestep, so the chosen range is the largest per-forward statistic over the whole trajectory; the
//! per-timestep values are kept in the report to show how the range moves with t.

use crate::select::Linear;
use crate::Result;
use pixeldit_graph::{Graph, Value};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

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
    /// Empty statistics of a tap with `channels` input channels.
    pub fn new(channels: usize) -> Self {
        TensorStats {
            amax: 0.0,
            pct: 0.0,
            channel_amax: vec![0.0; channels],
            per_t: Vec::new(),
        }
    }

    /// Folds one forward's tap (row-major `[rows, channels]`) in.
    pub fn observe(&mut self, data: &[f32], t: f32, percentile: f64) {
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
    /// Classes sampled (class-conditional models).
    pub classes: Vec<i64>,
    /// The text conditions sampled (text-to-image models): prompts, embedding files or a synthetic source.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<String>,
    /// Seeds sampled.
    pub seeds: Vec<u64>,
    /// Image sizes `[H, W]` sampled, each with every seed (`--calib-sizes`; empty: the model's size).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sizes: Vec<[usize; 2]>,
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
