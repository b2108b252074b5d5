//! Decoding: greedy search and sampling (temperature, top-k, top-p) with a KV cache, streaming
//! text as it is produced. Strategies are data (`Sampling`), dispatched in one place (`pick`).
//!
//! Every model decodes through the `Decoder` trait: feed tokens after what a cache holds, get
//! the next-token logits; reorder cache rows for beam search. The model-independent engine
//! drives that trait: `processors` (Hugging Face's logits-processor chain, greedy and seeded
//! sampling), `driver` (`generate_ids`, greedy or sampled decoding of one prompt) and `beam`
//! (beam search and diverse group beam search).

pub mod beam;
pub mod bench;
pub mod driver;
#[cfg(test)]
mod mock;
pub mod processors;
pub mod translate;

pub use beam::{beam_search, BeamConfig, BeamHypothesis, EarlyStopping};
pub use driver::{generate_batch, generate_ids, GeneratedIds, StopReason};
pub use processors::{process_logits, SamplingConfig, Strategy};

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::models::Gpt;
pub use crate::models::{Cache, Decoder};
use crate::nn::KvCache;
use crate::tokenizer::Tokenizer;

/// How the next token is chosen.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    /// The most likely token.
    Greedy,
    /// Sample from softmax(logits / temperature), restricted to the top-k tokens and to the
    /// smallest set whose probability reaches top_p.
    Sample {
        temperature: f32,
        top_k: Option<usize>,
        top_p: Option<f32>,
        seed: u64,
    },
}

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampling: Sampling,
    /// Stop when the generated text contains any of these (the stop string is not returned).
    pub stop: Vec<String>,
    /// Use the KV cache (default); without it each step re-reads the whole window.
    pub use_cache: bool,
}

impl GenerateOptions {
    pub fn validate(&self) -> Result<()> {
        if let Sampling::Sample {
            temperature,
            top_k,
            top_p,
            ..
        } = &self.sampling
        {
            if temperature.is_nan() || *temperature <= 0.0 {
                return Err(Error::Invalid(format!(
                    "temperature ({temperature}) must be positive; use greedy decoding for 0"
                )));
            }
            if *top_k == Some(0) {
                return Err(Error::Invalid("top_k must be at least 1".into()));
            }
            if let Some(p) = top_p {
                if !(*p > 0.0 && *p <= 1.0) {
                    return Err(Error::Invalid(format!("top_p ({p}) must be in (0, 1]")));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Generation {
    pub text: String,
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    pub stopped_by: String,
}

/// Chooses the next token from one row of logits.
pub fn pick(logits: &[f32], sampling: &Sampling, rng: &mut ChaCha8Rng) -> u32 {
    match sampling {
        Sampling::Greedy => argmax(logits),
        Sampling::Sample {
            temperature,
            top_k,
            top_p,
            ..
        } => {
            let mut idx: Vec<usize> = (0..logits.len()).collect();
            // Sort by logit, descending; ties keep the lower id first (stable sort).
            idx.sort_by(|&a, &b| {
                logits[b]
                    .partial_cmp(&logits[a])
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            if let Some(k) = top_k {
                // Every token tied with the k-th stays, as in HF's `TopKLogitsWarper` (and
                // `processors::top_k`): the filter removes only logits below the k-th largest.
                let k = (*k).clamp(1, idx.len());
                let kth = logits[idx[k - 1]];
                let keep = k + idx[k..].iter().take_while(|&&i| logits[i] >= kth).count();
                idx.truncate(keep);
            }
            let max = logits[idx[0]];
            let mut probs: Vec<f32> = idx
                .iter()
                .map(|&i| ((logits[i] - max) / temperature).exp())
                .collect();
            let sum: f32 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= sum);
            if let Some(p) = top_p {
                let mut acc = 0.0;
                let mut keep = probs.len();
                for (j, q) in probs.iter().enumerate() {
                    acc += q;
                    if acc >= *p {
                        keep = j + 1;
                        break;
                    }
                }
                probs.truncate(keep);
                idx.truncate(keep);
                let s: f32 = probs.iter().sum();
                probs.iter_mut().for_each(|q| *q /= s);
            }
            let r: f32 = rng.gen();
            let mut acc = 0.0;
            for (j, q) in probs.iter().enumerate() {
                acc += q;
                if r < acc {
                    return idx[j] as u32;
                }
            }
            idx[probs.len() - 1] as u32
        }
    }
}

fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// Generates up to `max_new_tokens` after `prompt`, calling `on_text` with each new piece of
/// text as soon as it is complete (a BPE token that ends inside a multi-byte character waits for
/// the next one). Prompts longer than the context are cropped from the left, keeping the last
/// `block_size` tokens; once the window is full, each step re-reads the last `block_size` tokens.
pub fn generate(
    model: &Gpt,
    tokenizer: &Tokenizer,
    prompt: &str,
    opts: &GenerateOptions,
    device: &Device,
    mut on_text: impl FnMut(&str),
) -> Result<Generation> {
    opts.validate()?;
    let block = model.cfg.block_size;
    let mut ids = tokenizer.encode(prompt)?;
    let prompt_tokens = ids.len();
    if ids.is_empty() {
        // An empty prompt starts from the end-of-text token, or from token 0 (nanoGPT's choice
        // for character models, where 0 is '\n').
        ids.push(tokenizer.eos_id().unwrap_or(0));
    }
    if ids.len() > block {
        ids.drain(..ids.len() - block);
    }
    let start = ids.len();
    let seed = match opts.sampling {
        Sampling::Sample { seed, .. } => seed,
        Sampling::Greedy => 0,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut cache = KvCache::new(model.cfg.n_layer);
    let mut emitted = String::new();
    let mut stopped_by = "max_new_tokens".to_string();
    // The cache holds ids[cache_start..fed]; positions count from cache_start.
    let (mut cache_start, mut fed) = (0usize, 0usize);
    for _ in 0..opts.max_new_tokens {
        let window_start = ids.len().saturating_sub(block);
        let logits = if opts.use_cache {
            if window_start != cache_start {
                // The window slid: every position shifts, so the cache is rebuilt.
                cache.clear();
                cache_start = window_start;
                fed = window_start;
            }
            let new = &ids[fed..];
            let x = Tensor::from_slice(new, (1, new.len()), device)?;
            fed = ids.len();
            model.forward(&x, Some(&mut cache), None)?
        } else {
            let window = &ids[window_start..];
            let x = Tensor::from_slice(window, (1, window.len()), device)?;
            model.forward(&x, None, None)?
        };
        let t = logits.dim(1)?;
        let last = logits.get(0)?.get(t - 1)?.to_vec1::<f32>()?;
        let next = pick(&last, &opts.sampling, &mut rng);
        ids.push(next);
        if tokenizer.eos_id() == Some(next) {
            stopped_by = "eos".into();
            ids.pop();
            break;
        }
        let text = tokenizer.decode(&ids[start..])?;
        if let Some(s) = opts.stop.iter().find(|s| text.contains(s.as_str())) {
            let cut = text.find(s.as_str()).unwrap_or(text.len());
            if cut > emitted.len() {
                on_text(&text[emitted.len()..cut]);
            }
            emitted = text[..cut].to_string();
            stopped_by = format!("stop:{s}");
            break;
        }
        // Hold back text that may still grow into a stop string or an incomplete character.
        let mut safe = if text.ends_with('\u{FFFD}') {
            text.trim_end_matches('\u{FFFD}').len()
        } else {
            text.len()
        };
        if let Some(hold) = opts.stop.iter().map(|s| s.len().saturating_sub(1)).max() {
            safe = safe.saturating_sub(hold);
        }
        while safe > emitted.len() && !text.is_char_boundary(safe) {
            safe -= 1;
        }
        if safe > emitted.len() && text.starts_with(&emitted) {
            on_text(&text[emitted.len()..safe]);
            emitted = text[..safe].to_string();
        }
    }
    let final_text = if stopped_by.starts_with("stop:") {
        emitted.clone()
    } else {
        tokenizer.decode(&ids[start..])?
    };
    if final_text.len() > emitted.len() && final_text.starts_with(&emitted) {
        on_text(&final_text[emitted.len()..]);
    }
    Ok(Generation {
        text: final_text,
        tokens: ids[start..].to_vec(),
        prompt_tokens,
        stopped_by,
    })
}
