//! Beam search and diverse (group) beam search with the semantics of Hugging Face
//! `transformers` 4.46.3: `BeamSearchScorer` and `BeamHypotheses` (`generation/beam_search.py`),
//! `_beam_search` and `_group_beam_search` (`generation/utils.py`). Plain beam search is the
//! one-group case of group beam search, exactly as in HF.
//!
//! Each step, for every beam: log_softmax of its logits (f32), then the processors (Hamming
//! diversity against the tokens earlier groups chose this step, no-repeat n-grams over prompt +
//! beam, EOS suppressed before `min_new_tokens`), plus the beam's running score (f32). Per group,
//! the top `max(2, 1 + #eos) · group_size` candidates over (beam, token) are read in order: an
//! EOS candidate ranked below `group_size` becomes a finished hypothesis, others are skipped;
//! the first `group_size` non-EOS candidates become the next beams.
//!
//! **Score.** A hypothesis' `score` is HF's `sequences_scores`:
//! `sum_logprobs / generated_len ^ length_penalty`, where `sum_logprobs` is the f32 running
//! score (processed log-probabilities, so Hamming penalties included) and `generated_len` counts
//! the new tokens only — the prompt is not counted (HF 4.46.3 passes
//! `generated_len = cur_len - decoder_prompt_len`) — including the EOS token of a finished
//! hypothesis (`cur_len` is the length with the EOS appended). Scores are compared in f64, as
//! HF compares Python floats, and returned as f32 like HF's float32 `sequences_scores`.
//!
//! **Tokens.** A hypothesis holds the new tokens only, ending with the EOS id it generated when
//! it finished on EOS (HF's `sequences` show the prompt, then the tokens, then
//! `eos_token_id[0]`); open beams added at the end carry no EOS.
//!
//! Ties among candidates go to the lower (beam, token) index; PyTorch's `topk` leaves their
//! order unspecified.

use serde::{Deserialize, Serialize};

use super::driver::check_prompt;
use super::processors::{hamming_diversity, log_softmax, no_repeat_ngram, suppress_eos_before};
use super::Decoder;
use crate::error::{Error, Result};

/// When a beam group stops (HF's `early_stopping`: `true`, `false` or `"never"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "EarlyStoppingRepr", into = "EarlyStoppingRepr")]
pub enum EarlyStopping {
    /// As soon as `group_size` hypotheses have finished.
    True,
    /// When the best candidate, normalized by the current length, cannot beat the worst
    /// finished hypothesis (HF's heuristic: exact only for length_penalty <= 0).
    False,
    /// When no hypothesis can become better: for length_penalty > 0 the best candidate is
    /// normalized by the longest possible length (`min(max_new_tokens, context_len - prompt)`),
    /// otherwise by the current one.
    Never,
}

/// HF's JSON spelling of `early_stopping`: a bool, or the string "never".
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum EarlyStoppingRepr {
    Bool(bool),
    Str(String),
}

impl TryFrom<EarlyStoppingRepr> for EarlyStopping {
    type Error = String;

    fn try_from(repr: EarlyStoppingRepr) -> std::result::Result<Self, String> {
        match repr {
            EarlyStoppingRepr::Bool(true) => Ok(Self::True),
            EarlyStoppingRepr::Bool(false) => Ok(Self::False),
            EarlyStoppingRepr::Str(s) if s == "never" => Ok(Self::Never),
            EarlyStoppingRepr::Str(s) => Err(format!(
                "early_stopping must be true, false or \"never\", not {s:?}"
            )),
        }
    }
}

impl From<EarlyStopping> for EarlyStoppingRepr {
    fn from(e: EarlyStopping) -> Self {
        match e {
            EarlyStopping::True => Self::Bool(true),
            EarlyStopping::False => Self::Bool(false),
            EarlyStopping::Never => Self::Str("never".into()),
        }
    }
}

/// Settings of beam search; names and defaults follow HF's `GenerationConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BeamConfig {
    /// Beams kept per step, over all groups (default 4). 1 runs this search with one beam,
    /// where HF would switch to greedy search.
    pub num_beams: usize,
    /// Groups of `num_beams / num_beam_groups` beams, searched one after the other each step;
    /// must divide `num_beams` (default 1: plain beam search).
    pub num_beam_groups: usize,
    /// Subtracted from a token's log-probability in a group once per earlier group's beam that
    /// chose it this step (default 0.0).
    pub diversity_penalty: f32,
    /// Exponent of the generated length dividing a hypothesis' log-probability: > 0 favours
    /// longer sequences, < 0 shorter ones (default 1.0).
    pub length_penalty: f64,
    /// When a group stops searching (default `False`, HF's default).
    pub early_stopping: EarlyStopping,
    /// Hypotheses returned, best first; at most `num_beams` (default 1).
    pub num_return_sequences: usize,
    /// No n-gram of this size occurs twice in prompt + beam; 0 is off (default).
    pub no_repeat_ngram_size: usize,
    /// EOS ids are forbidden until this many tokens have been generated (default 0).
    pub min_new_tokens: usize,
    /// Token ids that finish a hypothesis (default none: every beam runs to the end).
    pub eos_ids: Vec<u32>,
    /// The most tokens generated after the prompt (default 20, HF's `max_length`).
    pub max_new_tokens: usize,
}

impl Default for BeamConfig {
    fn default() -> Self {
        Self {
            num_beams: 4,
            num_beam_groups: 1,
            diversity_penalty: 0.0,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::False,
            num_return_sequences: 1,
            no_repeat_ngram_size: 0,
            min_new_tokens: 0,
            eos_ids: Vec::new(),
            max_new_tokens: 20,
        }
    }
}

impl BeamConfig {
    /// Checks the values against the ranges documented on the fields.
    pub fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(Error::Invalid(msg));
        let (beams, groups) = (self.num_beams, self.num_beam_groups);
        if beams == 0 {
            return invalid("num_beams must be at least 1".into());
        }
        if groups == 0 || !beams.is_multiple_of(groups) {
            return invalid(format!(
                "num_beam_groups ({groups}) must divide num_beams ({beams})"
            ));
        }
        let n = self.num_return_sequences;
        if n == 0 || n > beams {
            return invalid(format!(
                "num_return_sequences ({n}) must be between 1 and num_beams ({beams})"
            ));
        }
        let d = self.diversity_penalty;
        if !(d >= 0.0 && d.is_finite()) {
            return invalid(format!(
                "diversity_penalty ({d}) must be a finite number >= 0"
            ));
        }
        if !self.length_penalty.is_finite() {
            return invalid(format!(
                "length_penalty ({}) must be finite",
                self.length_penalty
            ));
        }
        if self.max_new_tokens == 0 {
            return invalid("max_new_tokens must be at least 1 for beam search".into());
        }
        Ok(())
    }
}

/// One returned sequence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BeamHypothesis {
    /// The new tokens (no prompt), ending with the EOS id when `finished`.
    pub tokens: Vec<u32>,
    /// HF's `sequences_scores`: sum of log-probabilities / generated_len ^ length_penalty (see
    /// the module docs).
    pub score: f32,
    /// Whether the hypothesis ended on an EOS id (otherwise it was open when search stopped).
    pub finished: bool,
}

/// Runs beam search after `prompt_ids` and returns the `num_return_sequences` best hypotheses,
/// best first.
///
/// The model is driven through `Decoder` only: one `step` with the prompt on batch 1,
/// `select_rows(&[0; num_beams])` to expand it, then per new token `select_rows` with the
/// chosen beams and one `step` on batch `num_beams`. Search stops after `max_new_tokens`, when
/// every group is done, or when prompt + generated reaches `context_len()`.
pub fn beam_search<D: Decoder + ?Sized>(
    model: &D,
    prompt_ids: &[u32],
    cfg: &BeamConfig,
) -> Result<Vec<BeamHypothesis>> {
    cfg.validate()?;
    check_prompt(prompt_ids, model.context_len())?;
    let room = model.context_len() - prompt_ids.len();
    if room == 0 {
        return Err(Error::Invalid(format!(
            "the prompt fills the model's context ({} tokens); no room to generate",
            model.context_len()
        )));
    }
    let mut search = Search::new(prompt_ids, cfg, model.vocab_size(), room);
    let mut cache = model.new_cache(1)?;
    // (1, V) -> (num_beams, V): every beam starts from the prompt's logits.
    let first = model.step(prompt_ids, 1, &mut cache)?;
    model.select_rows(&mut cache, &vec![0; cfg.num_beams])?;
    let mut logits = first.repeat(cfg.num_beams);
    loop {
        let rows = search.advance(&logits)?;
        if search.generated == search.max_generated || search.groups.iter().all(|g| g.done) {
            break;
        }
        model.select_rows(&mut cache, &rows)?;
        let last: Vec<u32> = search.beams.iter().map(|b| b.last_token()).collect();
        logits = model.step(&last, cfg.num_beams, &mut cache)?;
    }
    Ok(search.finalize())
}

/// An open beam: its new tokens and its running sum of processed log-probabilities.
#[derive(Debug, Clone)]
struct Beam {
    tokens: Vec<u32>,
    score: f32,
}

impl Beam {
    fn last_token(&self) -> u32 {
        *self.tokens.last().expect("beams hold a token after a step")
    }

    fn extended(&self, token: u32, score: f32) -> Beam {
        let mut tokens = self.tokens.clone();
        tokens.push(token);
        Beam { tokens, score }
    }
}

/// A beam group's finished hypotheses and whether it has stopped searching.
struct Group {
    hyps: Hypotheses,
    done: bool,
}

/// The state of one search: `num_beams` open beams, grouped `group_size` at a time.
struct Search<'a> {
    cfg: &'a BeamConfig,
    prompt: &'a [u32],
    vocab: usize,
    group_size: usize,
    max_generated: usize,
    generated: usize,
    beams: Vec<Beam>,
    groups: Vec<Group>,
}

impl<'a> Search<'a> {
    fn new(prompt: &'a [u32], cfg: &'a BeamConfig, vocab: usize, room: usize) -> Self {
        let group_size = cfg.num_beams / cfg.num_beam_groups;
        let max_generated = cfg.max_new_tokens.min(room);
        // HF starts the first beam of each group at 0 and the others at -1e9, so that the first
        // step expands one beam per group.
        let beams = (0..cfg.num_beams)
            .map(|b| Beam {
                tokens: Vec::new(),
                score: if b % group_size == 0 { 0.0 } else { -1e9 },
            })
            .collect();
        let groups = (0..cfg.num_beam_groups)
            .map(|_| Group {
                hyps: Hypotheses::new(group_size, cfg.length_penalty, cfg.early_stopping),
                done: false,
            })
            .collect();
        Search {
            cfg,
            prompt,
            vocab,
            group_size,
            max_generated,
            generated: 0,
            beams,
            groups,
        }
    }

    /// One step of every group from `logits` (num_beams, V); returns, for each new beam, the
    /// row of the old beam it extends (what the cache rows must become).
    fn advance(&mut self, logits: &[f32]) -> Result<Vec<usize>> {
        let mut next: Vec<Beam> = Vec::with_capacity(self.cfg.num_beams);
        let mut rows = Vec::with_capacity(self.cfg.num_beams);
        for g in 0..self.groups.len() {
            // Tokens chosen this step by earlier groups, for the Hamming diversity penalty.
            let earlier: Vec<u32> = next.iter().map(|b| b.last_token()).collect();
            for (beam, row) in self.advance_group(g, logits, &earlier)? {
                next.push(beam);
                rows.push(row);
            }
        }
        self.beams = next;
        self.generated += 1;
        Ok(rows)
    }

    /// One step of group `g`: its `group_size` next beams with the rows they extend.
    fn advance_group(
        &mut self,
        g: usize,
        logits: &[f32],
        earlier: &[u32],
    ) -> Result<Vec<(Beam, usize)>> {
        let start = g * self.group_size;
        if self.groups[g].done {
            // HF pads a finished group: every beam becomes its first beam + the pad token, which
            // is `eos_token_id[0]` when no pad id is set (a group can only be done after EOS).
            let pad = self.cfg.eos_ids[0];
            let beam = self.beams[start].extended(pad, 0.0);
            return Ok(vec![(beam, start); self.group_size]);
        }
        let candidates = self.candidates(g, logits, earlier);
        let mut next = Vec::with_capacity(self.group_size);
        for (rank, &(score, row, token)) in candidates.iter().enumerate() {
            if self.cfg.eos_ids.contains(&token) {
                // Only an EOS among the top group_size candidates finishes a hypothesis.
                if rank < self.group_size {
                    let done = self.beams[row].extended(token, score);
                    self.groups[g]
                        .hyps
                        .add(done.tokens, score, self.generated + 1, true);
                }
            } else {
                next.push((self.beams[row].extended(token, score), row));
                if next.len() == self.group_size {
                    break;
                }
            }
        }
        if next.len() < self.group_size {
            return Err(Error::Invalid(format!(
                "beam search needs {} non-EOS candidates per group and step, but the vocabulary \
                 ({}) and the EOS ids ({}) leave fewer; lower num_beams",
                self.group_size,
                self.vocab,
                self.cfg.eos_ids.len()
            )));
        }
        let best = candidates[0].0;
        let group = &mut self.groups[g];
        group.done = group.done
            || group
                .hyps
                .is_done(best, self.generated + 1, self.max_generated);
        Ok(next)
    }

    /// The top `max(2, 1 + #eos) · group_size` (score, row, token) candidates of group `g`, by
    /// decreasing score, ties by increasing (row, token).
    fn candidates(&self, g: usize, logits: &[f32], earlier: &[u32]) -> Vec<(f32, usize, u32)> {
        let v = self.vocab;
        let start = g * self.group_size;
        let by_rank = |a: &(f32, usize, u32), b: &(f32, usize, u32)| {
            b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2)))
        };
        let keep = (2.max(1 + self.cfg.eos_ids.len()) * self.group_size).min(self.group_size * v);
        // The overall top `keep` lie within each row's top `keep`: one pass per row keeps them
        // (a sorted list of `keep`, entered only by a score above its last), so no (rows × vocab)
        // candidate list is built.
        let mut all = Vec::with_capacity(self.group_size * keep);
        for row in start..start + self.group_size {
            let scores = self.processed_logprobs(row, &logits[row * v..(row + 1) * v], earlier);
            let beam_score = self.beams[row].score;
            let mut top: Vec<(f32, usize, u32)> = Vec::with_capacity(keep + 1);
            for (t, &s) in scores.iter().enumerate() {
                let c = (s + beam_score, row, t as u32);
                if top.len() == keep && by_rank(&c, &top[keep - 1]) != std::cmp::Ordering::Less {
                    continue;
                }
                let at = top.partition_point(|x| by_rank(x, &c) == std::cmp::Ordering::Less);
                top.insert(at, c);
                top.truncate(keep);
            }
            all.extend(top);
        }
        let keep = keep.min(all.len());
        all.select_nth_unstable_by(keep - 1, by_rank);
        all.truncate(keep);
        all.sort_by(by_rank);
        all
    }

    /// log_softmax of one beam's logits (V,), then the beam-search processors in HF's order.
    fn processed_logprobs(&self, row: usize, logits: &[f32], earlier: &[u32]) -> Vec<f32> {
        let cfg = self.cfg;
        let mut scores = log_softmax(logits);
        if cfg.diversity_penalty > 0.0 && !earlier.is_empty() {
            hamming_diversity(&mut scores, earlier, cfg.diversity_penalty);
        }
        if cfg.no_repeat_ngram_size > 0 {
            let context = [self.prompt, &self.beams[row].tokens].concat();
            no_repeat_ngram(&mut scores, &context, cfg.no_repeat_ngram_size);
        }
        suppress_eos_before(
            &mut scores,
            self.generated,
            cfg.min_new_tokens,
            &cfg.eos_ids,
        );
        scores
    }

    /// HF's `finalize`: the open beams of groups still searching join their hypotheses, then
    /// the best `num_return_sequences` over all groups are returned, best first.
    fn finalize(self) -> Vec<BeamHypothesis> {
        let mut all = Vec::new();
        for (g, mut group) in self.groups.into_iter().enumerate() {
            if !group.done {
                let open = &self.beams[g * self.group_size..(g + 1) * self.group_size];
                for beam in open {
                    let len = beam.tokens.len();
                    group.hyps.add(beam.tokens.clone(), beam.score, len, false);
                }
            }
            all.extend(group.hyps.hyps);
        }
        // HF sorts ascending (stably) and pops from the end: among equal scores the
        // hypothesis listed last comes first.
        all.sort_by(|a, b| a.score.total_cmp(&b.score));
        all.into_iter()
            .rev()
            .take(self.cfg.num_return_sequences)
            .map(|h| BeamHypothesis {
                tokens: h.tokens,
                score: h.score as f32,
                finished: h.finished,
            })
            .collect()
    }
}

/// `sum / len ^ length_penalty`, in f64 as HF computes it in Python.
fn length_normalized(sum: f32, len: usize, length_penalty: f64) -> f64 {
    sum as f64 / (len as f64).powf(length_penalty)
}

/// A finished (or, at the end, open) hypothesis with its length-normalized score.
#[derive(Debug, Clone)]
struct Hyp {
    score: f64,
    tokens: Vec<u32>,
    finished: bool,
}

/// HF's `BeamHypotheses`: the `capacity` best hypotheses of one group and the stopping rule.
struct Hypotheses {
    capacity: usize,
    length_penalty: f64,
    early_stopping: EarlyStopping,
    hyps: Vec<Hyp>,
    /// The lowest score kept (1e9 while empty, as in HF).
    worst: f64,
}

impl Hypotheses {
    fn new(capacity: usize, length_penalty: f64, early_stopping: EarlyStopping) -> Self {
        Hypotheses {
            capacity,
            length_penalty,
            early_stopping,
            hyps: Vec::new(),
            worst: 1e9,
        }
    }

    /// Adds a hypothesis of `generated_len` new tokens if there is room or it beats the worst.
    fn add(&mut self, tokens: Vec<u32>, sum_logprobs: f32, generated_len: usize, finished: bool) {
        let score = length_normalized(sum_logprobs, generated_len, self.length_penalty);
        if self.hyps.len() >= self.capacity && score <= self.worst {
            return;
        }
        self.hyps.push(Hyp {
            score,
            tokens,
            finished,
        });
        if self.hyps.len() > self.capacity {
            // Drop the lowest score (the earliest added among equals); the next lowest is the
            // new worst.
            let mut order: Vec<usize> = (0..self.hyps.len()).collect();
            order.sort_by(|&a, &b| {
                self.hyps[a]
                    .score
                    .total_cmp(&self.hyps[b].score)
                    .then(a.cmp(&b))
            });
            self.worst = self.hyps[order[1]].score;
            self.hyps.remove(order[0]);
        } else {
            self.worst = self.worst.min(score);
        }
    }

    /// HF's `is_done`, given the best candidate's running score and the number of generated
    /// tokens counting this step's (`generated`), of at most `max_generated`.
    fn is_done(&self, best_sum_logprobs: f32, generated: usize, max_generated: usize) -> bool {
        if self.hyps.len() < self.capacity {
            return false;
        }
        let lp = self.length_penalty;
        let highest_attainable = match self.early_stopping {
            EarlyStopping::True => return true,
            EarlyStopping::False => length_normalized(best_sum_logprobs, generated, lp),
            EarlyStopping::Never if lp > 0.0 => {
                length_normalized(best_sum_logprobs, max_generated, lp)
            }
            EarlyStopping::Never => length_normalized(best_sum_logprobs, generated, lp),
        };
        self.worst >= highest_attainable
    }
}

#[cfg(test)]
mod tests {
    use super::super::mock::MockDecoder;
    use super::*;

    const EOS: u32 = 0;

    /// Every sequence of at most `max_new` tokens over `vocab` ids that either ends with its
    /// only EOS or has `max_new` tokens and no EOS, with its HF score.
    fn exhaustive(
        model: &MockDecoder,
        prompt: &[u32],
        max_new: usize,
        length_penalty: f64,
    ) -> Vec<(Vec<u32>, f32)> {
        let mut done = Vec::new();
        let mut open = vec![(Vec::new(), 0.0f32)];
        for len in 1..=max_new {
            let mut next = Vec::new();
            for (tokens, sum) in &open {
                let history = [prompt, tokens.as_slice()].concat();
                let logp = log_softmax(&model.logits(&history));
                for t in 0..model.vocab_size() as u32 {
                    let seq = [tokens.as_slice(), &[t]].concat();
                    let s = sum + logp[t as usize];
                    if t == EOS || len == max_new {
                        done.push((seq, length_normalized(s, len, length_penalty) as f32));
                    } else {
                        next.push((seq, s));
                    }
                }
            }
            open = next;
        }
        done.sort_by(|a, b| b.1.total_cmp(&a.1));
        done
    }

    #[test]
    fn beam_search_with_enough_beams_is_exhaustive_search() {
        // Vocabulary 3 (EOS + 2), 3 new tokens: at most 4 open prefixes of 3 candidates each,
        // so 12 beams keep every candidate and the 12 best hypotheses are exact, whatever the
        // length penalty. Penalties -5 and 5 make short and long sequences win.
        let mut winner_lengths = Vec::new();
        for seed in 0..4 {
            let model = MockDecoder::random(3, 16, seed);
            let prompt = [1, 2];
            for length_penalty in [0.0, 1.0, -5.0, 5.0] {
                let cfg = BeamConfig {
                    num_beams: 12,
                    num_return_sequences: 5,
                    length_penalty,
                    early_stopping: EarlyStopping::Never,
                    eos_ids: vec![EOS],
                    max_new_tokens: 3,
                    ..Default::default()
                };
                let got = beam_search(&model, &prompt, &cfg).unwrap();
                let want = exhaustive(&model, &prompt, 3, length_penalty);
                assert_eq!(got.len(), 5);
                for (g, (tokens, score)) in got.iter().zip(&want) {
                    let case = format!("seed {seed}, length_penalty {length_penalty}");
                    assert_eq!(&g.tokens, tokens, "{case}");
                    assert_eq!(g.score, *score, "{case}");
                    assert_eq!(g.finished, tokens.last() == Some(&EOS), "{case}");
                }
                winner_lengths.push((length_penalty, got[0].tokens.len()));
            }
        }
        let lengths_at = |lp| {
            winner_lengths
                .iter()
                .filter(|w| w.0 == lp)
                .map(|w| w.1)
                .collect::<Vec<_>>()
        };
        assert_ne!(lengths_at(-5.0), lengths_at(5.0));
    }

    /// Steps the model takes under `early_stopping` when EOS has probability 0.5 after
    /// anything and tokens 1, 2 have 0.3, 0.2 (3 beams, length_penalty 1, 6 new tokens).
    fn steps_until_done(early_stopping: EarlyStopping) -> (usize, Vec<BeamHypothesis>) {
        let model = MockDecoder::fixed(vec![0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()], 32);
        let cfg = BeamConfig {
            num_beams: 3,
            num_return_sequences: 3,
            early_stopping,
            eos_ids: vec![EOS],
            max_new_tokens: 6,
            ..Default::default()
        };
        let hyps = beam_search(&model, &[1], &cfg).unwrap();
        (model.steps(), hyps)
    }

    #[test]
    fn early_stopping_variants_stop_where_hf_rules_say() {
        // Step 1 finishes [E] (score ln 0.5); step 2 finishes [1 E] and [2 E]: three
        // hypotheses, so `True` stops after 2 model steps. `False` compares the worst kept
        // score, (ln .2 + ln .5) / 2, with the best candidate (ln .3 + ln .5) / 2 and goes on;
        // at step 3 [1 1 E] replaces [2 E] and is itself the best candidate: equal scores, so it
        // stops after 3 steps. `Never` divides the best candidate by the 6 possible tokens and
        // runs to the end.
        let (steps, hyps) = steps_until_done(EarlyStopping::True);
        assert_eq!(steps, 2);
        let tokens: Vec<_> = hyps.iter().map(|h| h.tokens.clone()).collect();
        assert_eq!(tokens, [vec![0], vec![1, 0], vec![2, 0]]);
        let logp = log_softmax(&[0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()]);
        assert_eq!(hyps[0].score, logp[0]);
        let (steps, hyps) = steps_until_done(EarlyStopping::False);
        assert_eq!(steps, 3);
        let tokens: Vec<_> = hyps.iter().map(|h| h.tokens.clone()).collect();
        assert_eq!(tokens, [vec![0], vec![1, 0], vec![1, 1, 0]]);
        let (steps, never) = steps_until_done(EarlyStopping::Never);
        assert_eq!(steps, 6);
        assert_eq!(never, hyps);
    }

    #[test]
    fn is_done_follows_hf_for_each_early_stopping_mode() {
        let hyps = |early_stopping, length_penalty| {
            let mut h = Hypotheses::new(2, length_penalty, early_stopping);
            h.add(vec![5, 0], -2.0, 2, true);
            assert!(!h.is_done(-100.0, 2, 10), "fewer than num_beams hypotheses");
            h.add(vec![0], -3.0, 1, true);
            h
        };
        // length_penalty 1: scores -1 and -3, worst -3.
        let h = hyps(EarlyStopping::True, 1.0);
        assert!(h.is_done(0.0, 2, 10));
        let h = hyps(EarlyStopping::False, 1.0);
        assert!(!h.is_done(-5.0, 2, 10)); // -2.5 > -3
        assert!(h.is_done(-7.0, 2, 10)); // -3.5
        let h = hyps(EarlyStopping::Never, 1.0);
        assert!(!h.is_done(-7.0, 2, 10)); // -0.7: the longest length is used
        assert!(h.is_done(-40.0, 2, 10)); // -4
                                          // length_penalty -1: scores -4 and -3, worst -4; `Never` uses the current length.
        let h = hyps(EarlyStopping::Never, -1.0);
        assert!(!h.is_done(-1.0, 2, 10)); // -2
        assert!(h.is_done(-3.0, 2, 10)); // -6
    }

    #[test]
    fn hypotheses_keep_the_best_and_track_the_worst() {
        let mut h = Hypotheses::new(2, 0.0, EarlyStopping::False);
        h.add(vec![1], -2.0, 1, false);
        h.add(vec![2], -1.0, 1, false);
        assert_eq!(h.worst, -2.0);
        h.add(vec![3], -3.0, 1, false); // worse than the worst: refused
        h.add(vec![4], -1.5, 1, false); // evicts [1]
        let kept: Vec<_> = h.hyps.iter().map(|x| x.tokens[0]).collect();
        assert_eq!(kept, [2, 4]);
        assert_eq!(h.worst, -1.5);
    }

    #[test]
    fn group_beam_search_with_a_diversity_penalty_returns_distinct_sequences() {
        let model = MockDecoder::random(6, 32, 5);
        let cfg = |diversity_penalty| BeamConfig {
            num_beams: 4,
            num_beam_groups: 2,
            diversity_penalty,
            num_return_sequences: 4,
            max_new_tokens: 4,
            ..Default::default()
        };
        let diverse = beam_search(&model, &[3], &cfg(100.0)).unwrap();
        for (i, a) in diverse.iter().enumerate() {
            for b in &diverse[i + 1..] {
                assert_ne!(a.tokens, b.tokens);
            }
        }
        // Without the penalty both groups search alike and return the same sequences.
        let alike = beam_search(&model, &[3], &cfg(0.0)).unwrap();
        assert_eq!(alike[0].tokens, alike[1].tokens);
        assert_eq!(alike[2].tokens, alike[3].tokens);
    }

    #[test]
    fn beam_search_stops_at_the_context_and_honours_min_new_tokens() {
        let model = MockDecoder::fixed(vec![2.0, 1.0, 0.5, 0.0], 4);
        let cfg = BeamConfig {
            num_beams: 2,
            num_return_sequences: 2,
            min_new_tokens: 2,
            eos_ids: vec![EOS],
            max_new_tokens: 10,
            ..Default::default()
        };
        let hyps = beam_search(&model, &[1], &cfg).unwrap();
        assert!(hyps.iter().all(|h| h.tokens.len() <= 3));
        // EOS is the likeliest token but cannot come before the third position.
        assert!(hyps.iter().all(|h| h.tokens.len() == 3));
        assert_eq!(hyps[0].tokens, [1, 1, 0]);
        assert!(beam_search(&model, &[1; 4], &cfg).is_err());
    }

    #[test]
    fn no_repeat_ngram_applies_to_beams() {
        let model = MockDecoder::fixed(vec![0.0, 3.0, 1.0], 32);
        let cfg = BeamConfig {
            num_beams: 2,
            no_repeat_ngram_size: 2,
            max_new_tokens: 6,
            ..Default::default()
        };
        let best = beam_search(&model, &[2], &cfg).unwrap().remove(0);
        let all = [&[2][..], &best.tokens].concat();
        let mut seen = std::collections::HashSet::new();
        assert!(all.windows(2).all(|w| seen.insert(w.to_vec())), "{all:?}");
    }

    #[test]
    fn invalid_beam_configs_are_rejected() {
        let model = MockDecoder::fixed(vec![0.0; 4], 8);
        let bad: [fn(&mut BeamConfig); 5] = [
            |c| (c.num_beams, c.num_return_sequences) = (2, 3),
            |c| c.num_beams = 0,
            |c| (c.num_beams, c.num_beam_groups) = (4, 3),
            |c| c.max_new_tokens = 0,
            |c| c.diversity_penalty = -1.0,
        ];
        for set in bad {
            let mut cfg = BeamConfig::default();
            set(&mut cfg);
            let err = beam_search(&model, &[1], &cfg);
            assert!(matches!(err, Err(Error::Invalid(_))), "{cfg:?}");
            assert_eq!(model.steps(), 0, "validated before any model step");
        }
    }

    #[test]
    fn early_stopping_reads_and_writes_hf_json() {
        for (json, value) in [
            ("true", EarlyStopping::True),
            ("false", EarlyStopping::False),
            ("\"never\"", EarlyStopping::Never),
        ] {
            assert_eq!(serde_json::from_str::<EarlyStopping>(json).unwrap(), value);
            assert_eq!(serde_json::to_string(&value).unwrap(), json);
        }
        assert!(serde_json::from_str::<EarlyStopping>("\"always\"").is_err());
    }
}
