//! AdamW with decoupled weight decay (Loshchilov & Hutter, 2019), the update PyTorch's
//! `torch.optim.AdamW` performs, over one flat parameter vector. Its moments are plain vectors,
//! saved in every checkpoint so a resumed run continues exactly.

use rayon::prelude::*;

use crate::config::GptConfig;

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
        assert_eq!(params.len(), self.m.len());
        assert_eq!(grads.len(), self.m.len());
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2, eps) = (self.beta1, self.beta2, self.eps);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        let lr = lr as f32;
        let decay = 1.0 - lr * self.weight_decay;
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
            let f = if wd { decay } else { 1.0 };
            params[s..e]
                .par_chunks_mut(CHUNK)
                .zip(grads[s..e].par_chunks(CHUNK))
                .zip(self.m[s..e].par_chunks_mut(CHUNK))
                .zip(self.v[s..e].par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| {
                    for i in 0..p.len() {
                        let gi = g[i];
                        m[i] = b1 * m[i] + (1.0 - b1) * gi;
                        v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                        let mhat = m[i] / bc1;
                        let vhat = v[i] / bc2;
                        p[i] = p[i] * f - lr * mhat / (vhat.sqrt() + eps);
                    }
                });
        }
    }
}

/// The global L2 norm of `grads`, accumulated in f64.
pub fn global_norm(grads: &[f32]) -> f64 {
    grads
        .par_chunks(1 << 14)
        .map(|c| c.iter().map(|&g| (g as f64) * (g as f64)).sum::<f64>())
        .sum::<f64>()
        .sqrt()
}

/// Scales `grads` so their global norm is at most `max_norm` (PyTorch's `clip_grad_norm_`,
/// including its 1e-6). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f64) -> f64 {
    let norm = global_norm(grads);
    if max_norm > 0.0 && norm > max_norm {
        let s = (max_norm / (norm + 1e-6)) as f32;
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
