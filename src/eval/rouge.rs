//! ROUGE-1, ROUGE-2 and ROUGE-L (sentence-level LCS) as Google's `rouge-score` 0.1.2 computes
//! them: text lowercased, every run of characters outside `[a-z0-9]` turned into a space, words
//! of more than three letters Porter-stemmed (NLTK's stemmer) when stemming is on; n-gram
//! overlap clipped by counts; F = 2PR/(P+R). With several references, each metric takes the
//! reference with the best F (`score_multi`). A corpus figure is the mean F over the pairs, ×100.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::eval::porter;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Score {
    pub precision: f64,
    pub recall: f64,
    pub fmeasure: f64,
}

impl Score {
    fn new(precision: f64, recall: f64) -> Self {
        let fmeasure = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Score {
            precision,
            recall,
            fmeasure,
        }
    }
}

/// The three scores of one summary.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RougeScores {
    pub rouge1: Score,
    pub rouge2: Score,
    #[serde(rename = "rougeL")]
    pub rouge_l: Score,
}

/// `rouge_score.tokenize.tokenize`.
pub fn tokenize(text: &str, stem: bool) -> Vec<String> {
    let lower = text.to_lowercase();
    let cleaned: String = lower
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                ' '
            }
        })
        .collect();
    cleaned
        .split(' ')
        .filter(|t| !t.is_empty())
        .map(|t| {
            if stem && t.len() > 3 {
                porter::stem(t)
            } else {
                t.to_string()
            }
        })
        .filter(|t| !t.is_empty())
        .collect()
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut m = HashMap::new();
    if tokens.len() >= n {
        for g in tokens.windows(n) {
            *m.entry(g).or_insert(0) += 1;
        }
    }
    m
}

fn score_ngrams(target: &[String], prediction: &[String], n: usize) -> Score {
    let t = ngrams(target, n);
    let p = ngrams(prediction, n);
    let overlap: usize = t
        .iter()
        .map(|(g, &c)| c.min(p.get(g).copied().unwrap_or(0)))
        .sum();
    let tc: usize = t.values().sum();
    let pc: usize = p.values().sum();
    Score::new(
        overlap as f64 / pc.max(1) as f64,
        overlap as f64 / tc.max(1) as f64,
    )
}

fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                prev[j + 1].max(cur[j])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

fn score_lcs(target: &[String], prediction: &[String]) -> Score {
    if target.is_empty() || prediction.is_empty() {
        return Score::new(0.0, 0.0);
    }
    let l = lcs_len(target, prediction) as f64;
    Score::new(l / prediction.len() as f64, l / target.len() as f64)
}

/// `RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=stem).score(target, prediction)`.
pub fn score(target: &str, prediction: &str, stem: bool) -> RougeScores {
    let t = tokenize(target, stem);
    let p = tokenize(prediction, stem);
    RougeScores {
        rouge1: score_ngrams(&t, &p, 1),
        rouge2: score_ngrams(&t, &p, 2),
        rouge_l: score_lcs(&t, &p),
    }
}

/// `score_multi`: per metric, the scores of the reference with the highest F (the first such).
pub fn score_multi(targets: &[&str], prediction: &str, stem: bool) -> RougeScores {
    let all: Vec<RougeScores> = targets.iter().map(|t| score(t, prediction, stem)).collect();
    let best = |f: fn(&RougeScores) -> Score| {
        let mut b = f(&all[0]);
        for s in &all[1..] {
            if f(s).fmeasure > b.fmeasure {
                b = f(s);
            }
        }
        b
    };
    RougeScores {
        rouge1: best(|s| s.rouge1),
        rouge2: best(|s| s.rouge2),
        rouge_l: best(|s| s.rouge_l),
    }
}

/// Corpus figures: mean F-measure ×100 of each metric.
#[derive(Debug, Clone, Serialize)]
pub struct RougeReport {
    pub rouge1: f64,
    pub rouge2: f64,
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
    pub pairs: usize,
    pub stemmer: bool,
}

/// Mean F ×100 over (hypothesis, references) pairs.
pub fn corpus(hyps: &[String], refs: &[Vec<String>], stem: bool) -> Result<RougeReport> {
    if hyps.is_empty() {
        return Err(Error::Invalid("no summaries to score".into()));
    }
    let (mut r1, mut r2, mut rl) = (0.0, 0.0, 0.0);
    for (i, h) in hyps.iter().enumerate() {
        let targets: Vec<&str> = refs.iter().map(|r| r[i].as_str()).collect();
        let s = score_multi(&targets, h, stem);
        r1 += s.rouge1.fmeasure;
        r2 += s.rouge2.fmeasure;
        rl += s.rouge_l.fmeasure;
    }
    let n = hyps.len() as f64;
    Ok(RougeReport {
        rouge1: 100.0 * r1 / n,
        rouge2: 100.0 * r2 / n,
        rouge_l: 100.0 * rl / n,
        pairs: hyps.len(),
        stemmer: stem,
    })
}

/// ROUGE of a hypothesis file against one or more reference files, line by line (lines read as
/// `eval bleu` reads them; trailing whitespace is no token either way).
pub fn evaluate_files(hyp: &Path, refs: &[PathBuf], stem: bool) -> Result<RougeReport> {
    if refs.is_empty() {
        return Err(Error::Invalid("no reference file given".into()));
    }
    let (hyps, streams) = crate::eval::bleu::read_aligned(hyp, refs)?;
    corpus(&hyps, &streams, stem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokenizes_like_rouge_score() {
        assert_eq!(
            tokenize("The cats' running—fast! Café 42x", true),
            ["the", "cat", "run", "fast", "caf", "42x"]
        );
        assert!(tokenize("", true).is_empty());
    }

    #[test]
    fn scores_a_pair() {
        let s = score("the cat sat on the mat", "the cat on the mat", false);
        assert!((s.rouge1.precision - 1.0).abs() < 1e-12);
        assert!((s.rouge1.recall - 5.0 / 6.0).abs() < 1e-12);
        assert!((s.rouge_l.fmeasure - 2.0 * (5.0 / 6.0) / (1.0 + 5.0 / 6.0)).abs() < 1e-12);
        assert_eq!(score("", "x", true).rouge_l.fmeasure, 0.0);
    }

    /// rouge-score's `max(..., key=fmeasure)` keeps the first reference among those with the
    /// highest F: here both give F 2/3, the first with P 1/2 and R 1, the second the reverse.
    #[test]
    fn multi_reference_ties_keep_the_first_reference() {
        let s = score_multi(&["the", "the cat sat down"], "the cat", false);
        assert_eq!(s.rouge1.fmeasure, 2.0 / 3.0);
        assert_eq!((s.rouge1.precision, s.rouge1.recall), (0.5, 1.0));
        let s = score_multi(&["the cat sat down", "the"], "the cat", false);
        assert_eq!((s.rouge1.precision, s.rouge1.recall), (1.0, 0.5));
    }
}
