//! `pixeldit.RotaryAttention` in ONNX Runtime and tract against the same math built from ONNX primitives and
//! against the naive f64 kernel (fixtures `rotary_attention_{custom,primitives}.onnx`: H=2, Dh=8, S=6). Batch
//! 8192 is large enough (B*H*S*S*Dh >= 2^22) for the kernel to run its heads in parallel: on its own threads in
//! tract, on the session's intra-op pool in ONNX Runtime.

use crate::util::*;
use ndarray::{ArrayD, IxDyn};
use pixeldit_runtime::backend::tract::TractBackend;
use pixeldit_runtime::ops::rotary_attention::{rotary_attention_naive, RotaryAttentionInputs};
use pixeldit_runtime::ops::AttentionParams;
use pixeldit_runtime::Backend;
use rand::{Rng, SeedableRng};

const H: usize = 2;
const DH: usize = 8;
const S: usize = 6;

fn inputs(batch: usize) -> Vec<ArrayD<f32>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut r = |shape: &[usize]| {
        let n = shape.iter().product();
        ArrayD::from_shape_vec(
            IxDyn(shape),
            (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect(),
        )
        .unwrap()
    };
    let qkv = r(&[batch, S, 3 * H * DH]);
    let (qw, kw) = (r(&[DH]), r(&[DH]));
    let (cos, sin) = pixeldit_spec::custom_op::rope_2d_tables(2, 3, DH, 10000.0);
    let table = |v: Vec<f32>| ArrayD::from_shape_vec(IxDyn(&[S, DH / 2]), v).unwrap();
    vec![qkv, qw, kw, table(cos), table(sin)]
}

fn naive(inp: &[ArrayD<f32>]) -> Vec<f32> {
    let s = |i: usize| inp[i].as_slice().unwrap();
    let i = RotaryAttentionInputs {
        qkv: s(0),
        batch: inp[0].shape()[0],
        seq: S,
        q_norm_weight: s(1),
        k_norm_weight: s(2),
        cos: s(3),
        sin: s(4),
    };
    rotary_attention_naive(
        &i,
        &AttentionParams {
            num_heads: H,
            epsilon: 1e-6,
            scale: 1.0 / (DH as f32).sqrt(),
            matmul: pixeldit_runtime::ops::MatmulPrecision::F32,
        },
    )
}

fn check(name: &str, got: &ArrayD<f32>, want: &[f32], batch: usize) {
    assert_eq!(got.shape(), &[batch, S, H * DH], "{name}");
    let d = max_abs_diff(got.as_slice().unwrap(), want);
    assert!(d < 1e-5, "{name}: max abs diff {d} vs naive");
}

#[test]
fn tract_custom_op_matches_primitives_and_naive() {
    for batch in [1, 3, 8192] {
        let inp = inputs(batch);
        let views: Vec<_> = inp.iter().map(|a| a.view()).collect();
        let want = naive(&inp);
        let custom = TractBackend::open(&fixture("rotary_attention_custom.onnx"))
            .unwrap()
            .run_f32(&views)
            .unwrap();
        let prim = TractBackend::open(&fixture("rotary_attention_primitives.onnx"))
            .unwrap()
            .run_f32(&views)
            .unwrap();
        check("tract custom", &custom[0], &want, batch);
        check("tract primitives", &prim[0], &want, batch);
    }
}

#[test]
fn ort_custom_op_matches_primitives_and_naive() {
    use pixeldit_runtime::backend::ort::{OrtBackend, OrtOptions};
    let Some(lib) = need_ort("ort_custom_op_matches_primitives_and_naive") else {
        return;
    };
    let opts = OrtOptions {
        library: Some(lib),
        threads: Some(2),
        ..Default::default()
    };
    for batch in [1, 3, 8192] {
        let inp = inputs(batch);
        let views: Vec<_> = inp.iter().map(|a| a.view()).collect();
        let want = naive(&inp);
        let custom = OrtBackend::with_options(&fixture("rotary_attention_custom.onnx"), &opts)
            .unwrap()
            .run_f32(&views)
            .unwrap();
        let prim = OrtBackend::with_options(&fixture("rotary_attention_primitives.onnx"), &opts)
            .unwrap()
            .run_f32(&views)
            .unwrap();
        check("ort custom", &custom[0], &want, batch);
        check("ort primitives", &prim[0], &want, batch);
    }
    assert_eq!(
        pixeldit_runtime::ops::attention_core::host_pool_misses(),
        0,
        "ONNX Runtime's parallel-for left attention heads to the calling thread"
    );
}

/// Two sessions that share the environment's CPU arena (`shared_cpu_arena`, what the patch-level step cache's two
/// models use), run in turns, give the results of sessions with their own arenas, bit for bit.
#[test]
fn ort_sessions_sharing_one_cpu_arena_match_private_ones() {
    use pixeldit_runtime::backend::ort::{OrtBackend, OrtOptions};
    let Some(lib) = need_ort("ort_sessions_sharing_one_cpu_arena_match_private_ones") else {
        return;
    };
    let private = OrtOptions {
        library: Some(lib),
        threads: Some(2),
        ..Default::default()
    };
    let shared = OrtOptions {
        shared_cpu_arena: true,
        ..private.clone()
    };
    let load = |name: &str, opts: &OrtOptions| OrtBackend::with_options(&fixture(name), opts).unwrap();
    let (custom, prim) = ("rotary_attention_custom.onnx", "rotary_attention_primitives.onnx");
    let (mut a, mut b) = (load(custom, &shared), load(prim, &shared));
    let (mut want_a, mut want_b) = (load(custom, &private), load(prim, &private));
    for batch in [8192, 3, 8192] {
        let inp = inputs(batch);
        let views: Vec<_> = inp.iter().map(|a| a.view()).collect();
        for (name, got, want) in [(custom, &mut a, &mut want_a), (prim, &mut b, &mut want_b)] {
            let got = got.run_f32(&views).unwrap();
            let want = want.run_f32(&views).unwrap();
            assert!(
                got[0] == want[0],
                "{name}, batch {batch}: shared-arena output differs"
            );
        }
    }
}
