//! AdamW with decoupled weight decay (Loshchilov & Hutter, 2019), the update PyTorch's
//! `torch.optim.AdamW` performs, over one flat parameter vector. Its moments are plain vectors,
//! saved in every checkpoint so a resumed run continues exactly.

use rayon::prelude::*;

use crate::kernels::simd::simd_fn;

use crate::models::gpt::GptConfig;

#[derive(Debug, Clone)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Number of updates done so far (bias correction uses t = step + 1 on the next update).
    pub step: u64,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Per element: whether weight decay applies (matrices only; no decay on biases, norms and
    /// embeddings). Stored as ranges to keep it small.
    decay_ranges: Vec<(usize, usize)>,
}

/// Parameter ranges (start, end) that receive weight decay: 2-D weights other than the
/// embeddings `wte` and `wpe`.
pub fn decay_ranges(cfg: &GptConfig) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut off = 0;
    for (name, shape) in cfg.param_shapes() {
        let n: usize = shape.iter().product();
        if shape.len() >= 2 && !name.contains(".wte.") && !name.contains(".wpe.") {
            out.push((off, off + n));
        }
        off += n;
    }
    out
}

impl AdamW {
    pub fn new(
        n: usize,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        decay_ranges: Vec<(usize, usize)>,
    ) -> Self {
        Self {
            beta1: beta1 as f32,
            beta2: beta2 as f32,
            eps: eps as f32,
            weight_decay: weight_decay as f32,
            step: 0,
            m: vec![0.0; n],
            v: vec![0.0; n],
            decay_ranges,
        }
    }

    /// One update of `params` with `grads` at learning rate `lr`.
    pub fn update(&mut self, params: &mut [f32], grads: &[f32], lr: f64) {
        self.update_scaled(params, grads, lr, 1.0);
    }

    /// One update with the gradients `grad_scale · grads`, the scaling done on the fly (as
    /// `clip_grad_norm` followed by `update` would do it, in one pass over memory).
    pub fn update_scaled(&mut self, params: &mut [f32], grads: &[f32], lr: f64, grad_scale: f32) {
        assert_eq!(params.len(), self.m.len());
        assert_eq!(grads.len(), self.m.len());
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let lr = lr as f32;
        let k = Consts {
            b1,
            b2,
            eps: self.eps,
            bc1: 1.0 - b1.powi(t),
            bc2: 1.0 - b2.powi(t),
            lr,
            decay: 1.0,
            grad_scale,
        };
        // Walk the vector in contiguous segments that either decay or not.
        let mut segments = Vec::new();
        let mut pos = 0;
        for &(s, e) in &self.decay_ranges {
            if s > pos {
                segments.push((pos, s, false));
            }
            segments.push((s, e, true));
            pos = e;
        }
        if pos < params.len() {
            segments.push((pos, params.len(), false));
        }
        const CHUNK: usize = 1 << 14;
        for (s, e, wd) in segments {
            let k = Consts {
                decay: if wd {
                    1.0 - lr * self.weight_decay
                } else {
                    1.0
                },
                ..k
            };
            params[s..e]
                .par_chunks_mut(CHUNK)
                .zip(grads[s..e].par_chunks(CHUNK))
                .zip(self.m[s..e].par_chunks_mut(CHUNK))
                .zip(self.v[s..e].par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| adamw_chunk(p, g, m, v, k));
        }
    }
}

/// The scalars of one AdamW update.
#[derive(Clone, Copy)]
struct Consts {
    b1: f32,
    b2: f32,
    eps: f32,
    /// Bias corrections 1 − β^t.
    bc1: f32,
    bc2: f32,
    lr: f32,
    /// 1 − lr·weight_decay where decay applies, else 1.
    decay: f32,
    grad_scale: f32,
}

simd_fn! {
    fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: Consts) {
        let n = p.len();
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        for i in 0..n {
            let gi = g[i] * k.grad_scale;
            m[i] = k.b1 * m[i] + (1.0 - k.b1) * gi;
            v[i] = k.b2 * v[i] + (1.0 - k.b2) * gi * gi;
            let mhat = m[i] / k.bc1;
            let vhat = v[i] / k.bc2;
            p[i] = p[i] * k.decay - k.lr * mhat / (vhat.sqrt() + k.eps);
        }
    }
}

simd_fn! {
    fn sum_squares(g: &[f32]) -> f64 {
        // Eight f64 lanes, so that the loop vectorizes without reassociating a single sum.
        let mut acc = [0f64; 8];
        let chunks = g.chunks_exact(8);
        let tail: f64 = chunks.remainder().iter().map(|&x| (x as f64) * (x as f64)).sum();
        for ch in chunks {
            for (a, &x) in acc.iter_mut().zip(ch) {
                *a += (x as f64) * (x as f64);
            }
        }
        acc.iter().sum::<f64>() + tail
    }
}

/// The global L2 norm of `grads`, accumulated in f64.
pub fn global_norm(grads: &[f32]) -> f64 {
    grads
        .par_chunks(1 << 14)
        .map(sum_squares)
        .sum::<f64>()
        .sqrt()
}

/// The factor `clip_grad_norm` scales gradients of global norm `norm` by: PyTorch's
/// `clip_grad_norm_`, including its 1e-6; 1 when the norm is within `max_norm` (or
/// `max_norm` ≤ 0, no clipping).
pub fn clip_scale(norm: f64, max_norm: f64) -> f32 {
    if max_norm > 0.0 && norm > max_norm {
        (max_norm / (norm + 1e-6)) as f32
    } else {
        1.0
    }
}

/// Scales `grads` so their global norm is at most `max_norm` (see `clip_scale`). Returns the
/// norm before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    let s = clip_scale(norm, max_norm);
    if s != 1.0 {
        grads
            .par_chunks_mut(1 << 14)
            .for_each(|c| c.iter_mut().for_each(|g| *g *= s));
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two updates checked against the formula computed by hand in f64.
    #[test]
    fn matches_reference_formula() {
        let mut p = vec![1.0f32, -2.0];
        let g = [0.5f32, 0.25];
        let mut opt = AdamW::new(2, 0.9, 0.99, 1e-8, 0.1, vec![(0, 1)]);
        let (mut m, mut v, mut r) = ([0.0f64; 2], [0.0f64; 2], [1.0f64, -2.0]);
        for t in 1..=2 {
            opt.update(&mut p, &g, 1e-2);
            for i in 0..2 {
                let wd = if i == 0 { 0.1 } else { 0.0 };
                r[i] *= 1.0 - 1e-2 * wd;
                m[i] = 0.9 * m[i] + 0.1 * g[i] as f64;
                v[i] = 0.99 * v[i] + 0.01 * (g[i] as f64).powi(2);
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.99f64.powi(t));
                r[i] -= 1e-2 * mh / (vh.sqrt() + 1e-8);
            }
        }
        for i in 0..2 {
            assert!((p[i] as f64 - r[i]).abs() < 1e-6, "{} vs {}", p[i], r[i]);
        }
    }

    #[test]
    fn clipping_bounds_the_norm() {
        let mut g = vec![3.0f32, 4.0];
        let n = clip_grad_norm(&mut g, 1.0);
        assert!((n - 5.0).abs() < 1e-9);
        assert!((global_norm(&g) - 1.0).abs() < 1e-5);
    }
}
