//! The layers Llama adds to GPT-2's, in the style of `kernels` (forward beside backward, flat
//! row-major f32 buffers, N = B·T rows): RMSNorm (Zhang & Sennrich 2019, as Hugging Face's
//! `LlamaRMSNorm`) and the SwiGLU gate of the MLP (Shazeer 2020, as `LlamaMLP`:
//! `down_proj(silu(gate_proj(x)) * up_proj(x))`).
//!
//! Rows split across rayon's pool; the RMSNorm gain's gradient, a reduction over rows, splits
//! columns instead, so no thread-local partial sums and no allocation are needed.

use rayon::prelude::*;

use super::kernels::{col_strip, rows_per_task, TASK_ELEMS};
use super::simd::{self, simd_fn};

// ------------------------------------------------------------------------------------------------
// RMSNorm

simd_fn! {
    fn rmsnorm_rows(out: &mut [f32], rstd: &mut [f32], inp: &[f32], w: &[f32], eps: f32) {
        let c = w.len();
        let rows = out.chunks_exact_mut(c).zip(inp.chunks_exact(c));
        for ((o, x), r) in rows.zip(rstd.iter_mut()) {
            let rs = 1.0 / (simd::dot(x, x) / c as f32 + eps).sqrt();
            for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
                *o = x * rs * w;
            }
            *r = rs;
        }
    }
}

/// out (N, C) = inp · rstd · weight per row, rstd = 1/√(mean(inp²) + eps) (N), which is saved
/// for the backward. Hugging Face's `LlamaRMSNorm` in f32.
pub fn rmsnorm_forward(
    out: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    eps: f32,
    c: usize,
) {
    assert_eq!(weight.len(), c, "RMSNorm weight must hold C = {c} values");
    let n = inp.len() / c;
    assert!(out.len() == n * c && rstd.len() == n && inp.len() == n * c);
    let rows = rows_per_task(c);
    out.par_chunks_mut(c * rows)
        .zip(rstd.par_chunks_mut(rows))
        .zip(inp.par_chunks(c * rows))
        .for_each(|((o, r), x)| rmsnorm_rows(o, r, x, weight, eps));
}

simd_fn! {
    fn rmsnorm_dinp_rows(dinp: &mut [f32], dout: &[f32], inp: &[f32], w: &[f32], rstd: &[f32]) {
        let c = w.len();
        let rows = dinp.chunks_exact_mut(c).zip(dout.chunks_exact(c)).zip(inp.chunks_exact(c));
        for (((di, d), x), &rs) in rows.zip(rstd) {
            // With g = dout·w: dx = rstd·g − rstd³·x·mean(g·x).
            let mut acc = [0f32; 16];
            let (dc, xc, wc) = (d.chunks_exact(16), x.chunks_exact(16), w.chunks_exact(16));
            let mut gx: f32 = dc
                .remainder()
                .iter()
                .zip(xc.remainder())
                .zip(wc.remainder())
                .map(|((&d, &x), &w)| d * w * x)
                .sum();
            for ((d, x), w) in dc.zip(xc).zip(wc) {
                for i in 0..16 {
                    acc[i] += d[i] * w[i] * x[i];
                }
            }
            gx += acc.iter().sum::<f32>();
            let k = rs * rs * rs * gx / c as f32;
            for (((di, &d), &x), &w) in di.iter_mut().zip(d).zip(x).zip(w) {
                *di = rs * d * w - k * x;
            }
        }
    }
}

simd_fn! {
    fn rmsnorm_dweight_strip(dw: &mut [f32], dout: &[f32], inp: &[f32], rstd: &[f32], c0: usize) {
        let (w, c) = (dw.len(), inp.len() / rstd.len());
        let rows = dout.chunks_exact(c).zip(inp.chunks_exact(c));
        for ((d, x), &rs) in rows.zip(rstd) {
            let (d, x) = (&d[c0..c0 + w], &x[c0..c0 + w]);
            for ((dw, &d), &x) in dw.iter_mut().zip(d).zip(x) {
                *dw += d * x * rs;
            }
        }
    }
}

/// Backward of `rmsnorm_forward`: dinp (N, C) = the input gradient (overwritten), dweight (C) +=
/// Σ_rows dout · inp · rstd.
pub fn rmsnorm_backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    rstd: &[f32],
    c: usize,
) {
    let n = rstd.len();
    assert!(
        weight.len() == c && dweight.len() == c,
        "RMSNorm weight must hold C = {c} values"
    );
    assert!(dinp.len() == n * c && dout.len() == n * c && inp.len() == n * c);
    let rows = rows_per_task(c);
    rayon::join(
        || {
            dinp.par_chunks_mut(c * rows)
                .zip(dout.par_chunks(c * rows))
                .zip(inp.par_chunks(c * rows).zip(rstd.par_chunks(rows)))
                .for_each(|((di, d), (x, rs))| rmsnorm_dinp_rows(di, d, x, weight, rs));
        },
        || {
            let strip = col_strip(c);
            dweight
                .par_chunks_mut(strip)
                .enumerate()
                .for_each(|(i, dw)| rmsnorm_dweight_strip(dw, dout, inp, rstd, i * strip));
        },
    );
}

// ------------------------------------------------------------------------------------------------
// SwiGLU

/// σ(x) = 1 / (1 + e^(−x)), finite everywhere (`simd::exp` clamps its argument).
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + simd::exp(-x))
}

simd_fn! {
    fn swiglu_chunk(out: &mut [f32], gate: &[f32], up: &[f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g * sigmoid(g) * u;
        }
    }
}

/// out = silu(gate) · up element-wise, silu(g) = g σ(g); gate and up are the (N, I) outputs of
/// `gate_proj` and `up_proj`.
pub fn swiglu_forward(out: &mut [f32], gate: &[f32], up: &[f32]) {
    assert!(gate.len() == out.len() && up.len() == out.len());
    out.par_chunks_mut(TASK_ELEMS)
        .zip(gate.par_chunks(TASK_ELEMS).zip(up.par_chunks(TASK_ELEMS)))
        .for_each(|(o, (g, u))| swiglu_chunk(o, g, u));
}

simd_fn! {
    fn swiglu_backward_chunk(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
        let grads = dgate.iter_mut().zip(dup.iter_mut());
        for ((dg, du), ((&d, &g), &u)) in grads.zip(dout.iter().zip(gate).zip(up)) {
            // silu′(g) = σ(g) (1 + g (1 − σ(g)))
            let s = sigmoid(g);
            *dg = d * u * s * (1.0 + g * (1.0 - s));
            *du = d * g * s;
        }
    }
}

/// Backward of `swiglu_forward`: dgate = dout · up · silu′(gate), dup = dout · silu(gate), both
/// overwritten.
pub fn swiglu_backward(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) {
    let n = dout.len();
    assert!(dgate.len() == n && dup.len() == n && gate.len() == n && up.len() == n);
    dgate
        .par_chunks_mut(TASK_ELEMS)
        .zip(dup.par_chunks_mut(TASK_ELEMS))
        .zip(dout.par_chunks(TASK_ELEMS))
        .zip(gate.par_chunks(TASK_ELEMS).zip(up.par_chunks(TASK_ELEMS)))
        .for_each(|(((dg, du), d), (g, u))| swiglu_backward_chunk(dg, du, d, g, u));
}

#[cfg(test)]
mod tests {
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
            let fd = (rmsnorm_loss_f64(&xp, &w, &d, eps, C)
                - rmsnorm_loss_f64(&xm, &w, &d, eps, C))
                / (2.0 * h);
            assert!(
                (dx[i] as f64 - fd).abs() < 1e-4 * fd.abs().max(1.0),
                "dinp[{i}]"
            );
            let (mut wp, mut wm) = (w.clone(), w.clone());
            (wp[j], wm[j]) = (w[j] + h, w[j] - h);
            let fd = (rmsnorm_loss_f64(&x, &wp, &d, eps, C)
                - rmsnorm_loss_f64(&x, &wm, &d, eps, C))
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
}
