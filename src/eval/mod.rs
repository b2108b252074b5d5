//! Evaluation metrics. Perplexity: the mean next-token cross-entropy over a whole text, read in
//! non-overlapping windows of the model's context, reported per token and in bits per byte so
//! that models with different tokenizers compare.
//!
//! [`bleu`]: corpus BLEU and chrF of translations, as sacreBLEU 2.4.3 computes them.
//!
//! [`retrieval`]: BEIR's file formats and nDCG@k, MRR@k and Recall@k as BEIR 2.2.0 (pytrec_eval)
//! computes them. [`sts`]: the STS Benchmark files and Spearman's and Pearson's correlation as
//! scipy computes them.

pub mod bleu;
pub mod porter;
pub mod retrieval;
pub mod rouge;
pub mod squad;
pub mod sts;

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::Decoder;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone, Serialize)]
pub struct PerplexityReport {
    pub file: String,
    pub bytes: usize,
    pub tokens: usize,
    /// Tokens that were predicted (every token but the first of each window).
    pub predicted: usize,
    pub loss: f64,
    pub perplexity: f64,
    pub bits_per_byte: f64,
}

/// Scores `text` with `model`: windows of `block_size + 1` tokens with stride `block_size`, so
/// every token after the first is predicted exactly once from up to `block_size` tokens of context.
pub fn perplexity(
    model: &dyn Decoder,
    tokenizer: &Tokenizer,
    text: &str,
    file: &Path,
    batch: usize,
) -> Result<PerplexityReport> {
    let ids = tokenizer.encode(text).map_err(|e| Error::Encode {
        path: file.to_path_buf(),
        source: Box::new(e),
    })?;
    let t = model.context_len();
    let mut windows: Vec<&[u32]> = Vec::new();
    let mut start = 0;
    while start + 1 < ids.len() {
        let end = (start + t + 1).min(ids.len());
        windows.push(&ids[start..end]);
        start += t;
    }
    let mut total = 0.0f64;
    let mut count = 0usize;
    for chunk in windows.chunks(batch.max(1)) {
        // Windows of one length go together; only the last window can be shorter.
        for group in chunk.chunk_by(|a, b| a.len() == b.len()) {
            let n = group[0].len() - 1;
            let x: Vec<u32> = group.iter().flat_map(|w| w[..n].iter().copied()).collect();
            let y: Vec<u32> = group.iter().flat_map(|w| w[1..].iter().copied()).collect();
            total += model.sum_nll(&x, &y, group.len())?;
            count += group.len() * n;
        }
    }
    let loss = total / count.max(1) as f64;
    let bytes = text.len();
    Ok(PerplexityReport {
        file: file.display().to_string(),
        bytes,
        tokens: ids.len(),
        predicted: count,
        loss,
        perplexity: loss.exp(),
        bits_per_byte: total / std::f64::consts::LN_2 / bytes.max(1) as f64,
    })
}
