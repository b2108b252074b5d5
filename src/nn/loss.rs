//! Label-smoothed cross-entropy as one fused candle op with its backward: the composed version
//! (max, exp, sum, log, gather, mean) materializes half a dozen (tokens × vocab) tensors forward
//! and as many backward, which on CPU costs more than the model's matmuls. This one reads the
//! logits once forward and writes the gradient once backward.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor, D};
use rayon::prelude::*;

use crate::error::{Error, Result};

struct SmoothedCe {
    targets: Vec<u32>,
    /// Per row, weight / Σ weights.
    scale: Vec<f32>,
    smoothing: f32,
    /// Weighted mean NLL without smoothing, set by the forward.
    nll: Arc<Mutex<f64>>,
}

/// Per row: (log-sum-exp, mean of the row).
fn row_stats(row: &[f32]) -> (f32, f32) {
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let sum: f32 = row.iter().map(|&x| (x - max).exp()).sum();
    let mean = row.iter().sum::<f32>() / row.len() as f32;
    (max + sum.ln(), mean)
}

fn cpu_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.contiguous()?.flatten_all()?.to_vec1::<f32>()?)
}

impl CustomOp1 for SmoothedCe {
    fn name(&self) -> &'static str {
        "smoothed-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, v) = layout.shape().dims2()?;
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("logits must be contiguous".into()))?;
        let x = &storage.as_slice::<f32>()?[start..end];
        let eps = self.smoothing;
        // Rows in parallel, summed in row order so that the loss is the same bits on every run.
        let rows: Vec<(f64, f64)> = x
            .par_chunks(v)
            .zip(self.targets.par_iter().zip(&self.scale))
            .map(|(row, (&t, &s))| {
                if s == 0.0 {
                    return (0f64, 0f64);
                }
                let (lse, mean) = row_stats(row);
                let nll = lse - row[t as usize];
                let per = (1.0 - eps) * nll + eps * (lse - mean);
                (s as f64 * per as f64, s as f64 * nll as f64)
            })
            .collect();
        let (loss, nll) = rows.iter().fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        debug_assert_eq!(self.targets.len(), n);
        *self.nll.lock().expect("the loss lock is never poisoned") = nll;
        Ok((CpuStorage::F32(vec![loss as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (_, v) = arg.dims2()?;
        let g = grad_res
            .to_dtype(candle_core::DType::F32)?
            .to_scalar::<f32>()?;
        let x = cpu_f32(arg).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let eps = self.smoothing;
        let uniform = eps / v as f32;
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(v)
            .zip(x.par_chunks(v))
            .zip(self.targets.par_iter().zip(&self.scale))
            .for_each(|((d, row), (&t, &s))| {
                if s == 0.0 {
                    return;
                }
                let (lse, _) = row_stats(row);
                let k = g * s;
                for (d, &x) in d.iter_mut().zip(row) {
                    *d = k * ((x - lse).exp() - uniform);
                }
                d[t as usize] -= k * (1.0 - eps);
            });
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// Label-smoothed cross-entropy over weighted rows: logits (N, V) f32 on the CPU, targets (N,),
/// weights (N,) (1 for real tokens, 0 for padding). Returns the differentiable weighted mean of
/// (1 − ε)·NLL + ε·(mean over the vocabulary of −log p), and the weighted mean NLL (no
/// smoothing) as a number.
pub fn smoothed_cross_entropy(
    logits: &Tensor,
    targets: &[u32],
    weights: &[f32],
    smoothing: f64,
) -> Result<(Tensor, f64)> {
    let (n, v) = logits.dims2()?;
    if targets.len() != n || weights.len() != n {
        return Err(Error::Invalid(format!(
            "{n} logit rows for {} targets and {} weights",
            targets.len(),
            weights.len()
        )));
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= v) {
        return Err(Error::UnknownTokenId {
            id: t,
            vocab_size: v,
        });
    }
    let total: f32 = weights.iter().sum();
    let scale = weights
        .iter()
        .map(|&w| w / total.max(f32::MIN_POSITIVE))
        .collect();
    let nll = Arc::new(Mutex::new(0.0));
    let op = SmoothedCe {
        targets: targets.to_vec(),
        scale,
        smoothing: smoothing as f32,
        nll: nll.clone(),
    };
    let logits = logits.to_dtype(candle_core::DType::F32)?.contiguous()?;
    if !matches!(&*logits.storage_and_layout().0, Storage::Cpu(_)) {
        return Err(Error::Invalid("the fused loss runs on CPU tensors".into()));
    }
    let loss = logits.apply_op1(op)?;
    let nll = *nll.lock().expect("the loss lock is never poisoned");
    Ok((loss, nll))
}

/// The same loss composed of differentiable candle ops (max, exp, sum, log, gather, mean): the
/// reference the fused op is checked against. Label-smoothed cross-entropy over the non-padding targets: logits (N, V), targets (N,),
/// weights (N,) 1 for real tokens and 0 for padding. Returns (mean loss, mean NLL), the NLL
/// without smoothing (what perplexity is computed from).
pub fn smoothed_loss(
    logits: &Tensor,
    targets: &Tensor,
    weights: &Tensor,
    smoothing: f64,
) -> Result<(Tensor, Tensor)> {
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    let nll = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    let smooth = logp.mean(D::Minus1)?.neg()?;
    let per = ((&nll * (1.0 - smoothing))? + (smooth * smoothing)?)?;
    let n = weights.sum_all()?;
    let loss = (per * weights)?.sum_all()?.div(&n)?;
    let nll = (nll * weights)?.sum_all()?.div(&n)?;
    Ok((loss, nll))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Value and gradient equal the composed, autograd version.
    #[test]
    fn fused_matches_composed() {
        let (n, v) = (5, 7);
        let vals: Vec<f32> = (0..n * v)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let x = Var::from_vec(vals, (n, v), &Device::Cpu).unwrap();
        let targets = [1u32, 6, 0, 3, 3];
        let weights = [1f32, 1.0, 0.0, 1.0, 1.0];
        for eps in [0.0, 0.1] {
            let (fused, nll) =
                smoothed_cross_entropy(x.as_tensor(), &targets, &weights, eps).unwrap();
            let t = Tensor::new(&targets, &Device::Cpu).unwrap();
            let w = Tensor::new(&weights, &Device::Cpu).unwrap();
            let (composed, cnll) = smoothed_loss(x.as_tensor(), &t, &w, eps).unwrap();
            let (a, b) = (
                fused.to_scalar::<f32>().unwrap(),
                composed.to_scalar::<f32>().unwrap(),
            );
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            assert!((nll as f32 - cnll.to_scalar::<f32>().unwrap()).abs() < 1e-5);
            let grad = |loss: &Tensor| {
                let g = loss.backward().unwrap();
                let g = g.get(x.as_tensor()).unwrap().flatten_all().unwrap();
                g.to_vec1::<f32>().unwrap()
            };
            let (ga, gb) = (grad(&fused), grad(&composed));
            let diff = ga
                .iter()
                .zip(&gb)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, crate::testutil::nan_max);
            assert!(diff < 1e-6, "eps {eps}: gradient differs by {diff}");
        }
    }

    #[test]
    fn smoothed_loss_without_smoothing_is_cross_entropy() {
        let logits = Tensor::new(&[[1f32, 2.0, 3.0], [0.5, 0.1, -1.0]], &Device::Cpu).unwrap();
        let t = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
        let w = Tensor::new(&[1f32, 0.0], &Device::Cpu).unwrap();
        let (loss, nll) = smoothed_loss(&logits, &t, &w, 0.0).unwrap();
        let want = -(3f32.exp() / (1f32.exp() + 2f32.exp() + 3f32.exp())).ln();
        assert!((loss.to_scalar::<f32>().unwrap() - want).abs() < 1e-6);
        assert!((nll.to_scalar::<f32>().unwrap() - want).abs() < 1e-6);
        let (smoothed, _) = smoothed_loss(&logits, &t, &w, 0.1).unwrap();
        assert!(smoothed.to_scalar::<f32>().unwrap() > want);
    }
}
