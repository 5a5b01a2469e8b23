//! Times the `pixeldit.RotaryAttention` CPU kernel alone at a model's shape (default: B @256, batch 2:
//! S = 256 tokens, 12 heads of 64) and prints ms per call and GFLOP/s of the attention core (4*S^2*C per image).
//! `cargo run --release -p pixeldit-runtime --example attn_bench -- [batch seq heads head_dim runs]`; set
//! `PIXELDIT_BENCH_MATMUL=bf16` for the bf16-operand kernel (`matmul_precision = "bf16"`).
use pixeldit_runtime::ops::rotary_attention::{rotary_attention, RotaryAttentionInputs};
use pixeldit_runtime::ops::{AttentionParams, MatmulPrecision, Threads};
use std::time::Instant;

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("integer"))
        .collect();
    let g = |i: usize, d: usize| a.get(i).copied().unwrap_or(d);
    let (b, s, h, dh, runs) = (g(0, 2), g(1, 256), g(2, 12), g(3, 64), g(4, 20));
    let mut x = 1u32;
    let mut rnd = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    };
    let (qkv, qw, kw, cos, sin) = (
        rnd(b * s * 3 * h * dh),
        rnd(dh),
        rnd(dh),
        rnd(s * dh / 2),
        rnd(s * dh / 2),
    );
    let inp = RotaryAttentionInputs {
        qkv: &qkv,
        batch: b,
        seq: s,
        q_norm_weight: &qw,
        k_norm_weight: &kw,
        cos: &cos,
        sin: &sin,
    };
    let p = AttentionParams {
        num_heads: h,
        epsilon: 1e-6,
        scale: 1.0 / (dh as f32).sqrt(),
        matmul: std::env::var("PIXELDIT_BENCH_MATMUL")
            .ok()
            .map(|v| MatmulPrecision::parse(&v).expect("PIXELDIT_BENCH_MATMUL: f32 or bf16"))
            .unwrap_or_default(),
    };
    let mut out = vec![0f32; inp.output_len(&p)];
    rotary_attention(&inp, &p, Threads::Own, &mut out).unwrap();
    let mut ms: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            rotary_attention(&inp, &p, Threads::Own, &mut out).unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let flops = 4.0 * (b * s * s * h * dh) as f64;
    println!(
        "rotary_attention ({:?}) b{b} s{s} h{h} dh{dh}: median {:.2} ms, min {:.2} ms, {:.1} GFLOP/s (min), checksum {:.4}",
        p.matmul,
        ms[ms.len() / 2],
        ms[0],
        flops / ms[0] / 1e6,
        out.iter().sum::<f32>()
    );
}
