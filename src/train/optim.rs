//! The optimizer side of every trainer: AdamW with decoupled weight decay (Loshchilov & Hutter,
//! 2019) over one flat parameter vector, the global-norm clipping of PyTorch's
//! `clip_grad_norm_`, and the learning-rate schedule. AdamW's moments are plain vectors, saved in
//! every checkpoint so a resumed run continues exactly.

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::nn::tensor_io;

use crate::kernels::simd::simd_fn;

use crate::models::gpt::GptConfig;

#[derive(Debug, Clone)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Number of updates done so far (bias correction uses t = step + 1 on the next update).
    pub step: u64,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Per element: whether weight decay applies (matrices only; no decay on biases, norms and
    /// embeddings). Stored as ranges to keep it small.
    decay_ranges: Vec<(usize, usize)>,
    /// The order of the update's operations (the same formula, other roundings).
    pub order: Order,
}

/// Whose rounding an AdamW update reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// PyTorch's `torch.optim.AdamW` (and llm.c's): scalars in f32, `m̂ = m / (1 − β₁ᵗ)`.
    #[default]
    Torch,
    /// candle-nn's `AdamW`, one tensor op per term: each scalar computed in f64 and rounded to
    /// f32, `m̂ = m · (1 / (1 − β₁ᵗ))`, every scaling `x · s + 0` (candle's affine).
    Candle,
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
            beta1,
            beta2,
            eps,
            weight_decay,
            step: 0,
            m: vec![0.0; n],
            v: vec![0.0; n],
            decay_ranges,
            order: Order::Torch,
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
        let k = self.consts(lr, grad_scale);
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
                decay: if wd { k.decay } else { 1.0 },
                ..k
            };
            let chunk = match self.order {
                Order::Torch => adamw_chunk,
                Order::Candle => adamw_chunk_candle,
            };
            params[s..e]
                .par_chunks_mut(CHUNK)
                .zip(grads[s..e].par_chunks(CHUNK))
                .zip(self.m[s..e].par_chunks_mut(CHUNK))
                .zip(self.v[s..e].par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| chunk(p, g, m, v, k));
        }
    }

    /// Saves the moments as the tensors `{prefix}m`, `{prefix}v` of a safetensors file with `meta`.
    pub fn save_moments(
        &self,
        path: &Path,
        prefix: &str,
        meta: HashMap<String, String>,
    ) -> Result<()> {
        let n = self.m.len();
        let (m, v) = (format!("{prefix}m"), format!("{prefix}v"));
        tensor_io::save_tensors(path, &[(m, vec![n], &self.m), (v, vec![n], &self.v)], meta)
    }

    /// Reads back what `save_moments` wrote; returns the file's metadata.
    pub fn load_moments(&mut self, path: &Path, prefix: &str) -> Result<HashMap<String, String>> {
        let mut f = tensor_io::load_tensors(path)?;
        for (k, dst) in [("m", &mut self.m), ("v", &mut self.v)] {
            match f.tensors.remove(&format!("{prefix}{k}")) {
                Some((_, d)) if d.len() == dst.len() => *dst = d,
                _ => {
                    return Err(Error::CorruptCheckpoint {
                        path: path.to_path_buf(),
                        msg: format!("tensor {prefix}{k} is missing or has the wrong size"),
                    })
                }
            }
        }
        Ok(f.metadata)
    }

    /// The scalars of update `self.step`, rounded as `self.order` does.
    fn consts(&self, lr: f64, grad_scale: f32) -> Consts {
        let t = self.step as i32;
        match self.order {
            Order::Torch => {
                let (b1, b2, lr) = (self.beta1 as f32, self.beta2 as f32, lr as f32);
                Consts {
                    b1,
                    b2,
                    c1: 1.0 - b1,
                    c2: 1.0 - b2,
                    eps: self.eps as f32,
                    bc1: 1.0 - b1.powi(t),
                    bc2: 1.0 - b2.powi(t),
                    lr,
                    decay: 1.0 - lr * self.weight_decay as f32,
                    grad_scale,
                }
            }
            Order::Candle => {
                let (b1, b2) = (self.beta1, self.beta2);
                Consts {
                    b1: b1 as f32,
                    b2: b2 as f32,
                    c1: (1.0 - b1) as f32,
                    c2: (1.0 - b2) as f32,
                    eps: self.eps as f32,
                    // Multipliers here: m̂ = m · bc1.
                    bc1: (1.0 / (1.0 - b1.powi(t))) as f32,
                    bc2: (1.0 / (1.0 - b2.powi(t))) as f32,
                    lr: lr as f32,
                    decay: (1.0 - lr * self.weight_decay) as f32,
                    grad_scale,
                }
            }
        }
    }
}

/// The scalars of one AdamW update.
#[derive(Clone, Copy)]
struct Consts {
    b1: f32,
    b2: f32,
    /// 1 − β.
    c1: f32,
    c2: f32,
    eps: f32,
    /// Bias corrections 1 − β^t (Torch order), or their reciprocals (Candle order).
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
            m[i] = k.b1 * m[i] + k.c1 * gi;
            v[i] = k.b2 * v[i] + k.c2 * gi * gi;
            let mhat = m[i] / k.bc1;
            let vhat = v[i] / k.bc2;
            p[i] = p[i] * k.decay - k.lr * mhat / (vhat.sqrt() + k.eps);
        }
    }
}

simd_fn! {
    // candle-nn 0.11's AdamW::step, op for op; `x · s + 0.0` is candle's affine (the + 0.0 turns
    // −0 into +0, as there).
    fn adamw_chunk_candle(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: Consts) {
        let n = p.len();
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        for i in 0..n {
            let gi = g[i] * k.grad_scale;
            m[i] = (m[i] * k.b1 + 0.0) + (gi * k.c1 + 0.0);
            v[i] = (v[i] * k.b2 + 0.0) + ((gi * gi) * k.c2 + 0.0);
            let mhat = m[i] * k.bc1 + 0.0;
            let vhat = v[i] * k.bc2 + 0.0;
            let adjusted = mhat / (vhat.sqrt() + k.eps);
            p[i] = (p[i] * k.decay + 0.0) - (adjusted * k.lr + 0.0);
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

/// The global L2 norm of `grads`, accumulated in f64: chunks in parallel, summed in chunk order,
/// so that it is the same bits on every run.
pub fn global_norm(grads: &[f32]) -> f64 {
    let parts: Vec<f64> = grads.par_chunks(1 << 14).map(sum_squares).collect();
    parts.iter().sum::<f64>().sqrt()
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

/// A learning-rate schedule: linear warm-up to `peak`, then a decay. One type for the three
/// trainers, whose rates it reproduces bit for bit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub peak: f64,
    /// Steps of linear warm-up: step `s` (0-based) of them runs at `peak · (s + 1) / d`.
    pub warmup: usize,
    /// The warm-up's denominator `d`: `warmup`, or nanoGPT's `warmup + 1` (its `get_lr`).
    pub warmup_div: usize,
    pub decay: Decay,
}

/// The rate after warm-up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decay {
    /// `min + ½(peak − min)(1 + cos πp)`, then `min` past `end`. The progress p is the larger of
    /// the time fraction and the step fraction `(step + ahead − from) / (end − from)`, so a
    /// run bounded by time still ends annealed. nanoGPT counts from the warm-up's end
    /// (`from = warmup`, `ahead = 0`); the seq2seq trainer counts the step being taken
    /// (`ahead = 1`); fine-tuning counts from step 0.
    Cosine {
        min: f64,
        end: usize,
        from: usize,
        ahead: usize,
    },
    /// `peak · √(max(warmup, 1) / (step + 1))`, the original Transformer's.
    InverseSqrt,
}

impl Schedule {
    /// The rate of optimizer update `step` (0-based), with `time_frac` of the run's time limit
    /// spent (0 without one).
    pub fn lr(&self, step: usize, time_frac: f64) -> f64 {
        if step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup_div as f64;
        }
        match self.decay {
            Decay::Cosine { min, end, .. } if step > end => min,
            Decay::Cosine {
                min,
                end,
                from,
                ahead,
            } => {
                let done = (step + ahead).saturating_sub(from) as f64;
                let by_steps = done / end.saturating_sub(from).max(1) as f64;
                let p = by_steps.max(time_frac).min(1.0);
                // ½(1 + cos πp)·(peak − min): the ×½ is exact, so any order gives these bits.
                min + 0.5 * (self.peak - min) * (1.0 + (std::f64::consts::PI * p).cos())
            }
            Decay::InverseSqrt => {
                let w = self.warmup.max(1) as f64;
                self.peak * (w / (step + 1) as f64).sqrt()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three trainers' former formulas, verbatim, against `Schedule::lr`, bit for bit.
    #[test]
    fn schedule_reproduces_the_three_former_formulas() {
        use std::f64::consts::PI;
        let (peak, min) = (1e-3, 1e-4);
        let check = |s: Schedule, old: &dyn Fn(usize, f64) -> f64, end: usize, fracs: &[f64]| {
            for step in 0..end + 30 {
                for &frac in fracs {
                    let (new, old) = (s.lr(step, frac), old(step, frac));
                    assert_eq!(new.to_bits(), old.to_bits(), "{s:?} {step} {frac}");
                }
            }
        };
        let cosine = |warmup, warmup_div, end, from, ahead| Schedule {
            peak,
            warmup,
            warmup_div,
            decay: Decay::Cosine {
                min,
                end,
                from,
                ahead,
            },
        };
        for (w, end) in [(100usize, 2000usize), (0, 50), (7, 7), (3, 40), (40, 30)] {
            // nanoGPT's get_lr (the LM trainer; no time limit).
            let gpt = |it: usize, _: f64| {
                if it < w {
                    return peak * (it + 1) as f64 / (w + 1) as f64;
                }
                if it > end {
                    return min;
                }
                let ratio = (it - w) as f64 / (end - w).max(1) as f64;
                min + 0.5 * (1.0 + (PI * ratio).cos()) * (peak - min)
            };
            check(cosine(w, w + 1, end, w, 0), &gpt, end, &[0.0]);
            // The seq2seq trainer: cosine by steps or time, or inverse square root.
            let s2s = |step: usize, frac: f64, cos: bool| {
                let (s, wf) = (step as f64 + 1.0, w as f64);
                if s <= wf {
                    return peak * s / wf;
                }
                if !cos {
                    return peak * (wf.max(1.0) / s).sqrt();
                }
                let p = ((s - wf) / (end as f64 - wf).max(1.0)).max(frac).min(1.0);
                min + 0.5 * (peak - min) * (1.0 + (PI * p).cos())
            };
            let c = cosine(w, w, end, w, 1);
            let fracs = [0.0, 0.3, 0.77, 1.2];
            check(c, &|st, f| s2s(st, f, true), end, &fracs);
            let isqrt = Schedule {
                decay: Decay::InverseSqrt,
                ..c
            };
            check(isqrt, &|st, f| s2s(st, f, false), end, &fracs);
            // Fine-tuning: cosine by the larger of step / max_steps and the time fraction.
            let ft = |step: usize, frac: f64| {
                if step < w {
                    return peak * (step + 1) as f64 / w as f64;
                }
                let p = (step as f64 / end as f64).max(frac).clamp(0.0, 1.0);
                min + 0.5 * (peak - min) * (1.0 + (PI * p).cos())
            };
            check(cosine(w, w, end, 0, 0), &ft, end, &fracs);
        }
    }

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

    /// `Order::Candle` reproduces candle-nn's `AdamW` bit for bit: three steps at changing rates,
    /// with weight decay, on gradients of both signs.
    #[test]
    fn candle_order_matches_candle_nn() {
        use candle_core::{Device, Var};
        use candle_nn::Optimizer;
        let n = 37;
        let mut p: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() - 0.1).collect();
        let var = Var::from_slice(&p, n, &Device::Cpu).unwrap();
        let cfg = candle_nn::ParamsAdamW {
            lr: 3e-3,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-9,
            weight_decay: 1e-4,
        };
        let mut theirs = candle_nn::AdamW::new(vec![var.clone()], cfg).unwrap();
        let mut ours = AdamW::new(n, 0.9, 0.98, 1e-9, 1e-4, vec![(0, n)]);
        ours.order = Order::Candle;
        for step in 0..3 {
            let lr = 3e-3 / (step + 1) as f64;
            let loss = (var.as_tensor().sin().unwrap() * 3.0)
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss.backward().unwrap();
            let g = grads
                .get(var.as_tensor())
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            theirs.set_learning_rate(lr);
            theirs.step(&grads).unwrap();
            ours.update(&mut p, &g, lr);
            let want = var.as_tensor().to_vec1::<f32>().unwrap();
            let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&p), bits(&want), "step {step}");
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
