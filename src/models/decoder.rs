//! `Decoder`, what the decoding engine (`decode`) drives: feed tokens after what a cache
//! holds, get the next-token logits; reorder cache rows for beam search. Decoder-only language
//! models implement it, and the decoder side of encoder–decoder models with the encoder output
//! inside the cache. The trait is object safe, so callers hold any model as `&dyn Decoder` and
//! never match on the architecture.

use std::any::Any;

use crate::error::{Error, Result};

/// Per-row state a decoder keeps between steps (its KV cache and the position of each row),
/// opaque to the engine: each model stores its own cache type and gets it back with `get`.
pub struct Cache(Box<dyn Any + Send>);

impl Cache {
    pub fn new<T: Any + Send>(state: T) -> Self {
        Cache(Box::new(state))
    }

    /// The model's own cache; an error if `self` came from another model type.
    pub fn get<T: Any>(&mut self) -> Result<&mut T> {
        self.0.downcast_mut::<T>().ok_or_else(|| {
            Error::Invalid(format!(
                "a decoding cache passed to a model of another type (wanted {})",
                std::any::type_name::<T>()
            ))
        })
    }
}

/// A model the decoding engine drives.
pub trait Decoder {
    /// Size of the logits rows `step` returns.
    fn vocab_size(&self) -> usize;

    /// The most positions (prompt + generated) the model can attend over.
    fn context_len(&self) -> usize;

    /// An empty cache for `batch` rows.
    fn new_cache(&self, batch: usize) -> Result<Cache>;

    /// Feeds `tokens`, (batch, len) row-major with the same len for every row, after what the
    /// cache holds, and returns the logits of the next token of each row: (batch, vocab_size)
    /// row-major.
    fn step(&self, tokens: &[u32], batch: usize, cache: &mut Cache) -> Result<Vec<f32>>;

    /// Several sequences at once, each (its tokens, its own one-row cache): continuous batching,
    /// where sequences at different positions join and leave between steps. Returns each
    /// sequence's next-token logits, the same bits as `step` of that sequence alone. The default
    /// steps them one by one; models override it to share the forward pass.
    fn step_many(&self, feeds: &mut [(&[u32], &mut Cache)]) -> Result<Vec<Vec<f32>>> {
        feeds
            .iter_mut()
            .map(|(tokens, cache)| self.step(tokens, 1, cache))
            .collect()
    }

    /// Replaces the cache rows by rows `rows` of the old cache, in that order (repeats allowed):
    /// how beam search expands one prompt into beams and follows the beams it keeps.
    fn select_rows(&self, cache: &mut Cache, rows: &[usize]) -> Result<()>;

    /// Σ over rows and positions of −log p(target | the row's inputs up to there): `inputs` and
    /// `targets` (batch, len) row-major, each row read from an empty cache (teacher forcing), as
    /// perplexity needs. The default feeds one position per step; models with a whole-sequence
    /// forward override it.
    fn sum_nll(&self, inputs: &[u32], targets: &[u32], batch: usize) -> Result<f64> {
        let len = inputs.len() / batch.max(1);
        let mut total = 0f64;
        for (row, tgt) in inputs.chunks_exact(len).zip(targets.chunks_exact(len)) {
            let mut cache = self.new_cache(1)?;
            for (&x, &y) in row.iter().zip(tgt) {
                let logits = self.step(&[x], 1, &mut cache)?;
                let max = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
                total += max + sum.ln() - logits[y as usize] as f64;
            }
        }
        Ok(total)
    }

    /// Before the first step: the first `pads[i]` positions of row i are padding (prompts of
    /// different lengths, left-padded), which the model must never attend to, with positions
    /// counted from each row's first real token. Models without attention masks refuse padding.
    fn set_padding(&self, cache: &mut Cache, pads: &[usize]) -> Result<()> {
        let _ = cache;
        if pads.iter().any(|&p| p > 0) {
            return Err(Error::Invalid(
                "this model decodes prompts of different lengths one at a time (no attention mask)"
                    .into(),
            ));
        }
        Ok(())
    }
}
