//! Translating a file with a sequence-to-sequence model through the shared engine: greedy
//! search and sampling in batches of sentences, beam search one sentence at a time with n-best
//! lists; empty lines stay empty and too-long sources are errors naming their line.

use std::path::Path;

use serde::Serialize;

use crate::decode::{beam_search, generate_batch, BeamConfig, EarlyStopping, SamplingConfig};
use crate::decode::{Decoder, Strategy};
use crate::error::{Error, Result};
use crate::models::seq2seq::{ModelConfig, Seq2Seq};
use crate::tokenizer::Tokenizer;

/// How `translate` searches.
#[derive(Debug, Clone)]
pub struct TranslateOptions {
    /// 1: greedy or sampling (batched); more: beam search with this many beams.
    pub beam: usize,
    pub length_penalty: f64,
    /// Beam search: hypotheses returned per source, best first (at most `beam`).
    pub n_best: usize,
    /// Sample instead of the greedy choice (with `beam` 1), with these settings.
    pub sampling: Option<SamplingConfig>,
    /// Greedy and sampling: sources decoded together.
    pub batch_size: usize,
}

impl Default for TranslateOptions {
    fn default() -> Self {
        TranslateOptions {
            beam: 1,
            length_penalty: 1.0,
            n_best: 1,
            sampling: None,
            batch_size: 64,
        }
    }
}

/// One translation: its text and, from beam search, HF's sequence score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hypothesis {
    pub text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
}

/// Translates each line of `input` (named in errors); an empty (or all-whitespace) line gives
/// an empty translation. A source longer than the model's maximum is an error naming its line
/// (1-based). Returns the best translation of each line.
pub fn translate(
    model: &Seq2Seq,
    tok: &Tokenizer,
    input: &Path,
    lines: &[String],
    opts: &TranslateOptions,
) -> Result<Vec<String>> {
    Ok(translate_n(model, tok, input, lines, opts)?
        .into_iter()
        .map(|h| h.into_iter().next().map(|h| h.text).unwrap_or_default())
        .collect())
}

/// `translate` returning up to `opts.n_best` hypotheses per line (one for an empty line).
pub fn translate_n(
    model: &Seq2Seq,
    tok: &Tokenizer,
    input: &Path,
    lines: &[String],
    opts: &TranslateOptions,
) -> Result<Vec<Vec<Hypothesis>>> {
    let cfg = model.config();
    let max_len = cfg.max_len();
    let mut ids = Vec::with_capacity(lines.len());
    for (i, l) in lines.iter().enumerate() {
        let s = tok.encode(l.trim())?;
        if s.len() > max_len {
            return Err(Error::Data {
                path: input.to_path_buf(),
                msg: format!(
                    "line {}: the source has {} tokens, more than the model's max_len of {max_len}",
                    i + 1,
                    s.len()
                ),
            });
        }
        ids.push(s);
    }
    let todo: Vec<usize> = (0..lines.len()).filter(|&i| !ids[i].is_empty()).collect();
    let found = match model {
        Seq2Seq::Transformer(m) => search(|r| m.encode_sources(r), &ids, &todo, &cfg, opts)?,
        Seq2Seq::Rnn(m) => search(|r| m.encode_sources(r), &ids, &todo, &cfg, opts)?,
    };
    let (_, eos, _) = cfg.ids();
    let empty = Hypothesis {
        text: String::new(),
        score: None,
    };
    let mut out = vec![vec![empty]; lines.len()];
    for (i, hyps) in todo.into_iter().zip(found) {
        out[i] = hyps
            .into_iter()
            .map(|(t, score)| {
                let t: Vec<u32> = t.into_iter().filter(|&x| x != eos).collect();
                Ok(Hypothesis {
                    text: tok.decode(&t)?.trim().to_string(),
                    score,
                })
            })
            .collect::<Result<_>>()?;
    }
    Ok(out)
}

/// Per source of `todo`, its hypotheses (new tokens, beam score): greedy or sampled in
/// batches, or beam search one source at a time, through the shared decoding engine.
#[allow(clippy::type_complexity)]
fn search<D: Decoder>(
    encode: impl Fn(&[Vec<u32>]) -> Result<D>,
    ids: &[Vec<u32>],
    todo: &[usize],
    cfg: &ModelConfig,
    opts: &TranslateOptions,
) -> Result<Vec<Vec<(Vec<u32>, Option<f32>)>>> {
    let (bos, eos, pad) = cfg.ids();
    let max_new = |src_len: usize| (2 * src_len + 10).min(cfg.max_len() - 1);
    let mut out = Vec::with_capacity(todo.len());
    if opts.beam <= 1 {
        let (scfg, strategy) = match &opts.sampling {
            Some(s) => (s.clone(), Strategy::Sample),
            None => (SamplingConfig::default(), Strategy::Greedy),
        };
        let scfg = SamplingConfig {
            eos_ids: vec![eos],
            ..scfg
        };
        for chunk in todo.chunks(opts.batch_size.max(1)) {
            let rows: Vec<Vec<u32>> = chunk.iter().map(|&i| ids[i].clone()).collect();
            let enc = encode(&rows)?;
            let longest = rows.iter().map(Vec::len).max().unwrap_or(1);
            let prompts = vec![vec![bos]; rows.len()];
            let res = generate_batch(
                &enc,
                &prompts,
                &scfg,
                strategy,
                max_new(longest),
                pad,
                |_, _, _| {},
            )?;
            out.extend(res.into_iter().map(|r| vec![(r.tokens, None)]));
        }
    } else {
        for &i in todo {
            let enc = encode(std::slice::from_ref(&ids[i]))?;
            let bcfg = BeamConfig {
                num_beams: opts.beam,
                num_return_sequences: opts.n_best.clamp(1, opts.beam),
                length_penalty: opts.length_penalty,
                early_stopping: EarlyStopping::True,
                eos_ids: vec![eos],
                max_new_tokens: max_new(ids[i].len()),
                ..Default::default()
            };
            let hyps = beam_search(&enc, &[bos], &bcfg)?;
            out.push(
                hyps.into_iter()
                    .map(|h| (h.tokens, Some(h.score)))
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// Draws the attention weights of the translation `hyp` of `line` (line `n`, 1-based, of
/// `input`) as a heatmap into `png` (.png or .svg).
pub fn draw_attention(
    model: &Seq2Seq,
    tok: &Tokenizer,
    input: &Path,
    n: usize,
    line: &str,
    hyp: &str,
    png: &Path,
) -> Result<()> {
    let src = tok.encode(line.trim())?;
    let mut tgt = tok.encode(hyp)?;
    tgt.extend(tok.eos_id());
    if src.is_empty() {
        return Err(Error::Data {
            path: input.to_path_buf(),
            msg: format!("line {n} is empty; there is no attention to draw"),
        });
    }
    let weights = model.attention_map(&src, &tgt)?;
    let label = |ids: &[u32]| -> Result<Vec<String>> {
        ids.iter()
            .map(|&t| {
                Ok(if Some(t) == tok.eos_id() {
                    "</s>".to_string()
                } else {
                    tok.decode(&[t])?.trim().to_string()
                })
            })
            .collect()
    };
    crate::plot::attention_heatmap(&label(&src)?, &label(&tgt)?, &weights, hyp, png)
}
