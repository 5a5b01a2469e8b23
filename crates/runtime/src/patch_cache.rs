//! The patch-level step cache: reuse PixelDiT's patch level (most of its compute) across sampling steps.
//!
//! An export with a patch-level split ([`pixeldit_spec::PatchSplit`]) is two graphs: the whole model, which also
//! outputs the tensor at the cut (by default the patch tokens `s` before `SiLU(t_emb + s)`), and the pixel level
//! alone (`<model>.pixel.onnx`), which takes that tensor with `x` (and `t`) and returns the velocity.
//! [`CachedDenoiser`] runs the whole model on *full* forwards, keeps the cut tensor, and on the other forwards runs
//! only the pixel level on the kept tensor. When to run a full forward is the [`CachePolicy`] (by default
//! [`CachePolicy::FrontLoaded`]: dense in the first steps, where the patch tokens change fastest); it counts model
//! evaluations (forwards), so samplers with several evaluations per step (Heun, DPM-Solver++) follow the same
//! rule. A forward whose condition rows differ from the kept ones (e.g. the text-to-image batch growing from K to
//! 2K rows when the guidance interval starts) is always a full forward: each CFG branch reuses only its own rows.

use crate::backend::Backend;
use crate::denoiser::{run_v, CondRows, Denoiser};
use crate::error::{Result, RuntimeError};
use crate::generate::{Time, VelocityModel};
use crate::model::ModelInfo;
use crate::tensor::TensorRef;
use ndarray::{Array1, Array3, Array4, ArrayD, ArrayView4};
use pixeldit_spec::{ModelMetadata, PatchCut, PatchSplit, PIXEL_LEVEL_KEY};
use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

/// When the patch level is recomputed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CachePolicy {
    /// Every `n`-th forward of a request (the first always); `Every(1)` is the uncached model.
    Every(usize),
    /// As many whole forwards as [`CachePolicy::Every`] (`ceil(F / n)` of a request's `F` forwards), placed densely
    /// at the start and sparsely at the end ([`front_loaded_schedule`]); `FrontLoaded(1)` is the uncached model.
    FrontLoaded(usize),
    /// Adaptive: the relative L1 change of the model input `x` between consecutive forwards is accumulated since
    /// the last full forward; a forward is full when the sum (including its own change) reaches the threshold.
    Threshold(f64),
}

impl CachePolicy {
    /// Checks the values: `n >= 1`, a finite threshold `> 0`.
    pub fn validate(&self) -> Result<()> {
        match *self {
            CachePolicy::Every(0) | CachePolicy::FrontLoaded(0) => Err(RuntimeError::InvalidArgument(
                "patch cache interval 0: expected N >= 1 (1 recomputes the patch level at every forward)"
                    .into(),
            )),
            CachePolicy::Threshold(x) if !(x.is_finite() && x > 0.0) => Err(RuntimeError::InvalidArgument(
                format!("patch cache threshold {x}: expected a finite number > 0"),
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for CachePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CachePolicy::Every(n) => write!(f, "every {n}"),
            CachePolicy::FrontLoaded(n) => write!(f, "1 in {n}, front-loaded"),
            CachePolicy::Threshold(x) => write!(f, "threshold {x}"),
        }
    }
}

/// Where the whole forwards of a `--patch-cache N` run go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Schedule {
    /// `ceil(F / N)` whole forwards of F, dense at the start and sparse at the end (`CachePolicy::FrontLoaded`).
    #[default]
    Front,
    /// Every N-th forward (`CachePolicy::Every`).
    Uniform,
}

impl Schedule {
    /// The policy of `N` under this schedule.
    pub fn policy(self, n: usize) -> CachePolicy {
        match self {
            Schedule::Front => CachePolicy::FrontLoaded(n),
            Schedule::Uniform => CachePolicy::Every(n),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Schedule::Front => "front",
            Schedule::Uniform => "uniform",
        })
    }
}

impl std::str::FromStr for Schedule {
    type Err = RuntimeError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "front" => Ok(Schedule::Front),
            "uniform" => Ok(Schedule::Uniform),
            other => Err(RuntimeError::InvalidArgument(format!(
                "patch cache schedule '{other}': expected front or uniform"
            ))),
        }
    }
}

/// Exponent of [`front_loaded_schedule`]'s time warp.
pub const FRONT_LOADED_EXPONENT: f64 = 1.75;

/// Which of `forwards` forwards are whole under [`CachePolicy::FrontLoaded`]`(n)`: `ceil(forwards / n)` of them, the
/// `k`-th of `B` at `round((forwards - 1) (k / (B - 1))^1.75)` (moved later where that repeats a forward), so the
/// first and the last forward are whole and the gaps grow from 1 at the start to about 1.75 n at the end.
///
/// Why: the patch tokens change fastest in the first, noise-dominated steps, where a reused or extrapolated token
/// costs most. On `digits` (flow_dpm, 25 steps, seeds 0-2), 13 whole forwards placed this way give 42.5-43.3 dB
/// against the uncached images instead of 23.2-37.7 dB for every 2nd forward; on `digits-t2i` (dpmpp_2m, 20 steps)
/// 40.0 instead of 28.4 dB (README "Patch-level step cache").
pub fn front_loaded_schedule(forwards: usize, n: usize) -> Vec<bool> {
    let mut whole = vec![false; forwards];
    if forwards == 0 {
        return whole;
    }
    let budget = forwards.div_ceil(n.max(1));
    if budget == 1 {
        whole[0] = true;
        return whole;
    }
    let last = (forwards - 1) as f64;
    let mut previous: Option<usize> = None;
    for k in 0..budget {
        let at = (last * (k as f64 / (budget - 1) as f64).powf(FRONT_LOADED_EXPONENT)).round() as usize;
        let at = previous.map_or(at, |p| at.max(p + 1)).min(forwards - 1);
        whole[at] = true;
        previous = Some(at);
    }
    whole
}

/// What a pixel-level-only forward uses for the patch level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Reuse {
    /// The cut tensor of the last whole forward, as it is.
    Hold,
    /// Linear extrapolation in flow time from the last two whole forwards with the same rows,
    /// `s1 + (s1 - s0) (t - t1) / (t1 - t0)` (held while there is only one): on `digits`, `--patch-cache 2` gives
    /// 43.3 dB against the uncached images instead of 34.4 dB for holding (front-loaded; uniform: 32.8 vs 30.2 dB),
    /// at the same cost.
    #[default]
    Extrapolate,
}

impl fmt::Display for Reuse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reuse::Hold => "hold",
            Reuse::Extrapolate => "extrapolate",
        })
    }
}

/// Forwards of a [`CachedDenoiser`] since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Whole-model forwards (patch level and pixel level).
    pub full: usize,
    /// Pixel-level forwards on a kept cut tensor.
    pub pixel_only: usize,
    /// Batch rows over the whole-model forwards.
    pub full_rows: usize,
    /// Batch rows over the pixel-level forwards.
    pub pixel_rows: usize,
}

/// The pixel-level graph of the model at `model` with metadata `meta`: `<model>.pixel.onnx` beside it, checked to
/// belong to the same weights and cut.
pub fn find_pixel_level(model: &Path, meta: &ModelMetadata) -> Result<(PathBuf, PatchSplit)> {
    let Some(split) = meta.patch_split.clone() else {
        return Err(RuntimeError::InvalidArgument(format!(
            "{} has no patch-level split, so --patch-cache cannot run it: export it again without \
             --no-patch-split (pixeldit-export writes <model>.pixel.onnx beside the model)",
            model.display()
        )));
    };
    let path = pixeldit_spec::pixel_level_path(model);
    if !path.exists() {
        return Err(RuntimeError::InvalidArgument(format!(
            "the pixel level of {} is missing: expected {} (written by pixeldit-export beside the model; rename \
             both files together)",
            model.display(),
            path.display()
        )));
    }
    let info = ModelInfo::read(&path)?;
    let cut = info.metadata_prop(PIXEL_LEVEL_KEY).map(str::to_string);
    let pixel_meta = info.pixeldit_metadata()?;
    if cut.as_deref() != Some(split.cut.as_str()) || pixel_meta.weights_sha256 != meta.weights_sha256 {
        return Err(RuntimeError::invalid_model(
            &path,
            format!(
                "not the pixel level of {} (cut {:?}, weights {}; expected cut '{}', weights {}): export them \
                 together",
                model.display(),
                cut,
                short(&pixel_meta.weights_sha256),
                split.cut,
                short(&meta.weights_sha256)
            ),
        ));
    }
    Ok((path, split))
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

/// The condition rows a kept tensor was computed for.
#[derive(Debug, Clone, PartialEq)]
enum KeptRows {
    Class(Array1<i64>),
    Text(Array3<f32>),
}

impl KeptRows {
    fn of(cond: &CondRows<'_>) -> Self {
        match cond {
            CondRows::Class(y) => KeptRows::Class(y.to_owned()),
            CondRows::Text(t) => KeptRows::Text(t.to_owned()),
        }
    }

    fn matches(&self, cond: &CondRows<'_>) -> bool {
        match (self, cond) {
            (KeptRows::Class(a), CondRows::Class(b)) => a.view() == *b,
            (KeptRows::Text(a), CondRows::Text(b)) => a.view() == *b,
            _ => false,
        }
    }
}

struct Kept {
    rows: KeptRows,
    tensors: Vec<ArrayD<f32>>,
    time: f64,
    /// The whole forward before, with the same rows: (tensors, time).
    before: Option<(Vec<ArrayD<f32>>, f64)>,
}

impl Kept {
    /// The cut tensors for a forward at `time` (see [`Reuse`]).
    fn at(&self, time: f64, reuse: Reuse) -> Vec<Cow<'_, ArrayD<f32>>> {
        match &self.before {
            Some((before, tb)) if reuse == Reuse::Extrapolate && (self.time - tb).abs() > 1e-12 => {
                let r = ((time - self.time) / (self.time - tb)) as f32;
                self.tensors
                    .iter()
                    .zip(before)
                    .map(|(a, b)| {
                        let mut out = a.clone();
                        out.zip_mut_with(b, |a, &b| *a += (*a - b) * r);
                        Cow::Owned(out)
                    })
                    .collect()
            }
            _ => self.tensors.iter().map(Cow::Borrowed).collect(),
        }
    }
}

/// A denoiser that reuses the patch level across forwards ([module docs](self)).
pub struct CachedDenoiser {
    whole: Denoiser,
    pixel: Box<dyn Backend>,
    /// Where the model is cut.
    cut: PatchCut,
    /// The cut tensors: extra outputs of the whole model, inputs of the pixel level.
    tensors: Vec<String>,
    pixel_x: String,
    pixel_t: Option<String>,
    pixel_v: String,
    policy: CachePolicy,
    reuse: Reuse,
    kept: Option<Kept>,
    forwards: usize,
    /// The request's whole forwards under [`CachePolicy::FrontLoaded`] (by forward index).
    schedule: Vec<bool>,
    previous_x: Option<Array4<f32>>,
    accumulated: f64,
    stats: CacheStats,
}

impl CachedDenoiser {
    /// `whole` runs the whole model (with `split.tensor` as an extra output), `pixel` its pixel-level graph.
    pub fn new(
        whole: Denoiser,
        pixel: Box<dyn Backend>,
        split: &PatchSplit,
        policy: CachePolicy,
        reuse: Reuse,
    ) -> Result<Self> {
        policy.validate()?;
        let inputs = pixel.input_names();
        let outputs = pixel.output_names();
        let bad = |what: String| {
            RuntimeError::Shape(format!(
                "the pixel-level graph {what} (inputs {}; outputs {})",
                inputs.join(", "),
                outputs.join(", ")
            ))
        };
        let (x, t, cond) = whole.input_names();
        let pixel_t = inputs.iter().find(|n| **n == t).cloned();
        let tensors: Vec<String> = inputs.iter().filter(|n| **n != x && **n != t).cloned().collect();
        let expected = |n: &String| match split.cut {
            PatchCut::Modulation => n.starts_with(&format!("{}.", split.tensor)),
            _ => *n == split.tensor,
        };
        if let Some(odd) = tensors.iter().find(|n| !expected(n)) {
            return Err(bad(format!(
                "has input '{odd}', expected only '{x}', '{t}' and the cut '{}' (not '{cond}')",
                split.tensor
            )));
        }
        if !inputs.contains(&x) || tensors.is_empty() {
            return Err(bad(format!("lacks '{x}' or the cut '{}'", split.tensor)));
        }
        let pixel_v = outputs
            .first()
            .cloned()
            .ok_or_else(|| bad("has no outputs".into()))?;
        Ok(CachedDenoiser {
            whole,
            pixel,
            cut: split.cut,
            tensors,
            pixel_x: x,
            pixel_t,
            pixel_v,
            policy,
            reuse,
            kept: None,
            forwards: 0,
            schedule: Vec::new(),
            previous_x: None,
            accumulated: 0.0,
            stats: CacheStats::default(),
        })
    }

    /// Where the model is cut.
    pub fn cut(&self) -> PatchCut {
        self.cut
    }

    /// The policy.
    pub fn policy(&self) -> CachePolicy {
        self.policy
    }

    /// Changes the policy (for the requests that follow).
    pub fn set_policy(&mut self, policy: CachePolicy) -> Result<()> {
        policy.validate()?;
        self.policy = policy;
        Ok(())
    }

    /// The whole-model denoiser, mutably (uncached forwards on the same backend).
    pub fn whole_mut(&mut self) -> &mut Denoiser {
        &mut self.whole
    }

    /// What pixel-level-only forwards use.
    pub fn reuse(&self) -> Reuse {
        self.reuse
    }

    /// Forwards run so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }

    /// The whole-model denoiser.
    pub fn whole(&self) -> &Denoiser {
        &self.whole
    }

    /// Whether this forward recomputes the patch level (before the row check).
    fn due(&mut self, x: ArrayView4<f32>) -> bool {
        let index = self.forwards;
        self.forwards += 1;
        match self.policy {
            CachePolicy::Every(n) => index.is_multiple_of(n),
            // Forwards past the announced count (none with the samplers here) are whole.
            CachePolicy::FrontLoaded(_) => self.schedule.get(index).copied().unwrap_or(true),
            CachePolicy::Threshold(limit) => {
                let change = match &self.previous_x {
                    Some(p) if p.shape() == x.shape() => relative_l1(x, p.view()),
                    _ => f64::INFINITY,
                };
                self.previous_x = Some(x.to_owned());
                self.accumulated += change;
                self.accumulated >= limit
            }
        }
    }

    fn pixel_velocity(
        &mut self,
        x: ArrayView4<f32>,
        time: Time,
        kept: &[Cow<'_, ArrayD<f32>>],
    ) -> Result<Array4<f32>> {
        let t = Array1::from_elem(x.shape()[0], self.whole.model_time(time));
        let mut feeds = vec![(self.pixel_x.as_str(), TensorRef::from(x.view()))];
        for (name, tensor) in self.tensors.iter().zip(kept) {
            feeds.push((name.as_str(), TensorRef::F32(tensor.view())));
        }
        if let Some(name) = &self.pixel_t {
            feeds.push((name.as_str(), TensorRef::from(t.view())));
        }
        let (mut v, _) = run_v(self.pixel.as_mut(), &self.pixel_v, &feeds, &[])?;
        self.whole.graph_output_to_velocity(&mut v);
        Ok(v)
    }
}

impl VelocityModel for CachedDenoiser {
    fn begin(&mut self, forwards: usize) {
        self.kept = None;
        self.forwards = 0;
        self.schedule = match self.policy {
            CachePolicy::FrontLoaded(n) => front_loaded_schedule(forwards, n),
            _ => Vec::new(),
        };
        self.previous_x = None;
        self.accumulated = 0.0;
    }

    fn velocity(&mut self, x: ArrayView4<f32>, time: Time, cond: CondRows<'_>) -> Result<Array4<f32>> {
        let due = self.due(x);
        let hit = !due && self.kept.as_ref().is_some_and(|k| k.rows.matches(&cond));
        if hit {
            let kept = self.kept.take().expect("checked");
            let v = {
                let tensors = kept.at(time.t(), self.reuse);
                self.pixel_velocity(x, time, &tensors)
            };
            self.kept = Some(kept);
            self.stats.pixel_only += 1;
            self.stats.pixel_rows += x.shape()[0];
            return v;
        }
        let (v, tensors) = self.whole.velocity_with_outputs(x, time, cond, &self.tensors)?;
        if tensors.len() != self.tensors.len() {
            return Err(RuntimeError::Shape(format!(
                "the model returned {} of the cut tensors {}",
                tensors.len(),
                self.tensors.join(", ")
            )));
        }
        let before = self
            .kept
            .take()
            .filter(|k| k.rows.matches(&cond))
            .map(|k| (k.tensors, k.time));
        self.kept = Some(Kept {
            rows: KeptRows::of(&cond),
            tensors,
            time: time.t(),
            before,
        });
        self.accumulated = 0.0;
        self.stats.full += 1;
        self.stats.full_rows += x.shape()[0];
        Ok(v)
    }
}

/// `sum |a - b| / sum |b|` (0 when both are zero).
fn relative_l1(a: ArrayView4<f32>, b: ArrayView4<f32>) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b.iter()) {
        num += f64::from((x - y).abs());
        den += f64::from(y.abs());
    }
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        num / den
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::Feed;
    use ndarray::{Array4, ArrayView1};
    use pixeldit_spec::{AttentionMode, ModelConfig, PatchCut, Precision};

    /// A stand-in for an exported graph: `v` is `t` everywhere, the cut tensor is zeros.
    struct Fake {
        inputs: Vec<String>,
        outputs: Vec<String>,
    }

    impl Backend for Fake {
        fn name(&self) -> &'static str {
            "fake"
        }
        fn provider(&self) -> String {
            "fake".into()
        }
        fn run(&mut self, feeds: &[Feed<'_, '_>], outputs: &[&str]) -> Result<Vec<ArrayD<f32>>> {
            let x = feeds.iter().find(|(n, _)| *n == "x").unwrap();
            let TensorRef::F32(x) = &x.1 else {
                panic!("x is f32")
            };
            let t = feeds.iter().find(|(n, _)| *n == "t").map(|f| match &f.1 {
                TensorRef::F32(t) => t.iter().copied().next().unwrap(),
                _ => panic!("t is f32"),
            });
            Ok(outputs
                .iter()
                .map(|o| match *o {
                    "v" => ArrayD::from_elem(x.shape(), t.unwrap_or(-1.0)),
                    _ => ArrayD::zeros(vec![x.shape()[0], 1]),
                })
                .collect())
        }
        fn input_names(&self) -> Vec<String> {
            self.inputs.clone()
        }
        fn output_names(&self) -> Vec<String> {
            self.outputs.clone()
        }
    }

    fn fake_cache(policy: CachePolicy) -> CachedDenoiser {
        let config = ModelConfig::preset("tiny").unwrap();
        let meta = ModelMetadata {
            format_version: pixeldit_spec::META_FORMAT_VERSION,
            sampler: config.sampler.clone(),
            height: 1,
            width: 1,
            config,
            precision: Precision::Fp32,
            attention: AttentionMode::Custom,
            pixel_ops: Default::default(),
            weights_sha256: String::new(),
            weights_source: "test".into(),
            exporter_version: "0".into(),
            quantization: None,
            patch_split: None,
            dynamic: None,
        };
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let whole = Fake {
            inputs: names(&["x", "t", "y"]),
            outputs: names(&["v", "patch_tokens"]),
        };
        let pixel = Fake {
            inputs: names(&["x", "t", "patch_tokens"]),
            outputs: names(&["v"]),
        };
        let split = PatchSplit {
            cut: PatchCut::Tokens,
            tensor: "patch_tokens".into(),
        };
        let whole = Denoiser::new(Box::new(whole), &meta);
        CachedDenoiser::new(whole, Box::new(pixel), &split, policy, Reuse::Hold).unwrap()
    }

    #[test]
    fn only_matching_rows_reuse_the_patch_level() {
        let mut c = fake_cache(CachePolicy::Every(3));
        let x1 = Array4::<f32>::zeros((1, 1, 1, 1));
        let x2 = Array4::<f32>::zeros((2, 1, 1, 1));
        let (one, two) = (ndarray::arr1(&[3i64]), ndarray::arr1(&[10i64, 3]));
        let step = |c: &mut CachedDenoiser, x: &Array4<f32>, y: ArrayView1<i64>| {
            let before = c.stats();
            c.velocity(x.view(), Time::from_t(0.5), CondRows::Class(y))
                .unwrap();
            c.stats().full > before.full
        };
        c.begin(7);
        // Forward 0 whole; 1 and 2 reuse; 3 whole (due); 4 has other rows (whole), 5 reuses them, 6 is due.
        let whole: Vec<bool> = [
            (&x1, one.view()),
            (&x1, one.view()),
            (&x1, one.view()),
            (&x1, one.view()),
        ]
        .into_iter()
        .chain([(&x2, two.view()), (&x2, two.view()), (&x2, two.view())])
        .map(|(x, y)| step(&mut c, x, y))
        .collect();
        assert_eq!(whole, [true, false, false, true, true, false, true]);
        let stats = c.stats();
        assert_eq!((stats.full, stats.pixel_only), (4, 3));
        assert_eq!((stats.full_rows, stats.pixel_rows), (6, 4));
        // A new request starts whole whatever was kept.
        c.begin(7);
        assert!(step(&mut c, &x2, two.view()));
    }

    #[test]
    fn front_loaded_schedules_spend_the_budget_of_every_nth_forward() {
        for forwards in 1..60 {
            for n in 1..6 {
                let whole = front_loaded_schedule(forwards, n);
                let indices: Vec<usize> = (0..forwards).filter(|&i| whole[i]).collect();
                assert_eq!(indices.len(), forwards.div_ceil(n), "F={forwards} n={n}");
                assert_eq!(indices[0], 0);
                if indices.len() > 1 {
                    assert_eq!(*indices.last().unwrap(), forwards - 1);
                }
                // Gaps never shrink by more than the rounding: denser at the start than at the end.
                let gaps: Vec<usize> = indices.windows(2).map(|w| w[1] - w[0]).collect();
                for g in gaps.windows(2) {
                    assert!(g[1] + 1 >= g[0], "F={forwards} n={n}: {indices:?}");
                }
            }
        }
        assert!(front_loaded_schedule(9, 1).iter().all(|&w| w));
        let idx = |f, n| -> Vec<usize> {
            let w = front_loaded_schedule(f, n);
            (0..f).filter(|&i| w[i]).collect()
        };
        assert_eq!(idx(25, 2), [0, 1, 2, 3, 4, 5, 7, 9, 12, 15, 17, 21, 24]);
        assert_eq!(idx(20, 2), [0, 1, 2, 3, 5, 7, 9, 12, 15, 19]);
    }

    #[test]
    fn front_loaded_policy_follows_its_schedule() {
        let mut c = fake_cache(CachePolicy::FrontLoaded(2));
        let x = Array4::<f32>::zeros((1, 1, 1, 1));
        let y = ndarray::arr1(&[3i64]);
        c.begin(10);
        let whole: Vec<bool> = (0..10)
            .map(|_| {
                let before = c.stats().full;
                c.velocity(x.view(), Time::from_t(0.5), CondRows::Class(y.view()))
                    .unwrap();
                c.stats().full > before
            })
            .collect();
        assert_eq!(whole, front_loaded_schedule(10, 2));
        assert_eq!(c.stats().full, 5);
    }

    #[test]
    fn policies_validate() {
        assert!(CachePolicy::Every(0).validate().is_err());
        assert!(CachePolicy::FrontLoaded(0).validate().is_err());
        assert!(CachePolicy::Every(1).validate().is_ok());
        for bad in [0.0, -0.1, f64::NAN, f64::INFINITY] {
            let e = CachePolicy::Threshold(bad).validate().unwrap_err().to_string();
            assert!(e.contains("threshold"), "{e}");
        }
        assert!(CachePolicy::Threshold(0.2).validate().is_ok());
    }

    #[test]
    fn relative_change() {
        let a = Array4::from_elem((1, 1, 2, 2), 2.0f32);
        let b = Array4::from_elem((1, 1, 2, 2), 1.0f32);
        assert_eq!(relative_l1(a.view(), b.view()), 1.0);
        assert_eq!(relative_l1(b.view(), b.view()), 0.0);
    }
}
