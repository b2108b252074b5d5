//! `decodex bench decode`: prompt processing and generation speed of any `Decoder`, measured
//! the way llama.cpp's `llama-bench` does (`-p P`: a prompt of P tokens; `-n G`: G tokens one at
//! a time; each test after `-d D` tokens already in the cache), with medians over repetitions.

use std::time::Instant;

use super::{beam_search, BeamConfig, Cache, Decoder, EarlyStopping};
use crate::error::{Error, Result};

#[derive(Debug, Clone, serde::Serialize)]
pub struct DecodeBench {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// Tokens in the cache before each test (llama-bench's `-d`).
    pub depth: usize,
    pub reps: usize,
    /// Prompt tokens per second (median); `None` without a prompt test.
    pub prompt_tokens_per_sec: Option<f64>,
    /// Generated tokens per second, one token per step (median); `None` without a generation
    /// test.
    pub decode_tokens_per_sec: Option<f64>,
}

/// Prompts are fed in pieces of this many tokens, so that progress can be shown between them
/// (a Llama processes a longer prompt in the same pieces anyway).
const PIECE: usize = 512;

/// Feeds `ids` to a one-row cache in pieces; `progress(done, total)` after each.
fn feed<D: Decoder + ?Sized>(
    model: &D,
    ids: &[u32],
    cache: &mut Cache,
    progress: &dyn Fn(usize, usize),
) -> Result<Vec<f32>> {
    let mut logits = Vec::new();
    for (i, piece) in ids.chunks(PIECE).enumerate() {
        logits = model.step(piece, 1, cache)?;
        progress(i * PIECE + piece.len(), ids.len());
    }
    Ok(logits)
}

/// llama-bench's two tests, each after `depth` tokens of `text` fill the cache (untimed), with
/// one warm-up round and then `reps` timed ones: a prompt of `prompt_tokens` (its tokens/s), and
/// `new_tokens` greedy steps of one token (theirs). A count of 0 skips its test. `progress` sees
/// the tokens fed so far of every prompt and fill.
pub fn bench_decode<D: Decoder + ?Sized>(
    model: &D,
    text: &[u32],
    (depth, prompt_tokens, new_tokens): (usize, usize, usize),
    reps: usize,
    progress: &dyn Fn(usize, usize),
) -> Result<DecodeBench> {
    if text.len() < depth + prompt_tokens.max(1) {
        return Err(Error::Invalid(format!(
            "the benchmark text has {} tokens, fewer than depth {depth} + prompt {prompt_tokens}",
            text.len()
        )));
    }
    let fill = |n: usize| -> Result<(Cache, Vec<f32>)> {
        let mut cache = model.new_cache(1)?;
        let logits = feed(model, &text[..n], &mut cache, progress)?;
        Ok((cache, logits))
    };
    check_context(model, depth, prompt_tokens, new_tokens)?;
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for rep in 0..=reps {
        if prompt_tokens > 0 {
            let (mut cache, _) = fill(depth)?;
            let t0 = Instant::now();
            feed(
                model,
                &text[depth..depth + prompt_tokens],
                &mut cache,
                progress,
            )?;
            if rep > 0 {
                pp.push(prompt_tokens as f64 / t0.elapsed().as_secs_f64());
            }
        }
        if new_tokens > 0 {
            // As llama-bench's tg: one token at a time from the depth on, the first one the
            // text's next.
            let (mut cache, _) = fill(depth)?;
            let mut next = text[depth];
            let t1 = Instant::now();
            for _ in 0..new_tokens {
                let logits = model.step(&[next], 1, &mut cache)?;
                next = super::processors::argmax(&logits);
            }
            if rep > 0 {
                tg.push(new_tokens as f64 / t1.elapsed().as_secs_f64());
            }
        }
    }
    Ok(DecodeBench {
        prompt_tokens,
        new_tokens,
        depth,
        reps,
        prompt_tokens_per_sec: (!pp.is_empty()).then(|| median(&mut pp)),
        decode_tokens_per_sec: (!tg.is_empty()).then(|| median(&mut tg)),
    })
}

/// Refuses tests that do not fit the model's context: each runs after `depth` tokens.
pub fn check_context<D: Decoder + ?Sized>(
    model: &D,
    depth: usize,
    prompt_tokens: usize,
    new_tokens: usize,
) -> Result<()> {
    let n = prompt_tokens.max(new_tokens);
    if depth + n > model.context_len() {
        let test = if prompt_tokens >= new_tokens {
            "prompt"
        } else {
            "new"
        };
        return Err(Error::Invalid(format!(
            "depth {depth} + {n} {test} tokens exceed the model's context of {}",
            model.context_len()
        )));
    }
    Ok(())
}

fn median(x: &mut [f64]) -> f64 {
    x.sort_by(|a, b| a.total_cmp(b));
    x.get(x.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `bench decode --num-beams`: the most prompt tokens the beam search starts from, and the
/// tokens it generates.
pub const BEAM_PROMPT: usize = 32;
pub const BEAM_NEW: usize = 32;

/// New tokens per second of a beam search with `num_beams` beams for 32 tokens (no EOS stop)
/// after the first 32 of `ids`.
pub fn bench_beam(m: &dyn Decoder, ids: &[u32], num_beams: usize) -> Result<f64> {
    let cfg = BeamConfig {
        num_beams,
        max_new_tokens: BEAM_NEW,
        early_stopping: EarlyStopping::True,
        ..BeamConfig::default()
    };
    let t = Instant::now();
    let hyps = beam_search(m, &ids[..ids.len().min(BEAM_PROMPT)], &cfg)?;
    let n = hyps.first().map_or(0, |h| h.tokens.len());
    Ok(n as f64 / t.elapsed().as_secs_f64())
}
