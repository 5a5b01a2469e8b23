//! Reusable layers: linear, RMSNorm, modulation, SwiGLU, GELU and the three attention lowerings.
//! A model file composes these and never emits raw ops where a layer exists.

use crate::weights::{KeyReport, Lookup, Weights};
use crate::{ExportError, Result};
use pixeldit_graph::{Attr, DType, Dim, Encoding, Graph, Symbol, TensorData, Value};
use pixeldit_spec::{custom_op, AttentionMode, PatchCut};
use std::collections::{BTreeSet, HashMap};

/// The six adaLN modulation chunks, in the official order.
#[derive(Debug, Clone, Copy)]
pub struct AdaLn {
    /// Shift before attention.
    pub shift_msa: Value,
    /// Scale before attention.
    pub scale_msa: Value,
    /// Gate of the attention branch.
    pub gate_msa: Value,
    /// Shift before the MLP.
    pub shift_mlp: Value,
    /// Scale before the MLP.
    pub scale_mlp: Value,
    /// Gate of the MLP branch.
    pub gate_mlp: Value,
}

impl AdaLn {
    /// From six chunks in the official order (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp).
    pub fn from_chunks(chunks: &[Value]) -> Self {
        let [shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp] = chunks[..] else {
            panic!("adaLN modulation has six chunks, got {}", chunks.len())
        };
        AdaLn {
            shift_msa,
            scale_msa,
            gate_msa,
            shift_mlp,
            scale_mlp,
            gate_mlp,
        }
    }
}

/// The patch-token grid of an image: fixed (`rows x cols` patches), or the graph's [`Symbol::Rows`] x
/// [`Symbol::Cols`] of a dynamic-size export (computed from the shape of `x`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    /// Patch rows (`H / p`).
    pub rows: Dim,
    /// Patch columns (`W / p`).
    pub cols: Dim,
}

impl Grid {
    /// A fixed `rows x cols` grid.
    pub fn fixed(rows: usize, cols: usize) -> Self {
        Grid {
            rows: Dim::Fixed(rows),
            cols: Dim::Fixed(cols),
        }
    }

    /// The symbolic grid of a dynamic-size export.
    pub fn dynamic() -> Self {
        Grid {
            rows: Dim::of(Symbol::Rows, 1),
            cols: Dim::of(Symbol::Cols, 1),
        }
    }

    /// `(rows, cols)` when fixed.
    pub fn sizes(&self) -> Option<(usize, usize)> {
        Some((self.rows.fixed()?, self.cols.fixed()?))
    }

    /// The token count `rows * cols`.
    pub fn tokens(&self) -> Dim {
        self.rows.times(self.cols)
    }
}

/// The builder state shared by every layer of one export.
pub struct Ctx<'w> {
    /// The graph being built.
    pub g: Graph,
    /// The weights.
    pub weights: &'w Weights,
    /// Storage and math type of the linear layers (f32, f16 or bf16); everything else runs in f32.
    pub linear_dtype: DType,
    /// Attention lowering.
    pub attention: AttentionMode,
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Where the model is cut for the patch-level step cache (the cut tensor becomes an extra output).
    pub patch_cut: Option<PatchCut>,
    /// How the PiT blocks' per-pixel work is written.
    pub pixel_ops: pixeldit_spec::PixelOps,
    /// Values named for the cut that the model declares as extra outputs at the end (PiT blocks push their
    /// modulation here for [`PatchCut::Modulation`]).
    pub cut_values: Vec<(String, Value)>,
    /// Whether the image size is symbolic ([`crate::model::build`]).
    pub dynamic_size: bool,
    position_ids: HashMap<Dim, Value>,
    /// RoPE tables computed in the graph (dynamic sizes), per head dim and layout.
    rope_tables: HashMap<(usize, bool), (Value, Value)>,
    /// Checkpoint keys the model read (or declared), with their shapes, in reading order: the schema.
    read: Vec<(String, Vec<usize>)>,
    /// Keys the model asked for that the checkpoint lacks.
    missing: Vec<String>,
    /// The first key whose shape or dtype differs from what the model reads (reported after missing keys).
    mismatch: Option<ExportError>,
}

/// A tensor that stands in for a missing checkpoint key while the rest of the graph is built (the build then
/// fails listing every missing key; it is never read).
struct Absent;

impl pixeldit_graph::F32Source for Absent {
    fn read(&self) -> std::result::Result<Vec<f32>, pixeldit_graph::GraphError> {
        Err(pixeldit_graph::GraphError::Write(
            "a missing checkpoint key was read".into(),
        ))
    }
}

impl<'w> Ctx<'w> {
    /// A new context; `opset` is the default-domain opset the lowering needs.
    pub fn new(weights: &'w Weights, linear_dtype: DType, attention: AttentionMode, eps: f32) -> Self {
        let opset = match attention {
            AttentionMode::Onnx23 => 23,
            _ => 17,
        };
        Ctx {
            g: Graph::new(opset),
            weights,
            linear_dtype,
            attention,
            eps,
            patch_cut: None,
            pixel_ops: pixeldit_spec::PixelOps::Standard,
            cut_values: Vec::new(),
            dynamic_size: false,
            position_ids: HashMap::new(),
            rope_tables: HashMap::new(),
            read: Vec::new(),
            missing: Vec::new(),
            mismatch: None,
        }
    }

    /// Records that the model reads `key` with `shape`; `Ok(None)` when the checkpoint lacks it (remembered for
    /// [`Ctx::finish`]).
    fn lookup(
        &mut self,
        key: &str,
        shape: &[usize],
    ) -> Result<Option<std::sync::Arc<dyn pixeldit_graph::F32Source>>> {
        if !self.read.iter().any(|(k, _)| k == key) {
            self.read.push((key.to_string(), shape.to_vec()));
        }
        match self.weights.source_for(key, shape) {
            Ok(Lookup::Found(s)) => Ok(Some(s)),
            Ok(Lookup::Missing) => {
                if !self.missing.iter().any(|k| k == key) {
                    self.missing.push(key.to_string());
                }
                Ok(None)
            }
            // Keep building so that every missing key can be listed first; the mismatch is reported by `finish`.
            Err(e @ (ExportError::ShapeMismatch { .. } | ExportError::Checkpoint { .. })) => {
                self.mismatch.get_or_insert(e);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Declares a checkpoint key that the graph does not use (dead in the official model) with its shape: it
    /// must exist with that shape, and is not reported as unused.
    pub fn declare_unused(&mut self, key: &str, shape: &[usize]) -> Result<()> {
        self.lookup(key, shape).map(drop)
    }

    /// The checkpoint keys and shapes the model read or declared, in reading order.
    pub fn schema(&self) -> &[(String, Vec<usize>)] {
        &self.read
    }

    /// After the build: an error listing every missing key, else the first shape or dtype mismatch, else the
    /// unused and dropped keys.
    pub fn finish(&mut self) -> Result<KeyReport> {
        let read: BTreeSet<String> = self.read.iter().map(|(k, _)| k.clone()).collect();
        let report = self.weights.report(&read, &self.missing)?;
        match self.mismatch.take() {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }

    /// Adds the checkpoint tensor `key`, which the model reads with `shape` (checked against the checkpoint,
    /// errors name file and key), as an initializer stored as `dtype`.
    pub fn weight(&mut self, key: &str, shape: &[usize], dtype: DType) -> Result<Value> {
        if let Some(v) = self.g.value_by_name(key) {
            return Ok(v);
        }
        let source = self
            .lookup(key, shape)?
            .unwrap_or_else(|| std::sync::Arc::new(Absent));
        Ok(self.g.initializer(
            key,
            dtype,
            shape.to_vec(),
            TensorData::Deferred {
                source,
                encoding: Encoding::Float(dtype),
            },
        )?)
    }

    /// The fixed size of the last axis of `x`.
    fn last_dim(&self, x: Value) -> usize {
        self.g
            .shape(x)
            .last()
            .and_then(|d| d.fixed())
            .expect("the feature axis has a fixed size")
    }

    /// A named f32 constant table (RoPE, positional embedding); not a checkpoint key.
    pub fn table(&mut self, name: &str, shape: Vec<usize>, values: &[f32]) -> Result<Value> {
        if let Some(v) = self.g.value_by_name(name) {
            return Ok(v);
        }
        let bytes = pixeldit_graph::encode_f32(values, DType::F32);
        Ok(self
            .g
            .initializer(name, DType::F32, shape, TensorData::Bytes(bytes))?)
    }

    /// `y = x W^T + b` on the last axis of `x` (any rank, `in` features), with `{prefix}.weight` `[out, in]` and
    /// optional `{prefix}.bias` `[out]`. Runs in the linear dtype; returns f32.
    pub fn linear(&mut self, x: Value, prefix: &str, out_features: usize, bias: bool) -> Result<Value> {
        let dt = self.linear_dtype;
        let in_features = self.last_dim(x);
        let w = self.weight(&format!("{prefix}.weight"), &[out_features, in_features], dt)?;
        let b = if bias {
            Some(self.weight(&format!("{prefix}.bias"), &[out_features], dt)?)
        } else {
            None
        };
        let shape = self.g.shape(x).to_vec();
        let out = self.g.shape(w)[0];
        let k = *shape.last().expect("rank >= 1");
        let rows = flatten_rows(&shape[..shape.len() - 1]);
        let mut out_shape = shape.clone();
        *out_shape.last_mut().expect("rank >= 1") = out;
        let Ctx { g, .. } = self;
        g.scoped(prefix, |g| {
            let x = g.cast(x, dt)?;
            let x2 = if shape.len() == 2 {
                x
            } else {
                g.reshape(x, &[rows, k])?
            };
            let y = g.gemm_bt(x2, w, b)?;
            let y = g.cast(y, DType::F32)?;
            if shape.len() == 2 {
                Ok(y)
            } else {
                g.reshape(y, &out_shape)
            }
        })
        .map_err(Into::into)
    }

    /// RMSNorm over the last axis in f32, times the f32 weight `key` `[features]` (spec 2.2: eps 1e-6).
    pub fn rms_norm(&mut self, x: Value, key: &str) -> Result<Value> {
        let features = self.last_dim(x);
        let w = self.weight(key, &[features], DType::F32)?;
        let eps = self.eps;
        let onnx23 = self.attention == AttentionMode::Onnx23;
        let scope = key.strip_suffix(".weight").unwrap_or(key).to_string();
        self.g
            .scoped(&scope, |g| {
                if onnx23 {
                    return g.rms_normalization(x, w, eps);
                }
                let x2 = g.mul(x, x)?;
                let ms = g.reduce_mean(x2, &[-1], true)?;
                let e = g.scalar(DType::F32, eps)?;
                let ms = g.add(ms, e)?;
                let r = g.sqrt(ms)?;
                let n = g.div(x, r)?;
                g.mul(n, w)
            })
            .map_err(Into::into)
    }

    /// `{prefix}.0` (Linear `D -> 6D`) on the conditioning `c [B, D]`, split into the six named adaLN chunks, each
    /// `[B, 1, D]` (patch blocks and both streams of an MM-DiT block).
    pub fn adaln(&mut self, c: Value, prefix: &str, d: usize) -> Result<AdaLn> {
        let b = self.g.shape(c)[0];
        let m = self.linear(c, &format!("{prefix}.0"), 6 * d, true)?;
        let chunks = self.g.scoped(prefix, |g| {
            let m = g.reshape(m, &[b, Dim::Fixed(1), Dim::Fixed(6 * d)])?;
            g.split(m, -1, &[d; 6])
        })?;
        Ok(AdaLn::from_chunks(&chunks))
    }

    /// `modulate(rms_norm(x, key), shift, scale)`: one `pixeldit.RmsNormModulate` node (scope `key` without
    /// `.weight`) with [`PixelOps::Fused`](pixeldit_spec::PixelOps::Fused), else the standard ops.
    pub fn rms_norm_modulate(&mut self, x: Value, key: &str, shift: Value, scale: Value) -> Result<Value> {
        if self.pixel_ops != pixeldit_spec::PixelOps::Fused {
            let h = self.rms_norm(x, key)?;
            return self.modulate(h, shift, scale);
        }
        let features = self.last_dim(x);
        let w = self.weight(key, &[features], DType::F32)?;
        let eps = self.eps;
        let shape = self.g.shape(x).to_vec();
        let scope = key.strip_suffix(".weight").unwrap_or(key).to_string();
        self.g
            .scoped(&scope, |g| {
                g.set_domain_version(custom_op::DOMAIN, custom_op::VERSION);
                Ok(g.add_node(
                    custom_op::RMS_NORM_MODULATE_OP_TYPE,
                    custom_op::DOMAIN,
                    &[Some(x), Some(w), Some(shift), Some(scale)],
                    vec![("epsilon", Attr::Float(eps))],
                    vec![(DType::F32, shape)],
                )?[0])
            })
            .map_err(Into::into)
    }

    /// `x * (1 + scale) + shift` with broadcasting.
    pub fn modulate(&mut self, x: Value, shift: Value, scale: Value) -> Result<Value> {
        let g = &mut self.g;
        let one = g.scalar(DType::F32, 1.0)?;
        let s1 = g.add(scale, one)?;
        let y = g.mul(x, s1)?;
        Ok(g.add(y, shift)?)
    }

    /// SwiGLU `w2(SiLU(w1 x) * w3 x)` with `hidden` features, no biases (the gate as one `pixeldit.SwiGlu` node
    /// with [`PixelOps::Fused`](pixeldit_spec::PixelOps::Fused)).
    pub fn swiglu(&mut self, x: Value, prefix: &str, hidden: usize) -> Result<Value> {
        let d = self.last_dim(x);
        let a = self.linear(x, &format!("{prefix}.w1"), hidden, false)?;
        let b = self.linear(x, &format!("{prefix}.w3"), hidden, false)?;
        let fused = self.pixel_ops == pixeldit_spec::PixelOps::Fused;
        let h = self.g.scoped(prefix, |g| {
            if fused {
                g.set_domain_version(custom_op::DOMAIN, custom_op::VERSION);
                let shape = g.shape(a).to_vec();
                return Ok(g.add_node(
                    custom_op::SWIGLU_OP_TYPE,
                    custom_op::DOMAIN,
                    &[Some(a), Some(b)],
                    vec![],
                    vec![(DType::F32, shape)],
                )?[0]);
            }
            let a = g.silu(a)?;
            g.mul(a, b)
        })?;
        self.linear(h, &format!("{prefix}.w2"), d, false)
    }

    /// Exact erf GELU `0.5 x (1 + erf(x / sqrt 2))`.
    pub fn gelu(&mut self, x: Value, scope: &str) -> Result<Value> {
        Ok(self.g.scoped(scope, |g| {
            // `x / sqrt(2)` as a Div (not a Mul by 1/sqrt 2): the pattern ONNX Runtime's GeluFusion turns into
            // one Gelu kernel (5 elementwise passes -> 1; ~6% of a B@256 forward on ORT CPU).
            let sqrt2 = g.scalar(DType::F32, std::f32::consts::SQRT_2)?;
            let half = g.scalar(DType::F32, 0.5)?;
            let one = g.scalar(DType::F32, 1.0)?;
            let z = g.div(x, sqrt2)?;
            let e = g.erf(z)?;
            let e1 = g.add(e, one)?;
            let hx = g.mul(x, half)?;
            g.mul(hx, e1)
        })?)
    }

    /// The 2D RoPE tables `[S, dh/2]` (`[S, 1, dh/2, 1]` for the decomposed lowering) of `grid`: named constants for
    /// a fixed grid; for a dynamic one computed in the graph from the grid symbols, in f64 as
    /// [`custom_op::rope_2d_tables`] does (positions `16 i / max(n - 1, 1)` per axis), then cast to f32.
    pub fn rope_2d(&mut self, grid: Grid, dh: usize, theta: f64) -> Result<(Value, Value)> {
        let decomposed = self.attention == AttentionMode::Decomposed;
        if let Some((hs, ws)) = grid.sizes() {
            let s = hs * ws;
            let (cos, sin) = custom_op::rope_2d_tables(hs, ws, dh, theta);
            let table_shape = if decomposed {
                vec![s, 1, dh / 2, 1]
            } else {
                vec![s, dh / 2]
            };
            let cos = self.table(
                &format!("pixeldit.rope2d.{hs}x{ws}.d{dh}.cos"),
                table_shape.clone(),
                &cos,
            )?;
            let sin = self.table(&format!("pixeldit.rope2d.{hs}x{ws}.d{dh}.sin"), table_shape, &sin)?;
            return Ok((cos, sin));
        }
        if let Some(t) = self.rope_tables.get(&(dh, decomposed)) {
            return Ok(*t);
        }
        let half = dh / 2;
        // Pair j turns by x * f_{j/2} (j even) or y * f_{(j-1)/2} (j odd): one factor table per axis, zero on the
        // other axis's pairs, so `x * fx + y * fy` is exact.
        let freqs: Vec<f64> = (0..dh / 4)
            .map(|k| theta.powf(-(4.0 * k as f64) / dh as f64))
            .collect();
        let fx: Vec<f64> = (0..half)
            .map(|j| if j % 2 == 0 { freqs[j / 2] } else { 0.0 })
            .collect();
        let fy: Vec<f64> = (0..half)
            .map(|j| if j % 2 == 1 { freqs[j / 2] } else { 0.0 })
            .collect();
        let tokens = grid.tokens();
        let t = self.g.scoped(&format!("pixeldit.rope2d.d{dh}"), |g| {
            let xs = grid_positions(g, grid.cols)?;
            let ys = grid_positions(g, grid.rows)?;
            let xs = g.reshape(xs, &[Dim::Fixed(1), grid.cols, Dim::Fixed(1)])?;
            let ys = g.reshape(ys, &[grid.rows, Dim::Fixed(1), Dim::Fixed(1)])?;
            let fx = const_f64(g, &[half], &fx)?;
            let fy = const_f64(g, &[half], &fy)?;
            let ax = g.mul(xs, fx)?;
            let ay = g.mul(ys, fy)?;
            let angle = g.add(ax, ay)?;
            let shape = if decomposed {
                vec![tokens, Dim::Fixed(1), Dim::Fixed(half), Dim::Fixed(1)]
            } else {
                vec![tokens, Dim::Fixed(half)]
            };
            let angle = g.reshape(angle, &shape)?;
            let c = g.cos(angle)?;
            let s = g.sin(angle)?;
            Ok((g.cast(c, DType::F32)?, g.cast(s, DType::F32)?))
        })?;
        self.rope_tables.insert((dh, decomposed), t);
        Ok(t)
    }

    /// `RotaryAttention` of the official code: qkv Linear (no bias), QK-RMSNorm, 2D RoPE on the token `grid`,
    /// SDPA, output projection. `x` is `[B, S, width]`.
    pub fn rotary_attention(
        &mut self,
        x: Value,
        prefix: &str,
        heads: usize,
        grid: Grid,
        theta: f64,
    ) -> Result<Value> {
        let shape = self.g.shape(x).to_vec();
        let width = shape[2].fixed().expect("fixed width");
        let dh = width / heads;
        let s = grid.tokens();
        let qkv = self.linear(x, &format!("{prefix}.qkv"), 3 * width, false)?;
        let qn = self.weight(&format!("{prefix}.q_norm.weight"), &[dh], DType::F32)?;
        let kn = self.weight(&format!("{prefix}.k_norm.weight"), &[dh], DType::F32)?;
        let (cos, sin) = self.rope_2d(grid, dh, theta)?;
        let scale = 1.0 / (dh as f32).sqrt();
        let eps = self.eps;
        let o = match self.attention {
            AttentionMode::Custom => self.g.scoped(prefix, |g| {
                g.set_domain_version(custom_op::DOMAIN, custom_op::VERSION);
                let attrs = vec![
                    ("num_heads", Attr::Int(heads as i64)),
                    ("epsilon", Attr::Float(eps)),
                    ("scale", Attr::Float(scale)),
                ];
                let ins = [Some(qkv), Some(qn), Some(kn), Some(cos), Some(sin)];
                let out = vec![(DType::F32, vec![shape[0], shape[1], Dim::Fixed(width)])];
                Ok(g.add_node(custom_op::OP_TYPE, custom_op::DOMAIN, &ins, attrs, out)?[0])
            })?,
            AttentionMode::Decomposed | AttentionMode::Onnx23 => {
                let (q, k, v) = self.g.scoped(prefix, |g| split_heads(g, qkv, heads, dh))?;
                let q = self.rms_norm(q, &format!("{prefix}.q_norm.weight"))?;
                let k = self.rms_norm(k, &format!("{prefix}.k_norm.weight"))?;
                let pos = if self.attention == AttentionMode::Onnx23 {
                    Some(self.position_ids(qkv, s)?)
                } else {
                    None
                };
                self.g.scoped(prefix, |g| {
                    let onnx23 = pos.is_some();
                    let (q, k, v) = rotate_heads_first(g, (q, k, v), cos, sin, pos, dh)?;
                    let o = if onnx23 {
                        g.attention(q, k, v, scale)?
                    } else {
                        let kt = g.transpose(k, &[0, 1, 3, 2])?;
                        let sc = g.matmul(q, kt)?;
                        let sv = g.scalar(DType::F32, scale)?;
                        let sc = g.mul(sc, sv)?;
                        let p = g.softmax(sc, -1)?;
                        g.matmul(p, v)?
                    };
                    let o = g.transpose(o, &[0, 2, 1, 3])?;
                    g.reshape(o, &[shape[0], s, Dim::Fixed(width)])
                })?
            }
        };
        self.linear(o, &format!("{prefix}.proj"), width, true)
    }

    /// Forgets the shared position-id and RoPE tensors, so that later attentions compute their own (the pixel
    /// level of a patch-level split must not depend on a patch-level tensor through them).
    pub(crate) fn forget_position_ids(&mut self) {
        self.position_ids.clear();
        self.rope_tables.clear();
    }

    /// Position ids `[B, S]` (0..S per row) for opset-23 `RotaryEmbedding`, built once per S (a dynamic S is
    /// a `Range` over the grid's token count).
    pub(crate) fn position_ids(&mut self, like: Value, s: Dim) -> Result<Value> {
        if let Some(v) = self.position_ids.get(&s) {
            return Ok(*v);
        }
        let batch = self.g.shape(like)[0];
        let Some(s) = s.fixed() else {
            let v = self.g.scoped("pixeldit.position_ids_dynamic", |g| {
                let n = g.dim_value(s)?;
                let n = g.reshape(n, &[])?;
                let zero = g.constant(DType::I64, vec![], 0i64.to_le_bytes().to_vec())?;
                let one = g.constant(DType::I64, vec![], 1i64.to_le_bytes().to_vec())?;
                let ids = g.range(zero, n, one, s)?;
                let ids = g.unsqueeze(ids, &[0])?;
                let target = g.shape_value(&[batch, s], None)?;
                g.expand(ids, target, vec![batch, s])
            })?;
            self.position_ids.insert(s, v);
            return Ok(v);
        };
        let v = self.g.scoped(&format!("pixeldit.position_ids_{s}"), |g| {
            let ids: Vec<u8> = (0..s as i64).flat_map(|i| i.to_le_bytes()).collect();
            let base = g.constant(DType::I64, vec![1, s], ids)?;
            let shp = g.shape_of(like)?;
            let zero = g.const_i64(&[0])?;
            let b = g.gather(shp, zero, 0)?;
            let sv = g.const_i64(&[s as i64])?;
            let target = g.concat(&[b, sv], 0)?;
            g.expand(base, target, vec![batch, Dim::Fixed(s)])
        })?;
        self.position_ids.insert(Dim::Fixed(s), v);
        Ok(v)
    }
}

/// An f64 constant.
pub(crate) fn const_f64(g: &mut Graph, shape: &[usize], values: &[f64]) -> pixeldit_graph::Result<Value> {
    let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    g.constant(DType::F64, shape.to_vec(), bytes)
}

/// The f64 scalar value of a dynamic dim.
pub(crate) fn dim_f64(g: &mut Graph, d: Dim) -> pixeldit_graph::Result<Value> {
    let n = g.dim_value(d)?;
    let n = g.reshape(n, &[])?;
    g.cast(n, DType::F64)
}

/// `0, 1, .., n-1` as f64 for a dynamic length `n`.
pub(crate) fn arange_f64(g: &mut Graph, n: Dim) -> pixeldit_graph::Result<Value> {
    let end = dim_f64(g, n)?;
    let zero = const_f64(g, &[], &[0.0])?;
    let one = const_f64(g, &[], &[1.0])?;
    g.range(zero, end, one, n)
}

/// The RoPE positions of a grid axis of `n` tokens, `16 i / max(n - 1, 1)` in f64 (`linspace(0, 16, n)` of the
/// official code; a single token sits at 0, as [`custom_op::rope_2d_tables`] has it).
fn grid_positions(g: &mut Graph, n: Dim) -> pixeldit_graph::Result<Value> {
    let idx = arange_f64(g, n)?;
    let end = dim_f64(g, n)?;
    let one = const_f64(g, &[], &[1.0])?;
    let span = const_f64(g, &[], &[16.0])?;
    let steps = g.sub(end, one)?;
    let steps = g.max(steps, one)?;
    let scaled = g.mul(span, idx)?;
    g.div(scaled, steps)
}

/// The row count of a flattened prefix shape (the product of its dims).
pub fn flatten_rows(prefix: &[Dim]) -> Dim {
    prefix.iter().fold(Dim::Fixed(1), |acc, d| acc.times(*d))
}

/// `[B,S,3*H*Dh]` -> q, k, v each `[B,S,H,Dh]` (tokens first; [`heads_first`] turns them into `[B,H,S,Dh]`).
pub(crate) fn split_heads(
    g: &mut Graph,
    qkv: Value,
    heads: usize,
    dh: usize,
) -> pixeldit_graph::Result<(Value, Value, Value)> {
    let sh = g.shape(qkv).to_vec();
    let r = g.reshape(
        qkv,
        &[sh[0], sh[1], Dim::Fixed(3), Dim::Fixed(heads), Dim::Fixed(dh)],
    )?;
    let parts = g.split(r, 2, &[1, 1, 1])?;
    let bshd = [sh[0], sh[1], Dim::Fixed(heads), Dim::Fixed(dh)];
    let q = g.reshape(parts[0], &bshd)?;
    let k = g.reshape(parts[1], &bshd)?;
    let v = g.reshape(parts[2], &bshd)?;
    Ok((q, k, v))
}

/// `[B,S,H,Dh]` -> `[B,H,S,Dh]`.
pub(crate) fn heads_first(g: &mut Graph, x: Value) -> pixeldit_graph::Result<Value> {
    g.transpose(x, &[0, 2, 1, 3])
}

/// q, k, v `[B,S,H,Dh]` -> `[B,H,S,Dh]` with q and k rotated: by `RotaryEmbedding` at positions `pos` after the
/// heads transpose (onnx23), or by [`rope_decomposed`] before it (`pos` is `None`).
pub(crate) fn rotate_heads_first(
    g: &mut Graph,
    (q, k, v): (Value, Value, Value),
    cos: Value,
    sin: Value,
    pos: Option<Value>,
    dh: usize,
) -> pixeldit_graph::Result<(Value, Value, Value)> {
    let v = heads_first(g, v)?;
    Ok(match pos {
        Some(pos) => {
            let (q, k) = (heads_first(g, q)?, heads_first(g, k)?);
            (
                g.rotary_embedding(q, cos, sin, pos)?,
                g.rotary_embedding(k, cos, sin, pos)?,
                v,
            )
        }
        None => {
            let q = rope_decomposed(g, q, cos, sin, dh)?;
            let k = rope_decomposed(g, k, cos, sin, dh)?;
            (heads_first(g, q)?, heads_first(g, k)?, v)
        }
    })
}

/// Adjacent-pair RoPE on tokens-first `[B,S,H,Dh]` with tables `[S, 1, Dh/2, 1]`. (Rotating after the heads
/// transpose, `[B,H,S,Dh]` with `[S, Dh/2, 1]` tables, is the same math, but OpenVINO 2026.4's CPU plugin fuses that
/// form into wrong attention when S equals H: `tools/bench/openvino_rope_bug.py`.)
pub(crate) fn rope_decomposed(
    g: &mut Graph,
    x: Value,
    cos: Value,
    sin: Value,
    dh: usize,
) -> pixeldit_graph::Result<Value> {
    let sh = g.shape(x).to_vec();
    let pairs = g.reshape(x, &[sh[0], sh[1], sh[2], Dim::Fixed(dh / 2), Dim::Fixed(2)])?;
    let ab = g.split(pairs, -1, &[1, 1])?;
    let (a, b) = (ab[0], ab[1]);
    let ac = g.mul(a, cos)?;
    let bs = g.mul(b, sin)?;
    let re = g.sub(ac, bs)?;
    let as_ = g.mul(a, sin)?;
    let bc = g.mul(b, cos)?;
    let im = g.add(as_, bc)?;
    let out = g.concat(&[re, im], -1)?;
    g.reshape(out, &sh)
}
