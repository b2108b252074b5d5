//! Fused candle ops with their backward, for models trained through candle autograd on the
//! CPU: LayerNorm and masked multi-head attention. Composed from candle's elementwise ops each
//! costs 10-20 tensors forward and as many backward, and the attention's per-(batch, head)
//! products are thousands of tiny GEMM calls. These run one pass over rows (LayerNorm, on the
//! fast training path's kernels) or one task per (batch, head) (attention). Each is checked
//! against the composed version in the tests below.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::simd::{self, simd_fn};
use crate::kernels::{layernorm_backward, layernorm_forward, Norm, NormIn, NormOut};

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused ops need contiguous inputs".into()))?;
    Ok(&s.as_slice::<f32>()?[a..b])
}

fn to_vec(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.contiguous()?.flatten_all()?.to_vec1::<f32>()
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        w: &CpuStorage,
        wl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b) = (slice(x, xl)?, slice(w, wl)?, slice(b, bl)?);
        let c = w.len();
        let n = x.len() / c;
        let (mut out, mut mean, mut rstd) = (vec![0f32; x.len()], vec![0f32; n], vec![0f32; n]);
        let mut inp = x.to_vec();
        layernorm_forward(
            NormOut {
                out: &mut out,
                mean: &mut mean,
                rstd: &mut rstd,
            },
            &mut inp,
            None,
            Norm {
                w,
                b: Some(b),
                eps: self.eps,
            },
        );
        Ok((CpuStorage::F32(out), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (xs, ws, dout) = (to_vec(x)?, to_vec(w)?, to_vec(grad)?);
        let c = ws.len();
        let n = xs.len() / c;
        // Recompute the row statistics (cheap next to saving them per call).
        let (mut mean, mut rstd) = (vec![0f32; n], vec![0f32; n]);
        for (r, row) in xs.chunks_exact(c).enumerate() {
            let m = row.iter().sum::<f32>() / c as f32;
            let v = row.iter().map(|&x| (x - m) * (x - m)).sum::<f32>() / c as f32;
            mean[r] = m;
            rstd[r] = 1.0 / (v + self.eps).sqrt();
        }
        let (mut dx, mut dw, mut db) = (vec![0f32; xs.len()], vec![0f32; c], vec![0f32; c]);
        layernorm_backward(
            &mut dx,
            &mut dw,
            Some(&mut db),
            &dout,
            NormIn {
                x: &xs,
                mean: &mean,
                rstd: &rstd,
            },
            &ws,
            false,
        );
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
            Some(Tensor::from_vec(db, b.shape(), dev)?),
        ))
    }
}

/// LayerNorm over the last dimension (biased variance, as PyTorch): (x − mean)/√(var + eps)·w + b.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    let x = x.contiguous()?;
    Ok(x.apply_op3(w, b, LayerNormOp { eps })?)
}

/// Masked attention for q (B, H, T, d), k and v (B, H, S, d): softmax(q kᵀ·scale + mask) v, the
/// additive mask (mb, mt, S) with mb ∈ {1, B} and mt ∈ {1, T} broadcast over the rest.
struct AttentionOp {
    mask: Vec<f32>,
    mask_b: usize,
    mask_t: usize,
    scale: f32,
}

/// The dimensions of one call: (B·H, T, S, d, H).
#[derive(Clone, Copy)]
struct Dims {
    _bh: usize,
    t: usize,
    s: usize,
    d: usize,
    h: usize,
}

impl AttentionOp {
    /// The mask row of query i in the (b·H + h)-th slice.
    fn mask_row(&self, dims: Dims, bh: usize, i: usize) -> &[f32] {
        let b = if self.mask_b == 1 { 0 } else { bh / dims.h };
        let t = if self.mask_t == 1 { 0 } else { i };
        let at = (b * self.mask_t + t) * dims.s;
        &self.mask[at..at + dims.s]
    }
}

simd_fn! {
    /// Row i of P = softmax(q_i kᵀ·scale + mask) into p (S).
    fn probs(p: &mut [f32], qi: &[f32], k: &[f32], mask: &[f32], scale: f32) {
        let d = qi.len();
        for ((pj, kj), &m) in p.iter_mut().zip(k.chunks_exact(d)).zip(mask) {
            *pj = simd::dot(qi, kj) * scale + m;
        }
        let mx = simd::max(p);
        let mut sum = 0f32;
        for x in p.iter_mut() {
            *x = simd::exp(*x - mx);
            sum += *x;
        }
        let inv = 1.0 / sum;
        p.iter_mut().for_each(|x| *x *= inv);
    }
}

simd_fn! {
    /// o (T, d) for one (batch, head) slice.
    fn attend_slice(o: &mut [f32], q: &[f32], k: &[f32], v: &[f32], masks: &[&[f32]], scale: f32) {
        let d = v.len() / masks[0].len();
        let mut p = vec![0f32; masks[0].len()];
        for ((oi, qi), mask) in o.chunks_exact_mut(d).zip(q.chunks_exact(d)).zip(masks) {
            probs(&mut p, qi, k, mask, scale);
            oi.fill(0.0);
            for (&pj, vj) in p.iter().zip(v.chunks_exact(d)) {
                for (o, &x) in oi.iter_mut().zip(vj) {
                    *o += pj * x;
                }
            }
        }
    }
}

simd_fn! {
    /// Gradients of one (batch, head) slice: dq (T, d), dk and dv (S, d), overwritten.
    #[allow(clippy::too_many_arguments)]
    fn attend_slice_backward(
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
        dout: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        masks: &[&[f32]],
        scale: f32,
    ) {
        let s = masks[0].len();
        let d = v.len() / s;
        let (mut p, mut dp) = (vec![0f32; s], vec![0f32; s]);
        dk.fill(0.0);
        dv.fill(0.0);
        for (i, mask) in masks.iter().enumerate() {
            let (qi, doi) = (&q[i * d..(i + 1) * d], &dout[i * d..(i + 1) * d]);
            probs(&mut p, qi, k, mask, scale);
            // dP_j = dO_i · v_j; dS_j = P_j (dP_j − Σ P dP).
            let mut acc = 0f32;
            for ((dpj, vj), &pj) in dp.iter_mut().zip(v.chunks_exact(d)).zip(&p) {
                *dpj = simd::dot(doi, vj);
                acc += pj * *dpj;
            }
            let dqi = &mut dq[i * d..(i + 1) * d];
            dqi.fill(0.0);
            for j in 0..s {
                let pj = p[j];
                if pj == 0.0 {
                    continue;
                }
                let ds = pj * (dp[j] - acc) * scale;
                let (kj, vj) = (&k[j * d..(j + 1) * d], &mut dv[j * d..(j + 1) * d]);
                for c in 0..d {
                    vj[c] += pj * doi[c];
                    dqi[c] += ds * kj[c];
                }
                let dkj = &mut dk[j * d..(j + 1) * d];
                for c in 0..d {
                    dkj[c] += ds * qi[c];
                }
            }
        }
    }
}

impl AttentionOp {
    fn dims(&self, q: &Layout, k: &Layout) -> candle_core::Result<Dims> {
        let (b, h, t, d) = q.shape().dims4()?;
        let s = k.shape().dims4()?.2;
        Ok(Dims {
            _bh: b * h,
            t,
            s,
            d,
            h,
        })
    }

    fn masks(&self, dims: Dims, bh: usize) -> Vec<&[f32]> {
        (0..dims.t).map(|i| self.mask_row(dims, bh, i)).collect()
    }
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "fused-masked-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        ql: &Layout,
        k: &CpuStorage,
        kl: &Layout,
        v: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = self.dims(ql, kl)?;
        let (q, k, v) = (slice(q, ql)?, slice(k, kl)?, slice(v, vl)?);
        let (t, s, d) = (dims.t, dims.s, dims.d);
        let mut out = vec![0f32; q.len()];
        out.par_chunks_mut(t * d).enumerate().for_each(|(bh, o)| {
            let masks = self.masks(dims, bh);
            attend_slice(
                o,
                &q[bh * t * d..(bh + 1) * t * d],
                &k[bh * s * d..(bh + 1) * s * d],
                &v[bh * s * d..(bh + 1) * s * d],
                &masks,
                self.scale,
            );
        });
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = self.dims(q.layout(), k.layout())?;
        let (qs, ks, vs, dout) = (to_vec(q)?, to_vec(k)?, to_vec(v)?, to_vec(grad)?);
        let (t, s, d) = (dims.t, dims.s, dims.d);
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; qs.len()],
            vec![0f32; ks.len()],
            vec![0f32; vs.len()],
        );
        dq.par_chunks_mut(t * d)
            .zip(dk.par_chunks_mut(s * d).zip(dv.par_chunks_mut(s * d)))
            .enumerate()
            .for_each(|(bh, (dq, (dk, dv)))| {
                let masks = self.masks(dims, bh);
                let (qa, ka) = (bh * t * d, bh * s * d);
                attend_slice_backward(
                    dq,
                    dk,
                    dv,
                    &dout[qa..qa + t * d],
                    &qs[qa..qa + t * d],
                    &ks[ka..ka + s * d],
                    &vs[ka..ka + s * d],
                    &masks,
                    self.scale,
                );
            });
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// softmax(q kᵀ/√d + mask) v for q (B, H, T, d), k and v (B, H, S, d), f32 on the CPU; `mask`
/// is additive, of shape (1 or B, 1, 1 or T, S). Differentiable in q, k and v.
pub fn masked_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (b, _, t, d) = q.dims4()?;
    let s = k.dim(2)?;
    let (mb, one, mt, ms) = mask.dims4()?;
    if one != 1 || ms != s || !(mb == 1 || mb == b) || !(mt == 1 || mt == t) {
        return Err(Error::Invalid(format!(
            "attention mask {:?} does not broadcast to ({b}, heads, {t}, {s})",
            mask.dims()
        )));
    }
    let op = AttentionOp {
        mask: to_vec(mask)?,
        mask_b: mb,
        mask_t: mt,
        scale: 1.0 / (d as f32).sqrt(),
    };
    Ok(q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    use crate::testutil::fill;

    fn var(shape: &[usize], seed: u64) -> Var {
        let n = shape.iter().product();
        Var::from_vec(fill(n, seed), shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let (a, b) = (to_vec(a).unwrap(), to_vec(b).unwrap());
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, crate::testutil::nan_max)
    }

    #[test]
    fn layer_norm_matches_composed_with_gradients() {
        let (x, w, b) = (var(&[6, 16], 1), var(&[16], 2), var(&[16], 3));
        let g = Tensor::new(fill(96, 4), &Device::Cpu)
            .unwrap()
            .reshape((6, 16))
            .unwrap();
        let fused = layer_norm(&x, &w, &b, 1e-5).unwrap();
        let mean = x.mean_keepdim(D::Minus1).unwrap();
        let xc = x.broadcast_sub(&mean).unwrap();
        let var_ = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let composed = xc
            .broadcast_div(&(var_ + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w)
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert!(max_diff(&fused, &composed) < 1e-5);
        let (gf, gc) = (grads_of(fused, &g), grads_of(composed, &g));
        for p in [&x, &w, &b] {
            let d = max_diff(gf.get(p).unwrap(), gc.get(p).unwrap());
            assert!(d < 1e-4, "gradient differs by {d}");
        }
    }

    /// The gradients of Σ y ⊙ g.
    fn grads_of(y: Tensor, g: &Tensor) -> candle_core::backprop::GradStore {
        (y * g).unwrap().sum_all().unwrap().backward().unwrap()
    }

    #[test]
    fn attention_matches_composed_with_gradients() {
        let (b, h, t, s, d) = (2, 3, 5, 7, 8);
        let (q, k, v) = (
            var(&[b, h, t, d], 1),
            var(&[b, h, s, d], 2),
            var(&[b, h, s, d], 3),
        );
        let g = Tensor::new(fill(b * h * t * d, 4), &Device::Cpu)
            .unwrap()
            .reshape((b, h, t, d))
            .unwrap();
        // A padding mask per batch row and a causal-style mask per query.
        let pad: Vec<f32> = (0..b * s)
            .map(|i| if i % s >= 5 + i / s { -1e9 } else { 0.0 })
            .collect();
        let causal: Vec<f32> = (0..t * s)
            .map(|i| if i % s > i / s + 2 { -1e9 } else { 0.0 })
            .collect();
        for mask in [
            Tensor::from_vec(pad, (b, 1, 1, s), &Device::Cpu).unwrap(),
            Tensor::from_vec(causal, (1, 1, t, s), &Device::Cpu).unwrap(),
        ] {
            let fused = masked_attention(&q, &k, &v, &mask).unwrap();
            let att = (q.matmul(&k.t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
            let att =
                candle_nn::ops::softmax(&att.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
            let composed = att.matmul(&v).unwrap();
            assert!(max_diff(&fused, &composed) < 1e-5);
            let (gf, gc) = (grads_of(fused, &g), grads_of(composed, &g));
            for p in [&q, &k, &v] {
                let d = max_diff(gf.get(p).unwrap(), gc.get(p).unwrap());
                assert!(d < 1e-4, "gradient differs by {d}");
            }
        }
    }
}
