//! Criterion benches of the fast path's fused kernels, forward and backward separately, at the
//! shapes of nanoGPT's shakespeare_char GPU preset run on CPU (`configs/bench-gpt-384.toml`:
//! B = 8, T = 256, C = 384, 6 heads, so N = B·T = 2048 rows) unless a bench says otherwise.
//!
//! Threads come from rayon's global pool; compare runs at a fixed count:
//! `RAYON_NUM_THREADS=2 cargo bench --bench kernels [-- FILTER]`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use decodex::kernels as llama_kernels;
use decodex::kernels::Precision;
use decodex::kernels::{self, AttShape, Norm, NormIn, NormOut, Op};
use decodex::models::gpt::fast::FastGpt;
use decodex::models::gpt::GptConfig;
use decodex::train::optim::AdamW;

const B: usize = 8;
const T: usize = 256;
const C: usize = 384;
const N: usize = B * T;

/// Deterministic values in [−0.5, 0.5), different for each `seed`.
fn data(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn ids(len: usize, v: usize, seed: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((i * 31 + seed * 17) % v) as u32)
        .collect()
}

fn layernorm(c: &mut Criterion) {
    let (w, b) = (data(C, 1), data(C, 2));
    let nm = Norm {
        w: &w,
        b: Some(&b),
        eps: 1e-5,
    };
    let mut x = data(N * C, 3);
    let (mut out, mut mean, mut rstd) = (vec![0f32; N * C], vec![0f32; N], vec![0f32; N]);
    let mut g = c.benchmark_group("layernorm");
    g.bench_function("forward", |bch| {
        bch.iter(|| {
            let o = NormOut {
                out: &mut out,
                mean: &mut mean,
                rstd: &mut rstd,
            };
            kernels::layernorm_forward(o, &mut x, None, nm)
        })
    });
    let (dout, mut dinp) = (data(N * C, 4), vec![0f32; N * C]);
    let (mut dw, mut db) = (vec![0f32; C], vec![0f32; C]);
    let s = NormIn {
        x: &x,
        mean: &mean,
        rstd: &rstd,
    };
    g.bench_function("backward", |bch| {
        bch.iter(|| {
            kernels::layernorm_backward(&mut dinp, &mut dw, Some(&mut db), &dout, s, &w, false)
        })
    });
    g.finish();
}

/// The MLP's c_fc bias and GELU (N, 4C); the backward is the multiplication by the saved gelu′.
fn gelu(c: &mut Criterion) {
    let oc = 4 * C;
    let bias = data(oc, 5);
    let (mut out, mut d) = (vec![0f32; N * oc], data(N * oc, 6));
    let mut g = c.benchmark_group("gelu");
    for (name, exact) in [("tanh", false), ("erf", true)] {
        // The forward replaces h by gelu′(h + bias); reset it so every iteration sees the same
        // input distribution.
        let h0 = data(N * oc, 7);
        let mut h = h0.clone();
        g.bench_function(BenchmarkId::new("forward", name), |bch| {
            bch.iter(|| {
                h.copy_from_slice(&h0);
                kernels::bias_gelu_forward(&mut h, &mut out, Some(&bias), oc, exact)
            })
        });
    }
    let grad = data(N * oc, 8);
    g.bench_function("backward", |bch| {
        bch.iter(|| kernels::mul_assign(&mut d, &grad))
    });
    g.finish();
}

fn attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("attention");
    // nanoGPT's CPU char preset (B 12, T 64, 4 heads of 32) and the 384 preset.
    for (name, s) in [
        (
            "char",
            AttShape {
                b: 12,
                t: 64,
                c: 128,
                nh: 4,
            },
        ),
        (
            "384",
            AttShape {
                b: B,
                t: T,
                c: C,
                nh: 6,
            },
        ),
    ] {
        let (n, c3) = (s.b * s.t, 3 * s.c);
        for prec in [Precision::F32, Precision::Bf16] {
            if prec == Precision::Bf16 && !Precision::bf16_supported() {
                continue;
            }
            let name = format!("{name}-{prec:?}");
            let mut qkv = data(n * c3, 9);
            let (mut out, mut lse) = (vec![0f32; n * s.c], vec![0f32; s.b * s.nh * s.t]);
            g.bench_function(BenchmarkId::new("forward", &name), |bch| {
                bch.iter(|| kernels::attention_forward(&mut out, &mut lse, &mut qkv, None, s, prec))
            });
            let (dout, mut dqkv) = (data(n * s.c, 10), vec![0f32; n * c3]);
            g.bench_function(BenchmarkId::new("backward", &name), |bch| {
                bch.iter(|| {
                    kernels::attention_backward(&mut dqkv, &dout, &qkv, &out, &lse, s, prec)
                })
            });
        }
    }
    g.finish();
}

fn cross_entropy(c: &mut Criterion) {
    let mut g = c.benchmark_group("cross_entropy");
    for v in [65, 8192] {
        let (logits, targets) = (data(N * v, 11), ids(N, v, 1));
        let (mut lse, mut dlogits) = (vec![0f32; N], vec![0f32; N * v]);
        g.bench_function(BenchmarkId::new("forward", v), |bch| {
            bch.iter(|| kernels::cross_entropy_forward(&logits, &mut lse, &targets, v))
        });
        let s = 1.0 / N as f32;
        g.bench_function(BenchmarkId::new("backward", v), |bch| {
            bch.iter(|| kernels::cross_entropy_backward(&mut dlogits, &logits, &lse, &targets, s))
        });
    }
    g.finish();
}

/// Token and position embeddings, V = 65.
fn embedding(c: &mut Criterion) {
    let v = 65;
    let (wte, wpe, idx) = (data(v * C, 12), data(T * C, 13), ids(N, v, 2));
    let mut out = vec![0f32; N * C];
    let mut g = c.benchmark_group("embedding");
    g.bench_function("forward", |bch| {
        bch.iter(|| kernels::encoder_forward(&mut out, &idx, &wte, &wpe, T))
    });
    let (mut dwte, mut dwpe) = (vec![0f32; v * C], vec![0f32; T * C]);
    g.bench_function("backward", |bch| {
        bch.iter(|| kernels::encoder_backward(&mut dwte, &mut dwpe, &out, &idx, T))
    });
    g.finish();
}

fn rmsnorm(c: &mut Criterion) {
    let (x, w) = (data(N * C, 14), data(C, 15));
    let (mut out, mut rstd) = (vec![0f32; N * C], vec![0f32; N]);
    let mut g = c.benchmark_group("rmsnorm");
    g.bench_function("forward", |bch| {
        bch.iter(|| llama_kernels::rmsnorm_forward(&mut out, &mut rstd, &x, &w, 1e-6, C))
    });
    let (dout, mut dinp, mut dw) = (data(N * C, 16), vec![0f32; N * C], vec![0f32; C]);
    g.bench_function("backward", |bch| {
        bch.iter(|| llama_kernels::rmsnorm_backward(&mut dinp, &mut dw, &dout, &x, &w, &rstd, C))
    });
    g.finish();
}

/// SwiGLU over (N, 4C).
fn swiglu(c: &mut Criterion) {
    let len = N * 4 * C;
    let (gate, up, dout) = (data(len, 17), data(len, 18), data(len, 19));
    let mut out = vec![0f32; len];
    let mut g = c.benchmark_group("swiglu");
    g.bench_function("forward", |bch| {
        bch.iter(|| llama_kernels::swiglu_forward(&mut out, &gate, &up))
    });
    let (mut dgate, mut dup) = (vec![0f32; len], vec![0f32; len]);
    g.bench_function("backward", |bch| {
        bch.iter(|| llama_kernels::swiglu_backward(&mut dgate, &mut dup, &dout, &gate, &up))
    });
    g.finish();
}

/// One AdamW step over 10M parameters, all of them decayed.
fn adamw(c: &mut Criterion) {
    let n = 10_000_000;
    let (mut params, grads) = (data(n, 20), data(n, 21));
    let mut opt = AdamW::new(n, 0.9, 0.99, 1e-8, 0.1, vec![(0, n)]);
    c.benchmark_group("adamw")
        .bench_function("update_10M", |bch| {
            bch.iter(|| opt.update(&mut params, &grads, 1e-3))
        });
}

/// The linear layers' matmuls of the 384-wide model, forward and backward, in f32 and (on a CPU
/// with AVX512-BF16; the software emulation is not worth timing) bf16:
/// (m, n, k, A transposed, B transposed).
fn matmul(c: &mut Criterion) {
    let shapes = [
        (N, 3 * C, C, false, false),
        (N, C, C, false, false),
        (N, 4 * C, C, false, false),
        (N, C, 4 * C, false, false),
        (N, C, 4 * C, false, true),
        (C, 3 * C, N, true, false),
        (4 * C, C, N, true, false),
        (N, 65, C, false, true),
    ];
    let mut precisions = vec![("f32", Precision::F32)];
    if Precision::bf16_supported() {
        precisions.push(("bf16", Precision::Bf16));
    } else {
        eprintln!("matmul: no AVX512-BF16 on this CPU, bf16 not measured");
    }
    let mut g = c.benchmark_group("matmul");
    for (m, n, k, ta, tb) in shapes {
        let (a, b) = (data(m * k, 22), data(k * n, 23));
        let mut out = vec![0f32; m * n];
        g.throughput(criterion::Throughput::Elements((2 * m * n * k) as u64));
        for &(name, prec) in &precisions {
            let id = format!(
                "{name}/{m}x{n}x{k}{}{}",
                if ta { "_ta" } else { "" },
                if tb { "_tb" } else { "" }
            );
            g.bench_function(id, |bch| {
                bch.iter(|| {
                    let (oa, ob) = (
                        if ta { Op::T(&a) } else { Op::N(&a) },
                        if tb { Op::T(&b) } else { Op::N(&b) },
                    );
                    kernels::matmul_with(prec, (m, n, k), &mut out, false, oa, ob, 1.0)
                })
            });
        }
    }
}

/// One training step (forward + backward) of the fast path: nanoGPT's CPU preset (4 layers,
/// 128 wide, B 12, T 64) and the 384-wide GPU preset (6 layers, B 8, T 256).
fn train_step(c: &mut Criterion) {
    let mut g = c.benchmark_group("train_step");
    for (name, (n_layer, n_head, n_embd), (b, t)) in [
        ("char_preset", (4, 4, 128), (12, 64)),
        ("gpt_384", (6, 6, 384), (8, 256)),
    ] {
        let cfg = GptConfig {
            vocab_size: 65,
            block_size: t,
            n_layer,
            n_head,
            n_embd,
            dropout: 0.0,
            bias: true,
            activation: decodex::models::gpt::Activation::GeluNew,
            layer_norm_epsilon: 1e-5,
        };
        let mut m = FastGpt::new(cfg, b, t).unwrap();
        m.params.data = data(m.params.data.len(), 30)
            .iter()
            .map(|x| 0.04 * x)
            .collect();
        let (x, y) = (ids(b * t, 65, 1), ids(b * t, 65, 2));
        g.throughput(criterion::Throughput::Elements((b * t) as u64));
        g.bench_function(name, |bch| {
            bch.iter(|| {
                m.zero_grad();
                let loss = m.forward(&x, &y, b, t);
                m.backward(1.0);
                loss
            })
        });
    }
}

criterion_group! {
    name = benches;
    // No plots: with plotters' `ab_glyph` feature (enabled by decodex) criterion's SVG charts
    // find no registered font and panic.
    config = Criterion::default()
        .without_plots()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = layernorm, gelu, attention, cross_entropy, embedding, rmsnorm, swiglu, adamw, matmul,
        train_step
}
criterion_main!(benches);
