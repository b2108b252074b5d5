//! Cross-entropy over rows of logits.

use rayon::prelude::*;

use super::rows_per_task;
use super::simd::{self, simd_fn};

simd_fn! {
    fn cross_entropy_rows(logits: &[f32], lse: &mut [f32], targets: &[u32], v: usize) -> f64 {
        let mut loss = 0f64;
        for ((row, lse), &tg) in logits.chunks_exact(v).zip(lse.iter_mut()).zip(targets) {
            let m = simd::max(row);
            *lse = m + simd::sum_exp(row, m).ln();
            loss += (*lse - row[tg as usize]) as f64;
        }
        loss
    }
}

/// Mean over rows of −log softmax(logits)[target], logits (N, V); saves the log-sum-exp of each
/// row (N) for the backward.
pub fn cross_entropy_forward(logits: &[f32], lse: &mut [f32], targets: &[u32], v: usize) -> f32 {
    let rows = rows_per_task(v);
    // Chunks in parallel, summed in chunk order: the same bits on every run.
    let parts: Vec<f64> = logits
        .par_chunks(v * rows)
        .zip(lse.par_chunks_mut(rows))
        .zip(targets.par_chunks(rows))
        .map(|((l, s), tg)| cross_entropy_rows(l, s, tg, v))
        .collect();
    let total: f64 = parts.iter().sum();
    (total / targets.len() as f64) as f32
}

simd_fn! {
    fn cross_entropy_backward_rows(
        dlogits: &mut [f32],
        logits: &[f32],
        lse: &[f32],
        targets: &[u32],
        s: f32,
    ) {
        let v = logits.len() / lse.len();
        let rows = dlogits.chunks_exact_mut(v).zip(logits.chunks_exact(v));
        for ((d, row), (&lse, &tg)) in rows.zip(lse.iter().zip(targets)) {
            for (d, &x) in d.iter_mut().zip(row) {
                *d = s * simd::exp(x - lse);
            }
            d[tg as usize] -= s;
        }
    }
}

/// dlogits (N, V) = s · (softmax(logits) − onehot(target)): the gradient of s · the summed loss.
pub fn cross_entropy_backward(
    dlogits: &mut [f32],
    logits: &[f32],
    lse: &[f32],
    targets: &[u32],
    s: f32,
) {
    let v = logits.len() / lse.len();
    let rows = rows_per_task(v);
    dlogits
        .par_chunks_mut(v * rows)
        .zip(logits.par_chunks(v * rows))
        .zip(lse.par_chunks(rows).zip(targets.par_chunks(rows)))
        .for_each(|((d, l), (ls, tg))| cross_entropy_backward_rows(d, l, ls, tg, s));
}
