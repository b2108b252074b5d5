//! A deterministic `Decoder` for the engine's tests. The logits of a row are a pure function of
//! the row's whole history (prompt + fed tokens), so feeding a row the wrong tokens or reordering
//! the cache wrongly changes the logits the engine sees; the cache checks every call's shape.

use std::cell::Cell;

use super::{Cache, Decoder};
use crate::error::{Error, Result};

/// Logits for a history; see `MockDecoder::random` and `MockDecoder::fixed`.
type LogitsFn = Box<dyn Fn(&[u32]) -> Vec<f32>>;

pub struct MockDecoder {
    vocab: usize,
    context: usize,
    logits_of: LogitsFn,
    steps: Cell<usize>,
}

/// The history (prompt + fed tokens) of each row.
pub struct MockCache {
    rows: Vec<Vec<u32>>,
}

impl MockDecoder {
    /// Pseudo-random logits in [-4, 4), hashed from `seed` and the whole history.
    pub fn random(vocab: usize, context: usize, seed: u64) -> Self {
        let logits_of = move |history: &[u32]| {
            let h = history
                .iter()
                .fold(splitmix(seed), |h, &t| splitmix(h ^ t as u64));
            (0..vocab as u64)
                .map(|t| (splitmix(h ^ (t << 32)) >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0)
                .collect()
        };
        Self::new(vocab, context, Box::new(logits_of))
    }

    /// The same logits after every history.
    pub fn fixed(logits: Vec<f32>, context: usize) -> Self {
        let vocab = logits.len();
        Self::new(vocab, context, Box::new(move |_: &[u32]| logits.clone()))
    }

    fn new(vocab: usize, context: usize, logits_of: LogitsFn) -> Self {
        MockDecoder {
            vocab,
            context,
            logits_of,
            steps: Cell::new(0),
        }
    }

    /// The logits the model returns after `history`.
    pub fn logits(&self, history: &[u32]) -> Vec<f32> {
        (self.logits_of)(history)
    }

    /// How many times `step` was called.
    pub fn steps(&self) -> usize {
        self.steps.get()
    }
}

impl Decoder for MockDecoder {
    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn context_len(&self) -> usize {
        self.context
    }

    fn new_cache(&self, batch: usize) -> Result<Cache> {
        Ok(Cache::new(MockCache {
            rows: vec![Vec::new(); batch],
        }))
    }

    fn step(&self, tokens: &[u32], batch: usize, cache: &mut Cache) -> Result<Vec<f32>> {
        let cache = cache.get::<MockCache>()?;
        self.steps.set(self.steps.get() + 1);
        if batch != cache.rows.len() || batch == 0 || tokens.is_empty() {
            return Err(Error::Invalid(format!(
                "mock: step on batch {batch} with {} tokens, cache has {} rows",
                tokens.len(),
                cache.rows.len()
            )));
        }
        if !tokens.len().is_multiple_of(batch) || tokens.iter().any(|&t| t as usize >= self.vocab) {
            return Err(Error::Invalid(format!("mock: bad tokens {tokens:?}")));
        }
        let len = tokens.len() / batch;
        let mut logits = Vec::with_capacity(batch * self.vocab);
        for (row, new) in cache.rows.iter_mut().zip(tokens.chunks(len)) {
            row.extend_from_slice(new);
            if row.len() > self.context {
                return Err(Error::Invalid("mock: context overflow".into()));
            }
            logits.extend(self.logits(row));
        }
        Ok(logits)
    }

    fn select_rows(&self, cache: &mut Cache, rows: &[usize]) -> Result<()> {
        let cache = cache.get::<MockCache>()?;
        if rows.iter().any(|&r| r >= cache.rows.len()) {
            return Err(Error::Invalid(format!("mock: bad rows {rows:?}")));
        }
        cache.rows = rows.iter().map(|&r| cache.rows[r].clone()).collect();
        Ok(())
    }
}

/// SplitMix64's output function: a cheap, well-mixed hash of one u64.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
