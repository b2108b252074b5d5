//! LayerNorm and RMSNorm (Zhang & Sennrich 2019, as Hugging Face's `LlamaRMSNorm`), each forward
//! beside its backward.

use rayon::prelude::*;

use super::simd::{self, simd_fn};
use super::{add_assign, col_strip, rows_per_task};

/// A LayerNorm's parameters: gain, optional bias, epsilon.
#[derive(Clone, Copy)]
pub struct Norm<'a> {
    pub w: &'a [f32],
    pub b: Option<&'a [f32]>,
    pub eps: f32,
}

/// What the forward of a LayerNorm saves: its output and each row's mean and 1/std.
pub struct NormOut<'a> {
    pub out: &'a mut [f32],
    pub mean: &'a mut [f32],
    pub rstd: &'a mut [f32],
}

/// The rest of a residual connection, completed before a LayerNorm reads the stream: the
/// stream so far and the bias of the projection whose output (without bias) is being added.
#[derive(Clone, Copy)]
pub struct Skip<'a> {
    pub x: &'a [f32],
    pub bias: Option<&'a [f32]>,
}

simd_fn! {
    fn layernorm_rows(o: NormOut, inp: &mut [f32], skip: Option<Skip>, nm: Norm) {
        let c = nm.w.len();
        let rows = o.out.chunks_exact_mut(c).zip(inp.chunks_exact_mut(c));
        let stats = o.mean.iter_mut().zip(o.rstd.iter_mut());
        for (r, ((out, x), (m, s))) in rows.zip(stats).enumerate() {
            if let Some(skip) = skip {
                add_assign(x, &skip.x[r * c..(r + 1) * c]);
                if let Some(bias) = skip.bias {
                    add_assign(x, bias);
                }
            }
            let mu = simd::sum(x) / c as f32;
            let mut acc = [0f32; 16];
            let chunks = x.chunks_exact(16);
            let mut var: f32 = chunks.remainder().iter().map(|&v| (v - mu) * (v - mu)).sum();
            for ch in chunks {
                for (a, &v) in acc.iter_mut().zip(ch) {
                    *a += (v - mu) * (v - mu);
                }
            }
            var = (var + acc.iter().sum::<f32>()) / c as f32;
            let rs = 1.0 / (var + nm.eps).sqrt();
            match nm.b {
                Some(b) => {
                    for (((o, &x), &w), &b) in out.iter_mut().zip(x.iter()).zip(nm.w).zip(b) {
                        *o = (x - mu) * rs * w + b;
                    }
                }
                None => {
                    for ((o, &x), &w) in out.iter_mut().zip(x.iter()).zip(nm.w) {
                        *o = (x - mu) * rs * w;
                    }
                }
            }
            *m = mu;
            *s = rs;
        }
    }
}

/// out (N, C) = (inp − mean) · rstd · w + b per row, biased variance; saves mean and rstd (N).
/// With `skip`, first completes the residual stream in place: inp += skip.x + skip.bias.
pub fn layernorm_forward(o: NormOut, inp: &mut [f32], skip: Option<Skip>, nm: Norm) {
    let c = nm.w.len();
    let rows = rows_per_task(c);
    o.out
        .par_chunks_mut(c * rows)
        .zip(o.mean.par_chunks_mut(rows))
        .zip(o.rstd.par_chunks_mut(rows))
        .zip(inp.par_chunks_mut(c * rows))
        .enumerate()
        .for_each(|(i, (((out, mean), rstd), x))| {
            let skip = skip.map(|s| Skip {
                x: &s.x[i * rows * c..],
                ..s
            });
            layernorm_rows(NormOut { out, mean, rstd }, x, skip, nm)
        });
}

/// What the backward of a LayerNorm reads: its input and the saved statistics.
#[derive(Clone, Copy)]
pub struct NormIn<'a> {
    pub x: &'a [f32],
    pub mean: &'a [f32],
    pub rstd: &'a [f32],
}

simd_fn! {
    fn layernorm_dinp_rows(dinp: &mut [f32], dout: &[f32], s: NormIn, w: &[f32], accumulate: bool) {
        let c = w.len();
        let rows = dinp.chunks_exact_mut(c).zip(dout.chunks_exact(c)).zip(s.x.chunks_exact(c));
        for (((di, d), x), (&mu, &rs)) in rows.zip(s.mean.iter().zip(s.rstd)) {
            // With x̂ = (x − μ)·rstd and g = dout·w: dx = rstd (g − mean(g) − x̂ mean(g x̂)).
            let mut acc_g = [0f32; 16];
            let mut acc_gx = [0f32; 16];
            let (mut sum_g, mut sum_gx) = (0f32, 0f32);
            let (dc, xc, wc) = (d.chunks_exact(16), x.chunks_exact(16), w.chunks_exact(16));
            for ((&d, &x), &w) in dc.remainder().iter().zip(xc.remainder()).zip(wc.remainder()) {
                sum_g += d * w;
                sum_gx += d * w * (x - mu) * rs;
            }
            for ((d, x), w) in dc.zip(xc).zip(wc) {
                for i in 0..16 {
                    let g = d[i] * w[i];
                    acc_g[i] += g;
                    acc_gx[i] += g * (x[i] - mu) * rs;
                }
            }
            let mean_g = (sum_g + acc_g.iter().sum::<f32>()) / c as f32;
            let mean_gx = (sum_gx + acc_gx.iter().sum::<f32>()) / c as f32;
            let it = di.iter_mut().zip(d).zip(x).zip(w);
            if accumulate {
                for (((di, &d), &x), &w) in it {
                    *di += rs * (d * w - mean_g - (x - mu) * rs * mean_gx);
                }
            } else {
                for (((di, &d), &x), &w) in it {
                    *di = rs * (d * w - mean_g - (x - mu) * rs * mean_gx);
                }
            }
        }
    }
}

simd_fn! {
    fn layernorm_param_strip(
        dw: &mut [f32],
        db: Option<&mut [f32]>,
        dout: &[f32],
        s: NormIn,
        c0: usize,
        c: usize,
    ) {
        let w = dw.len();
        let mut db = db;
        let rows = dout.chunks_exact(c).zip(s.x.chunks_exact(c));
        for ((d, x), (&mu, &rs)) in rows.zip(s.mean.iter().zip(s.rstd)) {
            let (d, x) = (&d[c0..c0 + w], &x[c0..c0 + w]);
            for ((dw, &d), &x) in dw.iter_mut().zip(d).zip(x) {
                *dw += d * (x - mu) * rs;
            }
            if let Some(db) = db.as_deref_mut() {
                add_assign(db, d);
            }
        }
    }
}

/// Backward of `layernorm_forward` (without its skip): dinp (N, C) = (or +=, with
/// `accumulate`) the input gradient; dw += Σ dout·x̂, db += Σ dout.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dout: &[f32],
    s: NormIn,
    w: &[f32],
    accumulate: bool,
) {
    let c = w.len();
    let rows = rows_per_task(c);
    rayon::join(
        || {
            dinp.par_chunks_mut(c * rows)
                .zip(dout.par_chunks(c * rows))
                .enumerate()
                .for_each(|(i, (di, d))| {
                    let (r0, r1) = (i * rows, i * rows + d.len() / c);
                    let s = NormIn {
                        x: &s.x[r0 * c..r1 * c],
                        mean: &s.mean[r0..r1],
                        rstd: &s.rstd[r0..r1],
                    };
                    layernorm_dinp_rows(di, d, s, w, accumulate)
                });
        },
        || {
            let strip = col_strip(c);
            match db {
                Some(db) => dw
                    .par_chunks_mut(strip)
                    .zip(db.par_chunks_mut(strip))
                    .enumerate()
                    .for_each(|(i, (dw, db))| {
                        layernorm_param_strip(dw, Some(db), dout, s, i * strip, c)
                    }),
                None => dw
                    .par_chunks_mut(strip)
                    .enumerate()
                    .for_each(|(i, dw)| layernorm_param_strip(dw, None, dout, s, i * strip, c)),
            }
        },
    );
}

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
