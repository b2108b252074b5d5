//! RMSNorm and SwiGLU against candle's f64 autograd and central differences.

use super::*;
use candle_core::{Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn uniform(n: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(lo..hi)).collect()
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Largest |a − b| relative to the largest |b| (at least 1).
fn rel_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1f64, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(b)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max);
    diff / scale
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// Unfused RMSNorm in candle f64, as `LlamaRMSNorm`: x · rsqrt(mean(x²) + eps) · w. Returns
/// (y, dL/dx, dL/dw) for L = Σ y ⊙ dout, through candle's autograd.
fn candle_rmsnorm(
    x: &[f32],
    w: &[f32],
    dout: &[f32],
    eps: f64,
    c: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let dev = Device::Cpu;
    let n = x.len() / c;
    let xv = Var::from_vec(f64s(x), (n, c), &dev).unwrap();
    let wv = Var::from_vec(f64s(w), c, &dev).unwrap();
    let d = Tensor::from_vec(f64s(dout), (n, c), &dev).unwrap();
    let ms = xv.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    let r = (ms + eps).unwrap().sqrt().unwrap().recip().unwrap();
    let y = xv.broadcast_mul(&r).unwrap().broadcast_mul(&wv).unwrap();
    let grads = (&y * &d).unwrap().sum_all().unwrap().backward().unwrap();
    let g = |v: &Var| flat(grads.get(v.as_tensor()).unwrap());
    (flat(&y), g(&xv), g(&wv))
}

/// Unfused SwiGLU in candle f64, silu(g) = g / (1 + e^(−g)): (out, dL/dgate, dL/dup) for
/// L = Σ out ⊙ dout.
fn candle_swiglu(gate: &[f32], up: &[f32], dout: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let dev = Device::Cpu;
    let n = gate.len();
    let g = Var::from_vec(f64s(gate), n, &dev).unwrap();
    let u = Var::from_vec(f64s(up), n, &dev).unwrap();
    let d = Tensor::from_vec(f64s(dout), n, &dev).unwrap();
    let sig = (g.neg().unwrap().exp().unwrap() + 1.0)
        .unwrap()
        .recip()
        .unwrap();
    let out = ((g.as_tensor() * &sig).unwrap() * u.as_tensor()).unwrap();
    let grads = (&out * &d).unwrap().sum_all().unwrap().backward().unwrap();
    let gr = |v: &Var| flat(grads.get(v.as_tensor()).unwrap());
    (flat(&out), gr(&g), gr(&u))
}

/// Plain f64 Σ dout ⊙ rmsnorm(x, w), for central differences.
fn rmsnorm_loss_f64(x: &[f64], w: &[f64], dout: &[f64], eps: f64, c: usize) -> f64 {
    let mut loss = 0.0;
    for (row, d) in x.chunks(c).zip(dout.chunks(c)) {
        let r = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / c as f64 + eps).sqrt();
        loss += (0..c).map(|j| row[j] * r * w[j] * d[j]).sum::<f64>();
    }
    loss
}

fn swiglu_f64(g: f64, u: f64) -> f64 {
    g / (1.0 + (-g).exp()) * u
}

// C = 37: no multiple of the 16-lane loops; N = 300 rows: several rayon tasks.
const N: usize = 300;
const C: usize = 37;
const EPS: f32 = 1e-6;

fn rmsnorm_case() -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    (
        uniform(N * C, -2.0, 2.0, 1),
        uniform(C, 0.5, 1.5, 2),
        uniform(N * C, -1.0, 1.0, 3),
    )
}

fn run_rmsnorm(x: &[f32], w: &[f32], dout: &[f32]) -> [Vec<f32>; 3] {
    let (mut y, mut rstd) = (vec![0f32; N * C], vec![0f32; N]);
    rmsnorm_forward(&mut y, &mut rstd, x, w, EPS, C);
    // dweight accumulates: start from ones and subtract them afterwards.
    let (mut dx, mut dw) = (vec![f32::NAN; N * C], vec![1f32; C]);
    rmsnorm_backward(&mut dx, &mut dw, dout, x, w, &rstd, C);
    dw.iter_mut().for_each(|v| *v -= 1.0);
    [y, dx, dw]
}

#[test]
fn rmsnorm_matches_candle_f64_autograd() {
    let (x, w, dout) = rmsnorm_case();
    let [y, dx, dw] = run_rmsnorm(&x, &w, &dout);
    let (ry, rdx, rdw) = candle_rmsnorm(&x, &w, &dout, EPS as f64, C);
    for (name, got, want, tol) in [
        ("out", &y, &ry, 1e-6),
        ("dinp", &dx, &rdx, 1e-6),
        ("dweight", &dw, &rdw, 1e-5),
    ] {
        let d = rel_diff(got, want);
        println!("TENSOR OK rmsnorm {name} maxdiff {d:.2e}");
        assert!(d < tol, "rmsnorm {name}: relative difference {d:e}");
    }
}

#[test]
fn rmsnorm_grads_match_f64_central_differences() {
    let (x, w, dout) = rmsnorm_case();
    let [_, dx, dw] = run_rmsnorm(&x, &w, &dout);
    let (x, w, d) = (f64s(&x), f64s(&w), f64s(&dout));
    let (eps, h) = (EPS as f64, 1e-6);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for _ in 0..40 {
        let (i, j) = (rng.gen_range(0..N * C), rng.gen_range(0..C));
        let (mut xp, mut xm) = (x.clone(), x.clone());
        (xp[i], xm[i]) = (x[i] + h, x[i] - h);
        let fd = (rmsnorm_loss_f64(&xp, &w, &d, eps, C) - rmsnorm_loss_f64(&xm, &w, &d, eps, C))
            / (2.0 * h);
        assert!(
            (dx[i] as f64 - fd).abs() < 1e-4 * fd.abs().max(1.0),
            "dinp[{i}]"
        );
        let (mut wp, mut wm) = (w.clone(), w.clone());
        (wp[j], wm[j]) = (w[j] + h, w[j] - h);
        let fd = (rmsnorm_loss_f64(&x, &wp, &d, eps, C) - rmsnorm_loss_f64(&x, &wm, &d, eps, C))
            / (2.0 * h);
        assert!(
            (dw[j] as f64 - fd).abs() < 1e-4 * fd.abs().max(1.0),
            "dweight[{j}]"
        );
    }
}

/// 20 001 elements: several rayon tasks and a ragged tail; gates out to ±12 reach both
/// saturated ends of σ.
fn swiglu_case() -> [Vec<f32>; 3] {
    let n = 20_001;
    [
        uniform(n, -12.0, 12.0, 5),
        uniform(n, -2.0, 2.0, 6),
        uniform(n, -1.0, 1.0, 7),
    ]
}

fn run_swiglu(g: &[f32], u: &[f32], d: &[f32]) -> [Vec<f32>; 3] {
    let mut out = vec![0f32; g.len()];
    swiglu_forward(&mut out, g, u);
    let (mut dg, mut du) = (vec![f32::NAN; g.len()], vec![f32::NAN; g.len()]);
    swiglu_backward(&mut dg, &mut du, d, g, u);
    [out, dg, du]
}

#[test]
fn swiglu_matches_candle_f64_autograd() {
    let [g, u, d] = swiglu_case();
    let [out, dg, du] = run_swiglu(&g, &u, &d);
    let (rout, rdg, rdu) = candle_swiglu(&g, &u, &d);
    for (name, got, want) in [
        ("out", &out, &rout),
        ("dgate", &dg, &rdg),
        ("dup", &du, &rdu),
    ] {
        let diff = rel_diff(got, want);
        println!("TENSOR OK swiglu {name} maxdiff {diff:.2e}");
        assert!(diff < 1e-6, "swiglu {name}: relative difference {diff:e}");
    }
}

#[test]
fn swiglu_grads_match_f64_central_differences() {
    let [g, u, d] = swiglu_case();
    let [_, dg, du] = run_swiglu(&g, &u, &d);
    let h = 1e-6;
    for i in (0..g.len()).step_by(97) {
        let (gi, ui, di) = (g[i] as f64, u[i] as f64, d[i] as f64);
        let fd = di * (swiglu_f64(gi + h, ui) - swiglu_f64(gi - h, ui)) / (2.0 * h);
        assert!(
            (dg[i] as f64 - fd).abs() < 1e-5 * fd.abs().max(1.0),
            "dgate[{i}]"
        );
        let fd = di * (swiglu_f64(gi, ui + h) - swiglu_f64(gi, ui - h)) / (2.0 * h);
        assert!(
            (du[i] as f64 - fd).abs() < 1e-5 * fd.abs().max(1.0),
            "dup[{i}]"
        );
    }
}
