//! Character-level vocabulary, as nanoGPT's `data/shakespeare_char/prepare.py` builds it:
//! `chars = sorted(list(set(data)))`, `stoi = {ch: i for i, ch in enumerate(chars)}`.
//!
//! In `tokenizer.json` it is a BPE model with one token per char and no merges, no normalizer and
//! no pre-tokenizer (the whole text is one word, split into chars), and a `Fuse` decoder so that
//! decoding concatenates the chars without inserting spaces.

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

/// Every distinct char of `texts`, sorted by code point.
pub(super) fn sorted_chars(texts: &[&str]) -> Vec<char> {
    // ASCII through a table, the rest through a set: a 25 MB corpus is scanned in well under 100 ms.
    let mut ascii = [false; 128];
    let mut other = BTreeSet::new();
    for text in texts {
        for c in text.chars() {
            if c.is_ascii() {
                ascii[c as usize] = true;
            } else {
                other.insert(c);
            }
        }
    }
    (0u8..128)
        .filter(|&b| ascii[b as usize])
        .map(char::from)
        .chain(other)
        .collect()
}

/// The `tokenizer.json` of a char vocabulary (id = position in `chars`).
pub(super) fn tokenizer_json(chars: &[char]) -> Value {
    let vocab: Map<String, Value> = chars
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), Value::from(i)))
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": { "type": "Fuse" },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": []
        }
    })
}

/// True for a tokenizer.json that [`tokenizer_json`] could have written: a BPE model without merges
/// whose tokens are single chars, with no normalizer, pre-tokenizer or added tokens.
pub(super) fn looks_char_level(value: &Value) -> bool {
    let model = &value["model"];
    let no_added = value["added_tokens"]
        .as_array()
        .is_none_or(|a| a.is_empty());
    model["type"].as_str().unwrap_or("BPE") == "BPE"
        && model["merges"].as_array().is_some_and(|m| m.is_empty())
        && model["vocab"].as_object().is_some_and(|v| {
            !v.is_empty() && v.keys().all(|k| k.chars().count() == 1)
        })
        && value["normalizer"].is_null() // absent reads as null too
        && value["pre_tokenizer"].is_null()
        && no_added
}

/// Direct char <-> id tables giving the same ids as the inner tokenizer.
#[derive(Debug, Clone)]
pub(super) struct CharVocab {
    /// id of each ASCII char, `u32::MAX` when absent.
    ascii: [u32; 128],
    other: HashMap<char, u32>,
    /// char of each id (`None` for an id no token has).
    chars: Vec<Option<char>>,
}

impl CharVocab {
    pub(super) fn new(vocab: &HashMap<String, u32>) -> std::result::Result<Self, String> {
        let size = vocab.values().max().map_or(0, |&m| m as usize + 1);
        let mut table = CharVocab {
            ascii: [u32::MAX; 128],
            other: HashMap::new(),
            chars: vec![None; size],
        };
        for (token, &id) in vocab {
            let mut it = token.chars();
            let (Some(c), None) = (it.next(), it.next()) else {
                return Err(format!(
                    "char tokenizer token {token:?} (id {id}) is not a single character"
                ));
            };
            if c.is_ascii() {
                table.ascii[c as usize] = id;
            } else {
                table.other.insert(c, id);
            }
            table.chars[id as usize] = Some(c);
        }
        Ok(table)
    }

    pub(super) fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len());
        for (offset, c) in text.char_indices() {
            let id = if c.is_ascii() {
                Some(self.ascii[c as usize]).filter(|&id| id != u32::MAX)
            } else {
                self.other.get(&c).copied()
            };
            ids.push(id.ok_or(Error::UnknownChar { ch: c, offset })?);
        }
        Ok(ids)
    }

    /// Ids must be below the vocabulary size (checked by the caller).
    pub(super) fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut text = String::with_capacity(ids.len());
        for &id in ids {
            let c = self.chars[id as usize].ok_or(Error::UnknownTokenId {
                id,
                vocab_size: self.chars.len(),
            })?;
            text.push(c);
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_chars_matches_sorted_set() {
        let texts = ["hello\n wörld", "zébra ✓"];
        let mut expected: Vec<char> = texts.iter().flat_map(|t| t.chars()).collect();
        expected.sort();
        expected.dedup();
        assert_eq!(sorted_chars(&texts), expected);
    }

    #[test]
    fn written_json_is_detected_as_char_level() {
        let json = tokenizer_json(&['\n', ' ', 'a']);
        assert!(looks_char_level(&json));
        let mut with_merges = json.clone();
        with_merges["model"]["merges"] = json!([["a", " "]]);
        assert!(!looks_char_level(&with_merges));
    }
}
