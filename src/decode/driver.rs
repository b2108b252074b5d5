//! Greedy and sampled decoding of one prompt through the `Decoder` trait: the prompt is fed
//! once, then one token per step, each chosen from logits run through the processor chain
//! (`processors.rs`), as Hugging Face's `GenerationMixin._sample` does.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::processors::{choose, log_softmax, process_logits, SamplingConfig, Strategy};
use super::Decoder;
use crate::error::{Error, Result};

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// An EOS id was generated (it is the last returned token).
    Eos,
    /// `max_new_tokens` tokens were generated.
    MaxNewTokens,
    /// Prompt + generated tokens filled the model's context.
    Context,
    /// The caller's `on_token` asked to stop (a stop string was generated).
    Stop,
}

/// What `generate_ids` produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GeneratedIds {
    /// The new tokens, ending with the EOS id when `stopped_by` is `Eos` (as HF's `sequences`).
    pub tokens: Vec<u32>,
    /// For each new token, its log-probability under log_softmax of the processed logits it was
    /// chosen from (after temperature, top-k, ... when sampling).
    pub logprobs: Vec<f32>,
    pub stopped_by: StopReason,
}

/// Generates up to `max_new_tokens` ids after `prompt_ids`, calling `on_token(id, logprob)` as
/// each is chosen. Stops after an EOS id of `cfg`, after `max_new_tokens`, or when prompt +
/// generated reaches `model.context_len()` (a prompt that already fills it yields nothing)
/// unless `cfg.crop_context` slides the window on.
///
/// Errors: an invalid `cfg`, an empty prompt or one longer than the context (without
/// `crop_context`), a model error, or sampling when the processors left no token possible.
pub fn generate_ids<D: Decoder + ?Sized>(
    model: &D,
    prompt_ids: &[u32],
    cfg: &SamplingConfig,
    strategy: Strategy,
    max_new_tokens: usize,
    mut on_token: impl FnMut(u32, f32),
) -> Result<GeneratedIds> {
    let keep_going = |t, l| {
        on_token(t, l);
        true
    };
    generate_ids_until(model, prompt_ids, cfg, strategy, max_new_tokens, keep_going)
}

/// `generate_ids` whose `on_token` also decides whether to go on: returning false ends
/// generation with `StopReason::Stop` (after that token).
pub fn generate_ids_until<D: Decoder + ?Sized>(
    model: &D,
    prompt_ids: &[u32],
    cfg: &SamplingConfig,
    strategy: Strategy,
    max_new_tokens: usize,
    mut on_token: impl FnMut(u32, f32) -> bool,
) -> Result<GeneratedIds> {
    cfg.validate()?;
    let window = model.context_len();
    let crop = cfg.crop_context;
    check_prompt(prompt_ids, if crop { usize::MAX } else { window })?;
    let strategy = cfg.effective_strategy(strategy);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut cache = model.new_cache(1)?;
    let mut context = prompt_ids.to_vec();
    let (mut tokens, mut logprobs) = (Vec::new(), Vec::new());
    let mut feed = prompt_ids[prompt_ids.len().saturating_sub(window)..].to_vec();
    let stopped_by = loop {
        if tokens.len() == max_new_tokens {
            break StopReason::MaxNewTokens;
        }
        if !crop && context.len() >= window {
            break StopReason::Context;
        }
        if !cfg.use_cache || (crop && context.len() > window && feed.len() < window) {
            // Re-read the window: no cache, or the window slid and every position shifted.
            cache = model.new_cache(1)?;
            feed = context[context.len().saturating_sub(window)..].to_vec();
        }
        let mut logits = model.step(&feed, 1, &mut cache)?;
        process_logits(&mut logits, &context, tokens.len(), cfg, strategy);
        let next = choose(&logits, strategy, &mut rng)
            .ok_or_else(|| Error::Invalid("the logits processors left no token possible".into()))?;
        let logprob = log_softmax(&logits)[next as usize];
        let go_on = on_token(next, logprob);
        tokens.push(next);
        logprobs.push(logprob);
        context.push(next);
        if cfg.eos_ids.contains(&next) {
            break StopReason::Eos;
        }
        if !go_on {
            break StopReason::Stop;
        }
        feed = vec![next];
    };
    Ok(GeneratedIds {
        tokens,
        logprobs,
        stopped_by,
    })
}

/// `generate_ids` for several prompts at once, as one batch: the prompts are left-padded to the
/// longest with `pad_id` (masked out by the model, `Decoder::set_padding`), then every step feeds
/// one token per row; a row that has stopped keeps feeding `pad_id` until all have. Row i samples
/// with seed `cfg.seed + i`. `on_token(row, id, logprob)` is called as tokens are chosen.
/// Returns one result per prompt, in order.
pub fn generate_batch<D: Decoder + ?Sized>(
    model: &D,
    prompts: &[Vec<u32>],
    cfg: &SamplingConfig,
    strategy: Strategy,
    max_new_tokens: usize,
    pad_id: u32,
    mut on_token: impl FnMut(usize, u32, f32),
) -> Result<Vec<GeneratedIds>> {
    cfg.validate()?;
    for p in prompts {
        check_prompt(p, model.context_len())?;
    }
    let strategy = cfg.effective_strategy(strategy);
    let rows = prompts.len();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut rngs: Vec<ChaCha8Rng> = (0..rows)
        .map(|i| ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(i as u64)))
        .collect();
    let mut cache = model.new_cache(rows)?;
    let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    model.set_padding(&mut cache, &pads)?;
    let mut feed: Vec<u32> = prompts
        .iter()
        .flat_map(|p| std::iter::repeat_n(pad_id, longest - p.len()).chain(p.iter().copied()))
        .collect();
    let mut contexts: Vec<Vec<u32>> = prompts.to_vec();
    let mut out: Vec<GeneratedIds> = (0..rows)
        .map(|_| GeneratedIds {
            tokens: Vec::new(),
            logprobs: Vec::new(),
            stopped_by: StopReason::MaxNewTokens,
        })
        .collect();
    let mut active = vec![true; rows];
    let mut fed = longest;
    while active.iter().any(|&a| a) {
        if fed >= model.context_len() {
            for (o, a) in out.iter_mut().zip(&active) {
                if *a {
                    o.stopped_by = StopReason::Context;
                }
            }
            break;
        }
        let logits = model.step(&feed, rows, &mut cache)?;
        fed += feed.len() / rows;
        let v = logits.len() / rows;
        for (i, row) in logits.chunks_exact(v).enumerate() {
            feed[i] = pad_id;
            if !active[i] {
                continue;
            }
            let mut row = row.to_vec();
            process_logits(&mut row, &contexts[i], out[i].tokens.len(), cfg, strategy);
            let next = choose(&row, strategy, &mut rngs[i]).ok_or_else(|| {
                Error::Invalid("the logits processors left no token possible".into())
            })?;
            let logprob = log_softmax(&row)[next as usize];
            on_token(i, next, logprob);
            out[i].tokens.push(next);
            out[i].logprobs.push(logprob);
            contexts[i].push(next);
            feed[i] = next;
            if cfg.eos_ids.contains(&next) {
                out[i].stopped_by = StopReason::Eos;
                active[i] = false;
            } else if out[i].tokens.len() == max_new_tokens {
                active[i] = false;
            }
        }
        feed.truncate(rows);
    }
    Ok(out)
}

/// A prompt must hold at least one id and fit in the context.
pub(crate) fn check_prompt(prompt_ids: &[u32], context_len: usize) -> Result<()> {
    if prompt_ids.is_empty() {
        return Err(Error::Invalid(
            "the prompt is empty; give at least one token (e.g. the EOS/BOS id)".into(),
        ));
    }
    if prompt_ids.len() > context_len {
        return Err(Error::Invalid(format!(
            "the prompt ({} tokens) is longer than the model's context ({context_len}); crop it",
            prompt_ids.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::mock::MockDecoder;
    use super::super::processors::argmax;
    use super::*;

    fn run(
        model: &MockDecoder,
        prompt: &[u32],
        cfg: &SamplingConfig,
        strategy: Strategy,
        max_new: usize,
    ) -> GeneratedIds {
        generate_ids(model, prompt, cfg, strategy, max_new, |_, _| {}).unwrap()
    }

    #[test]
    fn greedy_is_the_argmax_of_the_model_logits() {
        let model = MockDecoder::random(7, 64, 1);
        let prompt = [3, 1, 4];
        let mut streamed = Vec::new();
        let out = generate_ids(
            &model,
            &prompt,
            &SamplingConfig::default(),
            Strategy::Greedy,
            8,
            |t, lp| streamed.push((t, lp)),
        )
        .unwrap();
        let mut history = prompt.to_vec();
        for (i, (&t, &lp)) in out.tokens.iter().zip(&out.logprobs).enumerate() {
            let logits = model.logits(&history);
            assert_eq!(t, argmax(&logits), "token {i}");
            assert_eq!(lp, log_softmax(&logits)[t as usize]);
            history.push(t);
        }
        assert_eq!(out.tokens.len(), 8);
        assert_eq!(out.stopped_by, StopReason::MaxNewTokens);
        let zipped: Vec<_> = out
            .tokens
            .iter()
            .copied()
            .zip(out.logprobs.clone())
            .collect();
        assert_eq!(streamed, zipped);
        // The prompt is fed once, then one step per token but the last.
        assert_eq!(model.steps(), 8);
    }

    #[test]
    fn sampling_is_reproducible_for_a_seed() {
        let model = MockDecoder::random(50, 64, 2);
        let cfg = |seed| SamplingConfig {
            seed,
            temperature: 1.5,
            ..Default::default()
        };
        let a = run(&model, &[1], &cfg(42), Strategy::Sample, 20);
        let b = run(&model, &[1], &cfg(42), Strategy::Sample, 20);
        assert_eq!(a, b);
        let others: Vec<_> = (0..4)
            .map(|s| run(&model, &[1], &cfg(s), Strategy::Sample, 20).tokens)
            .collect();
        assert!(others.iter().any(|t| *t != a.tokens));
    }

    #[test]
    fn sampling_with_top_k_1_or_temperature_0_is_greedy() {
        let model = MockDecoder::random(50, 64, 3);
        let greedy = run(
            &model,
            &[5],
            &SamplingConfig::default(),
            Strategy::Greedy,
            10,
        );
        let top1 = SamplingConfig {
            top_k: 1,
            seed: 9,
            ..Default::default()
        };
        assert_eq!(
            run(&model, &[5], &top1, Strategy::Sample, 10).tokens,
            greedy.tokens
        );
        let cold = SamplingConfig {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(run(&model, &[5], &cold, Strategy::Sample, 10), greedy);
    }

    #[test]
    fn generation_stops_at_eos_at_max_new_tokens_or_at_the_context() {
        // Token 0 is the most likely after anything.
        let model = MockDecoder::fixed(vec![2.0, 1.0, 0.0], 6);
        let eos = SamplingConfig {
            eos_ids: vec![0],
            ..Default::default()
        };
        let out = run(&model, &[1], &eos, Strategy::Greedy, 10);
        assert_eq!((out.tokens, out.stopped_by), (vec![0], StopReason::Eos));
        // min_new_tokens holds EOS back for two tokens.
        let late = SamplingConfig {
            min_new_tokens: 2,
            ..eos.clone()
        };
        let out = run(&model, &[1], &late, Strategy::Greedy, 10);
        assert_eq!(
            (out.tokens, out.stopped_by),
            (vec![1, 1, 0], StopReason::Eos)
        );
        let cfg = SamplingConfig::default();
        let out = run(&model, &[1], &cfg, Strategy::Greedy, 2);
        assert_eq!(
            (out.tokens.len(), out.stopped_by),
            (2, StopReason::MaxNewTokens)
        );
        let out = run(&model, &[1, 2, 1], &cfg, Strategy::Greedy, 10);
        assert_eq!((out.tokens.len(), out.stopped_by), (3, StopReason::Context));
        let out = run(&model, &[1; 6], &cfg, Strategy::Greedy, 10);
        assert_eq!((out.tokens.len(), out.stopped_by), (0, StopReason::Context));
    }

    #[test]
    fn bad_prompts_and_configs_are_rejected() {
        let model = MockDecoder::fixed(vec![0.0; 3], 4);
        let cfg = SamplingConfig::default();
        let gen = |prompt: &[u32], cfg: &SamplingConfig| {
            generate_ids(&model, prompt, cfg, Strategy::Sample, 3, |_, _| {})
        };
        assert!(matches!(gen(&[], &cfg), Err(Error::Invalid(_))));
        assert!(matches!(gen(&[0; 5], &cfg), Err(Error::Invalid(_))));
        let bad = SamplingConfig {
            top_p: 2.0,
            ..Default::default()
        };
        assert!(matches!(gen(&[0], &bad), Err(Error::Invalid(_))));
        // Every token banned: nothing can be sampled.
        let none = SamplingConfig {
            banned_ids: vec![0, 1, 2],
            ..Default::default()
        };
        assert!(matches!(gen(&[0], &none), Err(Error::Invalid(_))));
    }
}
