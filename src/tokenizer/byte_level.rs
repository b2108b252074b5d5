//! GPT-2 style byte-level BPE: the ByteLevel pre-tokenizer (GPT-2 regex, no prefix space) maps
//! every byte to a printable char, BPE merges are learned by `tokenizers`' `BpeTrainer` over an
//! initial alphabet of all 256 bytes, and the ByteLevel decoder maps back. This is the layout of
//! GPT-2's own `tokenizer.json`, so either file works anywhere the other does.

use serde_json::Value;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::AddedToken;

use crate::error::{Error, Result};

/// GPT-2's end-of-text token, the only special token.
pub const EOS_TOKEN: &str = "<|endoftext|>";

/// Target size of the pieces a text is cut into for parallel encoding and training.
pub(super) const CHUNK_BYTES: usize = 64 * 1024;

/// Trains a byte-level BPE over `texts` to `vocab_size` tokens, `<|endoftext|>` included.
pub(super) fn train(texts: &[&str], vocab_size: usize) -> Result<tokenizers::Tokenizer> {
    let min = ByteLevel::alphabet().len() + 1;
    if vocab_size < min {
        return Err(Error::Invalid(format!(
            "bpe vocab_size {vocab_size} is smaller than {min} (256 byte tokens + {EOS_TOKEN})"
        )));
    }
    let mut tokenizer = tokenizers::Tokenizer::new(BPE::default());
    // (add_prefix_space, trim_offsets, use_regex) as in GPT-2's tokenizer.json.
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_post_processor(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::new(false, true, true)));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(0)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from(EOS_TOKEN, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    // Pieces cut where the GPT-2 regex never matches across, so the word counts are exactly those
    // of the whole texts, while the trainer pre-tokenizes the pieces in parallel.
    let pieces: Vec<&str> = texts
        .iter()
        .flat_map(|t| split_for_parallel(t, CHUNK_BYTES))
        .collect();
    tokenizer
        .train(&mut trainer, pieces.into_iter())
        .map_err(|e| Error::TokenizerLib(format!("training bpe: {e}")))?;
    Ok(tokenizer)
}

fn is_byte_level(v: &Value) -> bool {
    match v["type"].as_str() {
        Some("ByteLevel") => true,
        Some("Sequence") => ["pretokenizers", "decoders", "processors"]
            .iter()
            .filter_map(|k| v[k].as_array())
            .flatten()
            .any(is_byte_level),
        _ => false,
    }
}

/// True when the pre-tokenizer or the decoder of a tokenizer.json is ByteLevel (alone or in a
/// Sequence).
pub(super) fn uses_byte_level(value: &Value) -> bool {
    is_byte_level(&value["pre_tokenizer"]) || is_byte_level(&value["decoder"])
}

/// True when [`split_for_parallel`] gives the same ids as encoding the whole text: no normalizer
/// and exactly a ByteLevel pre-tokenizer with the GPT-2 regex and no prefix space.
pub(super) fn is_chunkable(value: &Value) -> bool {
    let pre = &value["pre_tokenizer"];
    value["normalizer"].is_null()
        && pre["type"] == "ByteLevel"
        && pre["add_prefix_space"] == false
        && pre["use_regex"] != false
}

/// Cuts `text` into pieces of about `target` bytes at boundaries the GPT-2 pre-tokenizer regex
/// never matches across, so that encoding the pieces and concatenating gives the ids of the whole.
///
/// A boundary is right after a `'\n'` that sits between two printable non-space ASCII chars
/// (`x\n|y`). The regex is
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`: the match holding
/// `x` cannot contain a `'\n'` (only the whitespace alternatives can, and `x` is not whitespace), so
/// it ends before the newline; the newline is then matched alone by `\s+` (whole text: `\s+(?!\S)`
/// fails before `y`; piece: it ends the piece), and the regex has no look-behind, so matching
/// restarts at `y` identically.
pub(super) fn split_for_parallel(text: &str, target: usize) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut pieces = Vec::with_capacity(text.len() / target.max(1) + 1);
    let mut start = 0;
    while text.len() - start > target {
        let from = (start + target).max(2);
        let boundary = (from..bytes.len()).find(|&p| {
            bytes[p - 1] == b'\n' && bytes[p - 2].is_ascii_graphic() && bytes[p].is_ascii_graphic()
        });
        match boundary {
            Some(p) => {
                pieces.push(&text[start..p]);
                start = p;
            }
            None => break,
        }
    }
    pieces.push(&text[start..]);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_pieces_concatenate_to_the_text_and_end_after_a_newline() {
        let text = "ab\ncd\n\n ef\ngh\nij".repeat(50);
        let pieces = split_for_parallel(&text, 16);
        assert!(pieces.len() > 10);
        assert_eq!(pieces.concat(), text);
        for piece in &pieces[..pieces.len() - 1] {
            let b = piece.as_bytes();
            assert_eq!(b[b.len() - 1], b'\n');
            assert!(b[b.len() - 2].is_ascii_graphic());
        }
    }

    #[test]
    fn split_without_boundaries_keeps_one_piece() {
        let text = "no newline here ".repeat(100);
        assert_eq!(split_for_parallel(&text, 16), vec![text.as_str()]);
        assert_eq!(split_for_parallel("", 16), vec![""]);
    }
}
