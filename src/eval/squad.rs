//! Exact match and token F1 for extractive question answering, as the official SQuAD v1.1
//! script (`evaluate-v1.1.py`) computes them: answers normalized (lowercased, ASCII punctuation
//! removed, the words "a", "an" and "the" removed, whitespace collapsed), each prediction scored
//! against its best gold answer, averaged over every question of the dataset (an unanswered
//! question scores 0), ×100.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::eval::bleu::py_split;

/// Python's `string.punctuation`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// A word character for `\b` in Python's `re` (str patterns): `str.isalnum()` or `_`.
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `re.sub(r"\b(a|an|the)\b", " ", text)`.
fn remove_articles(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let boundary_before = i == 0 || !is_word(chars[i - 1]);
        if boundary_before {
            let matched = ["a", "an", "the"].iter().find_map(|w| {
                let n = w.len();
                let fits = i + n <= chars.len()
                    && chars[i..i + n].iter().copied().eq(w.chars())
                    && (i + n == chars.len() || !is_word(chars[i + n]));
                fits.then_some(n)
            });
            if let Some(n) = matched {
                out.push(' ');
                i += n;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// `normalize_answer`: lower, remove punctuation, remove articles, fix whitespace.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punc: String = lower
        .chars()
        .filter(|c| !PUNCTUATION.contains(*c))
        .collect();
    let no_art = remove_articles(&no_punc);
    py_split(&no_art).collect::<Vec<_>>().join(" ")
}

pub fn exact_match(prediction: &str, truth: &str) -> bool {
    normalize_answer(prediction) == normalize_answer(truth)
}

pub fn f1(prediction: &str, truth: &str) -> f64 {
    let p = normalize_answer(prediction);
    let t = normalize_answer(truth);
    let pt: Vec<&str> = p.split(' ').filter(|w| !w.is_empty()).collect();
    let tt: Vec<&str> = t.split(' ').filter(|w| !w.is_empty()).collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for w in &tt {
        *counts.entry(w).or_insert(0) += 1;
    }
    let mut same = 0usize;
    for w in &pt {
        if let Some(c) = counts.get_mut(w) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / pt.len() as f64;
    let recall = same as f64 / tt.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// The best EM (0 or 1) and F1 of a prediction over its gold answers.
pub fn score(prediction: &str, truths: &[&str]) -> (f64, f64) {
    let em = truths
        .iter()
        .map(|t| exact_match(prediction, t) as u8 as f64)
        .fold(0.0, f64::max);
    let f = truths.iter().map(|t| f1(prediction, t)).fold(0.0, f64::max);
    (em, f)
}

#[derive(Debug, Deserialize)]
pub struct Dataset {
    #[serde(default)]
    pub version: Option<String>,
    pub data: Vec<Article>,
}

#[derive(Debug, Deserialize)]
pub struct Article {
    #[serde(default)]
    pub title: String,
    pub paragraphs: Vec<Paragraph>,
}

#[derive(Debug, Deserialize)]
pub struct Paragraph {
    pub context: String,
    pub qas: Vec<Qa>,
}

#[derive(Debug, Deserialize)]
pub struct Qa {
    pub id: String,
    pub question: String,
    pub answers: Vec<Answer>,
}

#[derive(Debug, Deserialize)]
pub struct Answer {
    pub text: String,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, expected: &str) -> Result<T> {
    let text = crate::data::read_text(path)?;
    serde_json::from_str(&text).map_err(|e| Error::Data {
        path: path.to_path_buf(),
        msg: format!("{expected}: {e}"),
    })
}

pub fn read_dataset(path: &Path) -> Result<Dataset> {
    read_json(path, "not a SQuAD dataset ({\"data\": [...]})")
}

pub fn read_predictions(path: &Path) -> Result<HashMap<String, String>> {
    read_json(
        path,
        "predictions must be one JSON object {question id: answer text}",
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct SquadReport {
    pub exact_match: f64,
    pub f1: f64,
    /// Questions in the dataset (the denominator).
    pub total: usize,
    /// Questions that had a prediction.
    pub answered: usize,
}

/// `evaluate(dataset, predictions)` of the official script.
pub fn evaluate(dataset: &Dataset, predictions: &HashMap<String, String>) -> SquadReport {
    let (mut em, mut f, mut total, mut answered) = (0.0, 0.0, 0usize, 0usize);
    for qa in dataset
        .data
        .iter()
        .flat_map(|a| &a.paragraphs)
        .flat_map(|p| &p.qas)
    {
        total += 1;
        let Some(pred) = predictions.get(&qa.id) else {
            continue;
        };
        answered += 1;
        let truths: Vec<&str> = qa.answers.iter().map(|a| a.text.as_str()).collect();
        let (e, g) = score(pred, &truths);
        em += e;
        f += g;
    }
    let n = total.max(1) as f64;
    SquadReport {
        exact_match: 100.0 * em / n,
        f1: 100.0 * f / n,
        total,
        answered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_like_the_official_script() {
        assert_eq!(
            normalize_answer("The  Eiffel-Tower, in Paris!"),
            "eiffeltower in paris"
        );
        assert_eq!(normalize_answer("an apple a day"), "apple day");
        assert_eq!(normalize_answer("banana"), "banana");
        assert_eq!(normalize_answer("théa the"), "théa");
        assert_eq!(f1("", "x"), 0.0);
        assert!((f1("the big cat", "a cat") - 2.0 / 3.0).abs() < 1e-12);
    }
}
