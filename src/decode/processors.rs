//! The logits-processor chain of Hugging Face `transformers` (4.46.3,
//! `generation/logits_process.py`), in the order `GenerationMixin._get_logits_processor` builds
//! it, plus greedy and seeded sampled token choice.
//!
//! For one row of logits (V,) the chain is:
//! 1. repetition penalty (`RepetitionPenaltyLogitsProcessor`, over prompt + generated ids);
//! 2. presence and frequency penalties (OpenAI's, over generated ids; not in `transformers`, run
//!    beside the repetition penalty it resembles);
//! 3. no-repeat n-grams (`NoRepeatNGramLogitsProcessor`, over prompt + generated ids);
//! 4. banned ids (`NoBadWordsLogitsProcessor` with single-token words: EOS ids are never banned);
//! 5. EOS suppressed before `min_new_tokens` (`MinNewTokensLengthLogitsProcessor`);
//!
//! and, when sampling only (HF's former "warpers", with `min_tokens_to_keep` = 1):
//! 6. temperature, 7. top-k, 8. top-p, 9. min-p, 10. typical-p.
//!
//! A filtered token gets `-inf`. Sorting ties are broken towards the lower token id everywhere
//! (PyTorch leaves the order of ties unspecified).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the next token is chosen from the processed logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// The most likely token (ties go to the lowest id); the sampling-only stages are skipped,
    /// as in HF with `do_sample=False`.
    Greedy,
    /// A draw from softmax(processed logits), seeded by `SamplingConfig::seed`.
    Sample,
}

/// Settings of the logits processors and of sampling. Field names and meanings follow Hugging
/// Face's `GenerationConfig`; the defaults switch every stage off, so that greedy decoding with
/// the default config is plain argmax.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingConfig {
    /// Divides the logits before sampling (default 1.0). 0 means greedy decoding even with the
    /// `sample` strategy (as OpenAI-style APIs do; HF rejects 0).
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (ties with the k-th are kept); 0 is off (default).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`, in (0, 1];
    /// 1.0 is off (default).
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the top token's, in [0, 1];
    /// 0.0 is off (default).
    pub min_p: f32,
    /// Typical decoding's mass, in (0, 1]; 1.0 is off (default).
    pub typical_p: f32,
    /// CTRL's penalty on every id of the prompt and the generated text: a positive logit is
    /// divided by it, a negative one multiplied. Must be positive; 1.0 is off (default).
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated (default 0.0).
    pub presence_penalty: f32,
    /// Subtracted from the logit of each token times the number of times it was generated
    /// (default 0.0).
    pub frequency_penalty: f32,
    /// No n-gram of this size occurs twice in prompt + generated ids; 0 is off (default).
    pub no_repeat_ngram_size: usize,
    /// EOS ids are forbidden until this many tokens have been generated (default 0).
    pub min_new_tokens: usize,
    /// Token ids that are never generated (EOS ids in this list are ignored, as in HF).
    pub banned_ids: Vec<u32>,
    /// Token ids that end generation (default none).
    pub eos_ids: Vec<u32>,
    /// Seed of the ChaCha8 generator used by the `sample` strategy (default 0).
    pub seed: u64,
    /// Keep the cache between steps (default). Off, each step re-reads the whole context
    /// (Hugging Face's `use_cache=False`): slower, for checking the cache.
    pub use_cache: bool,
    /// When prompt + generated ids outgrow the model's context, keep decoding on the last
    /// `context_len` of them (nanoGPT's crop; each step then re-reads the window) instead of
    /// stopping. Prompts longer than the context are cropped from the left. Default off.
    pub crop_context: bool,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            typical_p: 1.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            no_repeat_ngram_size: 0,
            min_new_tokens: 0,
            banned_ids: Vec::new(),
            eos_ids: Vec::new(),
            seed: 0,
            use_cache: true,
            crop_context: false,
        }
    }
}

impl SamplingConfig {
    /// Checks every value against the ranges documented on the fields.
    pub fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(Error::Invalid(msg));
        let t = self.temperature;
        if t.is_nan() || t < 0.0 || t.is_infinite() {
            return invalid(format!(
                "temperature ({t}) must be a finite number >= 0 (0 decodes greedily)"
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid(format!("top_p ({}) must be in (0, 1]", self.top_p));
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return invalid(format!("min_p ({}) must be in [0, 1]", self.min_p));
        }
        if !(self.typical_p > 0.0 && self.typical_p <= 1.0) {
            return invalid(format!("typical_p ({}) must be in (0, 1]", self.typical_p));
        }
        let r = self.repetition_penalty;
        if !(r > 0.0 && r.is_finite()) {
            return invalid(format!(
                "repetition_penalty ({r}) must be positive (1.0 is no penalty)"
            ));
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !v.is_finite() {
                return invalid(format!("{name} ({v}) must be a finite number"));
            }
        }
        Ok(())
    }

    /// The same settings with temperature 0 read as greedy decoding.
    pub fn effective_strategy(&self, strategy: Strategy) -> Strategy {
        if self.temperature == 0.0 {
            Strategy::Greedy
        } else {
            strategy
        }
    }
}

/// Applies the processors of `cfg` to one row of logits (V,) in Hugging Face's order (see the
/// module docs). `context` is prompt + generated ids, of which the last `generated` are new;
/// the sampling-only stages run only for `Strategy::Sample`.
pub fn process_logits(
    logits: &mut [f32],
    context: &[u32],
    generated: usize,
    cfg: &SamplingConfig,
    strategy: Strategy,
) {
    if cfg.repetition_penalty != 1.0 {
        repetition_penalty(logits, context, cfg.repetition_penalty);
    }
    let new_ids = &context[context.len() - generated..];
    if cfg.presence_penalty != 0.0 || cfg.frequency_penalty != 0.0 {
        presence_frequency_penalty(logits, new_ids, cfg.presence_penalty, cfg.frequency_penalty);
    }
    if cfg.no_repeat_ngram_size > 0 {
        no_repeat_ngram(logits, context, cfg.no_repeat_ngram_size);
    }
    ban_ids(logits, &cfg.banned_ids, &cfg.eos_ids);
    suppress_eos_before(logits, generated, cfg.min_new_tokens, &cfg.eos_ids);
    if strategy == Strategy::Sample {
        if cfg.temperature != 1.0 {
            temperature(logits, cfg.temperature);
        }
        if cfg.top_k != 0 {
            top_k(logits, cfg.top_k);
        }
        if cfg.top_p < 1.0 {
            top_p(logits, cfg.top_p);
        }
        if cfg.min_p > 0.0 {
            min_p(logits, cfg.min_p);
        }
        if cfg.typical_p < 1.0 {
            typical_p(logits, cfg.typical_p);
        }
    }
}

/// CTRL's repetition penalty, once per distinct id of `context`: `x < 0 ? x * p : x / p`.
pub fn repetition_penalty(logits: &mut [f32], context: &[u32], penalty: f32) {
    let mut seen = vec![false; logits.len()];
    for &id in context {
        let i = id as usize;
        if i < logits.len() && !seen[i] {
            seen[i] = true;
            let x = logits[i];
            logits[i] = if x < 0.0 { x * penalty } else { x / penalty };
        }
    }
}

/// OpenAI's penalties: `x -= frequency * count + presence * (count > 0)`, counting `new_ids`.
pub fn presence_frequency_penalty(
    logits: &mut [f32],
    new_ids: &[u32],
    presence: f32,
    frequency: f32,
) {
    let mut counts = vec![0u32; logits.len()];
    for &id in new_ids {
        if let Some(c) = counts.get_mut(id as usize) {
            *c += 1;
        }
    }
    for (x, &c) in logits.iter_mut().zip(&counts) {
        if c > 0 {
            *x -= frequency * c as f32 + presence;
        }
    }
}

/// Bans every token that would complete an n-gram (of size `n`) already present in `context`:
/// the tokens that followed earlier occurrences of the last n - 1 ids (for n = 1, every id seen).
pub fn no_repeat_ngram(logits: &mut [f32], context: &[u32], n: usize) {
    // HF's `_calc_banned_ngram_tokens`: nothing is banned before the context holds n - 1 ids.
    if context.len() + 1 < n {
        return;
    }
    let prefix = &context[context.len() + 1 - n..];
    for window in context.windows(n) {
        if &window[..n - 1] == prefix {
            mask(logits, window[n - 1]);
        }
    }
}

/// Sets the logits of `banned` ids to -inf, except EOS ids (HF's `NoBadWordsLogitsProcessor`
/// drops single-token bad words equal to an EOS id).
pub fn ban_ids(logits: &mut [f32], banned: &[u32], eos_ids: &[u32]) {
    for &id in banned.iter().filter(|id| !eos_ids.contains(id)) {
        mask(logits, id);
    }
}

/// Forbids every EOS id while fewer than `min_new_tokens` tokens have been generated.
pub fn suppress_eos_before(
    logits: &mut [f32],
    generated: usize,
    min_new_tokens: usize,
    eos_ids: &[u32],
) {
    if generated < min_new_tokens {
        for &id in eos_ids {
            mask(logits, id);
        }
    }
}

/// `x / t` (`TemperatureLogitsWarper`).
pub fn temperature(logits: &mut [f32], t: f32) {
    logits.iter_mut().for_each(|x| *x /= t);
}

/// Keeps the logits >= the k-th largest (`TopKLogitsWarper`: ties with the k-th survive).
pub fn top_k(logits: &mut [f32], k: usize) {
    let k = k.min(logits.len());
    let order = descending_order(logits);
    let kth = logits[order[k - 1]];
    for x in logits.iter_mut().filter(|x| **x < kth) {
        *x = f32::NEG_INFINITY;
    }
}

/// Nucleus filtering (`TopPLogitsWarper`): in ascending order of probability, drops tokens while
/// the cumulative probability stays <= 1 - p; the most likely token always survives.
pub fn top_p(logits: &mut [f32], p: f32) {
    let probs = softmax(logits);
    let mut ascending = descending_order(logits);
    ascending.reverse();
    let mut cumulative = 0.0f64;
    // The most likely token (last) is kept: min_tokens_to_keep = 1.
    for &i in &ascending[..ascending.len() - 1] {
        cumulative += probs[i] as f64;
        if cumulative as f32 <= 1.0 - p {
            logits[i] = f32::NEG_INFINITY;
        }
    }
}

/// Drops tokens whose probability is below `min_p` times the top probability
/// (`MinPLogitsWarper`); the most likely token always survives.
pub fn min_p(logits: &mut [f32], min_p: f32) {
    let probs = softmax(logits);
    let top = probs.iter().copied().fold(0.0f32, f32::max);
    let threshold = min_p * top;
    let best = descending_order(logits)[0];
    for (i, x) in logits.iter_mut().enumerate() {
        if i != best && probs[i] < threshold {
            *x = f32::NEG_INFINITY;
        }
    }
}

/// Typical decoding (`TypicalLogitsWarper`, Meister et al. 2022): ranks tokens by
/// |-log p - H| (H the entropy) and keeps them, in that order, until their probability reaches
/// `mass`, plus every token as typical as the last one kept.
pub fn typical_p(logits: &mut [f32], mass: f32) {
    let logp = log_softmax(logits);
    // H = -Σ p log p, skipping the 0 · -inf = NaN terms of filtered tokens (torch.nansum).
    let entropy: f32 = -logp
        .iter()
        .map(|&l| l * l.exp())
        .filter(|v| !v.is_nan())
        .sum::<f32>();
    let shifted: Vec<f32> = logp.iter().map(|&l| (-l - entropy).abs()).collect();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| shifted[a].total_cmp(&shifted[b]).then(a.cmp(&b)));
    let probs = softmax(logits);
    let mut cumulative = 0.0f64;
    let mut last = 0;
    for &i in &order {
        cumulative += probs[i] as f64;
        if (cumulative as f32) < mass {
            last += 1;
        }
    }
    let cutoff = shifted[order[last.min(order.len() - 1)]];
    // The first token in typicality order always survives: min_tokens_to_keep = 1.
    for &i in &order[1..] {
        if shifted[i] > cutoff {
            logits[i] = f32::NEG_INFINITY;
        }
    }
}

/// HF's `HammingDiversityLogitsProcessor` for one row of beam group `group`: subtracts
/// `penalty` times the number of times each token was chosen at this step by earlier groups
/// (`earlier_tokens`).
pub fn hamming_diversity(logits: &mut [f32], earlier_tokens: &[u32], penalty: f32) {
    for &id in earlier_tokens {
        if let Some(x) = logits.get_mut(id as usize) {
            *x -= penalty;
        }
    }
}

/// The most likely token; ties go to the lowest id and NaN logits are never chosen.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best: Option<usize> = None;
    for (i, &x) in logits.iter().enumerate() {
        if !x.is_nan() && best.is_none_or(|b| x > logits[b]) {
            best = Some(i);
        }
    }
    best.unwrap_or(0) as u32
}

/// Draws a token from softmax(logits) by inverting the cumulative distribution at one uniform
/// draw of `rng`; `None` when no token has a finite logit.
pub fn sample(logits: &[f32], rng: &mut ChaCha8Rng) -> Option<u32> {
    let max = logits
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return None;
    }
    let weights: Vec<f64> = logits
        .iter()
        .map(|&x| {
            if x.is_nan() {
                0.0
            } else {
                ((x - max) as f64).exp()
            }
        })
        .collect();
    let total: f64 = weights.iter().sum();
    let r = rng.gen::<f64>() * total;
    let mut cumulative = 0.0;
    let mut last_possible = 0;
    for (i, &w) in weights.iter().enumerate() {
        if w > 0.0 {
            cumulative += w;
            last_possible = i;
            if r < cumulative {
                return Some(i as u32);
            }
        }
    }
    // Rounding left r at the very top of the distribution.
    Some(last_possible as u32)
}

/// Chooses the next token from processed logits: argmax, or a draw for `Strategy::Sample`.
pub fn choose(logits: &[f32], strategy: Strategy, rng: &mut ChaCha8Rng) -> Option<u32> {
    match strategy {
        Strategy::Greedy => Some(argmax(logits)),
        Strategy::Sample => sample(logits, rng),
    }
}

/// log softmax of one row, in f32 with the max subtracted first (as PyTorch does).
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![f32::NEG_INFINITY; logits.len()];
    }
    let log_sum = sum_exp(logits, max).ln();
    logits.iter().map(|&x| x - max - log_sum).collect()
}

crate::kernels::simd::simd_fn! {
    /// Σ exp(x − max), vectorized: the vocabulary sweep of every beam-search step.
    fn sum_exp(x: &[f32], max: f32) -> f32 {
        crate::kernels::simd::sum_exp(x, max)
    }
}

/// softmax of one row, in f32 with the max subtracted first.
fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Token ids by decreasing logit, ties by increasing id.
fn descending_order(logits: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order
}

fn mask(logits: &mut [f32], id: u32) {
    if let Some(x) = logits.get_mut(id as usize) {
        *x = f32::NEG_INFINITY;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Logits whose softmax is `probs`.
    fn ln(probs: &[f32]) -> Vec<f32> {
        probs.iter().map(|p| p.ln()).collect()
    }

    /// The ids a filter left finite.
    fn kept(logits: &[f32]) -> Vec<usize> {
        (0..logits.len())
            .filter(|&i| logits[i].is_finite())
            .collect()
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            let ok = (g == w) || (g - w).abs() < 1e-5;
            assert!(ok, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn temperature_divides_the_logits() {
        let mut x = vec![1.0, 2.0, -3.0];
        temperature(&mut x, 0.5);
        assert_eq!(x, [2.0, 4.0, -6.0]);
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_logits_once() {
        // Token 1 appears twice in the context but is penalized once.
        let mut x = vec![1.0, -1.0, 0.5, 2.0];
        repetition_penalty(&mut x, &[0, 1, 1], 2.0);
        assert_eq!(x, [0.5, -2.0, 0.5, 2.0]);
        // Ids outside the vocabulary (a prompt from a larger tokenizer) are skipped.
        repetition_penalty(&mut x, &[4, 9], 2.0);
        assert_eq!(x, [0.5, -2.0, 0.5, 2.0]);
    }

    #[test]
    fn presence_and_frequency_penalties_count_generated_tokens_only() {
        let cfg = SamplingConfig {
            presence_penalty: 0.5,
            frequency_penalty: 0.1,
            ..Default::default()
        };
        // Prompt [3], generated [0, 0, 1]: 0 counted twice, 1 once, 3 not at all.
        let mut x = vec![0.0; 4];
        process_logits(&mut x, &[3, 0, 0, 1], 3, &cfg, Strategy::Greedy);
        assert_close(&x, &[-0.7, -0.6, 0.0, 0.0]);
    }

    /// Each penalty on its own, through the chain: presence without frequency, frequency
    /// without presence, and the n-gram ban (each stage runs when its own setting is on).
    #[test]
    fn process_logits_applies_each_penalty_alone() {
        let run = |cfg: SamplingConfig| {
            let mut x = vec![0.0; 4];
            process_logits(&mut x, &[1, 2, 3, 1], 2, &cfg, Strategy::Greedy);
            x
        };
        let presence = run(SamplingConfig {
            presence_penalty: 0.5,
            ..Default::default()
        });
        assert_close(&presence, &[0.0, -0.5, 0.0, -0.5]);
        let frequency = run(SamplingConfig {
            frequency_penalty: 0.25,
            ..Default::default()
        });
        assert_close(&frequency, &[0.0, -0.25, 0.0, -0.25]);
        let ngram = run(SamplingConfig {
            no_repeat_ngram_size: 2,
            ..Default::default()
        });
        assert_eq!(kept(&ngram), [0, 1, 3]); // (1, 2) was seen
        let mut x = vec![1.0, -1.0, 0.0, 0.0];
        let cfg = SamplingConfig {
            repetition_penalty: 2.0,
            ..Default::default()
        };
        process_logits(&mut x, &[0, 1], 0, &cfg, Strategy::Greedy);
        assert_close(&x, &[0.5, -2.0, 0.0, 0.0]);
    }

    /// The most likely token survives any top-p, even one so small that 1 − p rounds to 1 in
    /// f32 (HF's min_tokens_to_keep = 1).
    #[test]
    fn top_p_keeps_the_top_token_for_tiny_p() {
        let mut x = vec![1.0, 0.0, -1.0];
        top_p(&mut x, 1e-9);
        assert_eq!(kept(&x), [0]);
        // Large logits: the probabilities are exp(x − max) / Σ, so nothing overflows.
        let mut x = vec![100.0, 100.0 - 2f32.ln(), 0.0];
        top_p(&mut x, 0.5);
        assert_eq!(kept(&x), [0]);
    }

    /// A cumulative probability equal to typical_p does not extend the kept set (HF's
    /// `cumulative_probs < typical_p`): with the mass set to the most typical token's own
    /// probability, only that token stays.
    #[test]
    fn typical_p_stops_at_a_cumulative_mass_equal_to_p() {
        let mut x = vec![4f32.ln(), 2f32.ln(), 0.0, 0.0];
        let mass = softmax(&x)[1]; // p ≈ 1/4: -ln p is closest to the entropy 1.75 ln 2
        typical_p(&mut x, mass);
        assert_eq!(kept(&x), [1]);
    }

    /// With every setting at its default (HF's "off" values: top-p, typical-p 1, min-p 0,
    /// penalties 1 and 0) sampling sees the model's logits bit for bit, including a token of
    /// probability 1 − 1e-9 (the filters' sums reach 1.0 in f32 before the tail) and one whose
    /// probability underflows to 0.
    #[test]
    fn default_settings_leave_the_logits_unchanged() {
        let logits = vec![20.0, 0.0, 0.0, -200.0];
        let mut x = logits.clone();
        process_logits(
            &mut x,
            &[0, 1, 2, 3],
            2,
            &SamplingConfig::default(),
            Strategy::Sample,
        );
        assert_eq!(x, logits);
    }

    #[test]
    fn no_repeat_ngram_bans_tokens_completing_a_seen_ngram() {
        let mut x = vec![0.0; 4];
        no_repeat_ngram(&mut x, &[1, 2, 3, 1], 2); // (1, 2) was seen
        assert_eq!(kept(&x), [0, 1, 3]);
        let mut x = vec![0.0; 4];
        no_repeat_ngram(&mut x, &[1, 2, 3, 1, 2], 3); // (1, 2, 3) was seen
        assert_eq!(kept(&x), [0, 1, 2]);
        let mut x = vec![0.0; 4];
        no_repeat_ngram(&mut x, &[2, 0], 1); // every seen id
        assert_eq!(kept(&x), [1, 3]);
        let mut x = vec![0.0; 4];
        no_repeat_ngram(&mut x, &[1], 3); // shorter than n - 1: nothing
        assert_eq!(kept(&x), [0, 1, 2, 3]);
        let mut x = vec![0.0; 4];
        no_repeat_ngram(&mut x, &[2, 2], 2); // exactly n ids: (2, 2) was seen
        assert_eq!(kept(&x), [0, 1, 3]);
    }

    #[test]
    fn banned_ids_are_masked_except_eos() {
        let mut x = vec![0.0; 3];
        ban_ids(&mut x, &[1, 0], &[0]);
        assert_eq!(kept(&x), [0, 2]);
    }

    #[test]
    fn eos_is_suppressed_until_min_new_tokens() {
        let mut x = vec![0.0; 3];
        suppress_eos_before(&mut x, 1, 2, &[2]);
        assert_eq!(kept(&x), [0, 1]);
        let mut x = vec![0.0; 3];
        suppress_eos_before(&mut x, 2, 2, &[2]);
        assert_eq!(kept(&x), [0, 1, 2]);
    }

    #[test]
    fn top_k_keeps_the_k_largest_and_ties_with_the_kth() {
        let mut x = vec![1.0, 4.0, 2.0, 3.0];
        top_k(&mut x, 2);
        assert_eq!(kept(&x), [1, 3]);
        let mut x = vec![1.0, 3.0, 2.0, 3.0];
        top_k(&mut x, 1);
        assert_eq!(kept(&x), [1, 3]);
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus_reaching_p() {
        // Ascending cumulative probabilities: 0.1, 0.3, 0.6, 1.0.
        let p = [0.1, 0.2, 0.3, 0.4];
        for (top, want) in [(0.6, vec![2, 3]), (0.75, vec![1, 2, 3]), (0.01, vec![3])] {
            let mut x = ln(&p);
            top_p(&mut x, top);
            assert_eq!(kept(&x), want, "top_p {top}");
        }
    }

    #[test]
    fn min_p_drops_tokens_below_min_p_times_the_top_probability() {
        // Threshold 0.6 * 0.4 = 0.24.
        let mut x = ln(&[0.1, 0.2, 0.3, 0.4]);
        min_p(&mut x, 0.6);
        assert_eq!(kept(&x), [2, 3]);
    }

    #[test]
    fn typical_p_keeps_the_tokens_closest_to_the_entropy() {
        // H = 1.2799; |-ln p - H| = 1.0227, 0.3296, 0.0759, 0.3636, so the typical order is
        // 2, 1, 3, 0 with cumulative probabilities 0.3, 0.5, 0.9, 1.0.
        let p = [0.1, 0.2, 0.3, 0.4];
        let mut x = ln(&p);
        typical_p(&mut x, 0.6);
        assert_eq!(kept(&x), [1, 2, 3]);
        // Mass 0.4 stops after token 1: the most likely token is not typical enough.
        let mut x = ln(&p);
        typical_p(&mut x, 0.4);
        assert_eq!(kept(&x), [1, 2]);
    }

    #[test]
    fn hamming_diversity_subtracts_the_penalty_per_earlier_choice() {
        let mut x = vec![0.0; 4];
        hamming_diversity(&mut x, &[1, 1, 3], 0.5);
        assert_eq!(x, [0.0, -1.0, 0.0, -0.5]);
    }

    #[test]
    fn min_p_runs_after_temperature_and_greedy_skips_both() {
        let cfg = SamplingConfig {
            temperature: 0.5,
            min_p: 0.3,
            ..Default::default()
        };
        // At temperature 0.5 the probabilities become 0.033, 0.133, 0.3, 0.533 (threshold 0.16);
        // at temperature 1 min_p 0.3 would keep 1, 2, 3.
        let mut x = ln(&[0.1, 0.2, 0.3, 0.4]);
        process_logits(&mut x, &[0], 0, &cfg, Strategy::Sample);
        assert_eq!(kept(&x), [2, 3]);
        let mut x = ln(&[0.1, 0.2, 0.3, 0.4]);
        process_logits(&mut x, &[0], 0, &cfg, Strategy::Greedy);
        assert_eq!(x, ln(&[0.1, 0.2, 0.3, 0.4]));
    }

    #[test]
    fn validate_rejects_out_of_range_values() {
        assert!(SamplingConfig::default().validate().is_ok());
        let bad: [fn(&mut SamplingConfig); 7] = [
            |c| c.temperature = -1.0,
            |c| c.temperature = f32::NAN,
            |c| c.top_p = 0.0,
            |c| c.top_p = 1.5,
            |c| c.min_p = 1.5,
            |c| c.typical_p = 0.0,
            |c| c.repetition_penalty = 0.0,
        ];
        for set in bad {
            let mut cfg = SamplingConfig::default();
            set(&mut cfg);
            let invalid = matches!(cfg.validate(), Err(Error::Invalid(_)));
            assert!(invalid, "{cfg:?} should be invalid");
        }
        // 0 switches top_k off and temperature 0 means greedy: both are valid.
        let zero = SamplingConfig {
            temperature: 0.0,
            top_k: 0,
            ..Default::default()
        };
        assert!(zero.validate().is_ok());
        assert_eq!(zero.effective_strategy(Strategy::Sample), Strategy::Greedy);
    }

    #[test]
    fn argmax_prefers_the_lowest_id_among_ties_and_skips_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.5, 0.5]), 1);
    }

    #[test]
    fn sample_frequencies_follow_the_probabilities() {
        let p = [0.1, 0.2, 0.3, 0.4];
        let logits = ln(&p);
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let n = 20_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[sample(&logits, &mut rng).unwrap() as usize] += 1;
        }
        for (c, p) in counts.iter().zip(p) {
            assert!((*c as f32 / n as f32 - p).abs() < 0.015, "{counts:?}");
        }
        let masked = [f32::NEG_INFINITY, 0.0];
        assert!((0..100).all(|_| sample(&masked, &mut rng) == Some(1)));
        assert_eq!(sample(&[f32::NEG_INFINITY; 2], &mut rng), None);
        // Large logits: the weights are exp(x − max), so nothing overflows.
        let big = [400.0, 400.0 + 2f32.ln(), f32::NEG_INFINITY];
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            counts[sample(&big, &mut rng).unwrap() as usize] += 1;
        }
        assert_eq!(counts[2], 0, "{counts:?}");
        assert!(
            (counts[1] as f32 / 3000.0 - 2.0 / 3.0).abs() < 0.05,
            "{counts:?}"
        );
    }

    #[test]
    fn log_softmax_normalizes() {
        let p = [0.1, 0.2, 0.3, 0.4];
        assert_close(&log_softmax(&ln(&p)), &ln(&p));
        let shifted: Vec<f32> = ln(&p).iter().map(|x| x + 100.0).collect();
        assert_close(&log_softmax(&shifted), &ln(&p));
    }
}
