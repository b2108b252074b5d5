//! `decodex bench decode`: prompt processing and generation speed of any `Decoder`, measured
//! the way llama.cpp's `llama-bench` does (a prompt of P tokens in one forward pass; then G
//! tokens one at a time), with medians over repetitions.

use std::time::Instant;

use super::{beam_search, BeamConfig, Decoder, EarlyStopping};
use crate::error::Result;

#[derive(Debug, Clone, serde::Serialize)]
pub struct DecodeBench {
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub reps: usize,
    /// Prompt tokens per second of one forward pass over the whole prompt (median).
    pub prompt_tokens_per_sec: f64,
    /// Generated tokens per second, one token per step after the prompt (median).
    pub decode_tokens_per_sec: f64,
}

/// Runs `reps` rounds (after one warm-up round) of: the prompt `prompt` in one step, then
/// `new_tokens` greedy steps of one token each.
pub fn bench_decode<D: Decoder + ?Sized>(
    model: &D,
    prompt: &[u32],
    new_tokens: usize,
    reps: usize,
) -> Result<DecodeBench> {
    let (mut pp, mut tg) = (Vec::new(), Vec::new());
    for rep in 0..=reps {
        let mut cache = model.new_cache(1)?;
        let t0 = Instant::now();
        let mut logits = model.step(prompt, 1, &mut cache)?;
        let t_prompt = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        for _ in 0..new_tokens {
            let next = super::processors::argmax(&logits);
            logits = model.step(&[next], 1, &mut cache)?;
        }
        let t_gen = t1.elapsed().as_secs_f64();
        if rep > 0 {
            pp.push(prompt.len() as f64 / t_prompt);
            tg.push(new_tokens as f64 / t_gen);
        }
    }
    Ok(DecodeBench {
        prompt_tokens: prompt.len(),
        new_tokens,
        reps,
        prompt_tokens_per_sec: median(&mut pp),
        decode_tokens_per_sec: median(&mut tg),
    })
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
