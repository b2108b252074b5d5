//! Tokenizers saved as Hugging Face `tokenizer.json`: a character-level vocabulary (nanoGPT's
//! `shakespeare_char/prepare.py`) and GPT-2 style byte-level BPE trained with the `tokenizers` crate.
//!
//! Both kinds are real `tokenizers::Tokenizer`s, so the saved file loads in Python
//! (`tokenizers.Tokenizer.from_file`) and encodes to the same ids; `scripts/check_tokenizer_json.py`
//! checks that by hand. Encoding takes a fast path that gives the inner tokenizer's ids:
//! - char: a direct `char -> id` map (the inner model is a BPE with one token per char and no merges),
//! - bpe: the text is cut into pieces at boundaries the GPT-2 regex never crosses and the pieces are
//!   encoded in parallel.

mod byte_level;
mod char_level;
mod gguf;

use std::path::Path;

use rayon::prelude::*;
use serde_json::Value;

use crate::error::{write_atomic, Error, Result};

pub use byte_level::EOS_TOKEN;

/// Which family a tokenizer belongs to; stored in `meta.json` and detected when loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenizerKind {
    /// One token per character, ids in code point order.
    Char,
    /// Byte-level BPE (GPT-2 style), or any other subword tokenizer encoded by `tokenizers`.
    Bpe,
}

impl std::fmt::Display for TokenizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenizerKind::Char => "char",
            TokenizerKind::Bpe => "bpe",
        })
    }
}

impl std::str::FromStr for TokenizerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "char" => Ok(TokenizerKind::Char),
            "bpe" => Ok(TokenizerKind::Bpe),
            _ => Err(Error::Invalid(format!(
                "unknown tokenizer kind {s:?}; expected \"char\" or \"bpe\""
            ))),
        }
    }
}

/// A Hugging Face tokenizer plus the fast encode/decode path for its kind.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    kind: TokenizerKind,
    /// Largest id + 1 over the model vocabulary and the added tokens.
    vocab_size: usize,
    fast: FastPath,
}

#[derive(Debug, Clone)]
enum FastPath {
    /// Direct char <-> id tables; same ids as the inner tokenizer.
    Char(Box<char_level::CharVocab>),
    /// Byte-level BPE whose input may be cut by `byte_level::split_for_parallel` and encoded in parallel.
    ByteLevelChunks,
    /// Anything else: encode the whole text with the inner tokenizer.
    Inner,
}

impl Tokenizer {
    /// Character-level vocabulary: every distinct char of `text`, sorted by code point (like nanoGPT's
    /// shakespeare_char prepare.py, so ids match nanoGPT's for Tiny Shakespeare: '\n'=0, ' '=1, ...).
    pub fn train_char(text: &str) -> Result<Self> {
        Self::train_char_texts(&[text])
    }

    /// Like [`Tokenizer::train_char`] over the union of the chars of several texts (train and a
    /// separate validation file, so that neither contains an unknown char).
    pub fn train_char_texts(texts: &[&str]) -> Result<Self> {
        let chars = char_level::sorted_chars(texts);
        if chars.is_empty() {
            return Err(Error::TokenizerLib(
                "cannot build a character vocabulary from an empty text".into(),
            ));
        }
        Self::from_value(char_level::tokenizer_json(&chars)).map_err(Error::TokenizerLib)
    }

    /// Byte-level BPE (GPT-2 style: ByteLevel pre-tokenizer with GPT-2 regex, ByteLevel decoder,
    /// initial alphabet = all 256 bytes) trained with the tokenizers crate's BpeTrainer to
    /// `vocab_size` tokens (including an `<|endoftext|>` special token). Input: one or more texts.
    ///
    /// A small corpus may run out of pairs to merge before reaching `vocab_size`; the vocabulary is
    /// then smaller, as [`Tokenizer::vocab_size`] reports.
    pub fn train_bpe(texts: &[&str], vocab_size: usize) -> Result<Self> {
        let inner = byte_level::train(texts, vocab_size)?;
        let json = serde_json::to_value(&inner)
            .map_err(|e| Error::TokenizerLib(format!("serializing the trained tokenizer: {e}")))?;
        Self::from_value(json).map_err(Error::TokenizerLib)
    }

    /// Loads a Hugging Face `tokenizer.json`; errors name the path.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Tokenizer {
            path: path.to_path_buf(),
            msg: format!("not a valid tokenizer.json ({e}); prepare the data again to rewrite it"),
        })?;
        Self::from_value(value).map_err(|msg| Error::Tokenizer {
            path: path.to_path_buf(),
            msg,
        })
    }

    /// The tokenizer in a GGUF file's metadata (byte-level BPE), as `transformers` rebuilds it.
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let content = candle_core::quantized::gguf_file::Content::read(&mut file).map_err(|e| {
            Error::Tokenizer {
                path: path.to_path_buf(),
                msg: format!("not a readable GGUF file: {e}"),
            }
        })?;
        let err = |msg: String| Error::Tokenizer {
            path: path.to_path_buf(),
            msg,
        };
        Self::from_value(gguf::tokenizer_json(&content).map_err(err)?).map_err(err)
    }

    /// Builds from the parsed JSON, detecting the kind: a ByteLevel pre-tokenizer or decoder means
    /// bpe; a BPE model whose tokens are all single chars, with no merges, means char; any other
    /// model is treated as bpe and encoded by the inner tokenizer.
    fn from_value(value: Value) -> std::result::Result<Self, String> {
        let byte_level = byte_level::uses_byte_level(&value);
        let chunkable = byte_level::is_chunkable(&value);
        let char_like = !byte_level && char_level::looks_char_level(&value);
        let inner: tokenizers::Tokenizer = serde_json::from_value(value)
            .map_err(|e| format!("not a valid tokenizer.json ({e})"))?;
        let vocab = inner.get_vocab(true);
        let vocab_size = vocab.values().max().map_or(0, |&m| m as usize + 1);
        if vocab_size == 0 {
            return Err("the tokenizer has an empty vocabulary".into());
        }
        let (kind, fast) = if char_like {
            let table = char_level::CharVocab::new(&vocab)?;
            (TokenizerKind::Char, FastPath::Char(Box::new(table)))
        } else if chunkable {
            (TokenizerKind::Bpe, FastPath::ByteLevelChunks)
        } else {
            (TokenizerKind::Bpe, FastPath::Inner)
        };
        Ok(Tokenizer {
            inner,
            kind,
            vocab_size,
            fast,
        })
    }

    /// The `tokenizer.json` text (pretty-printed), as [`Tokenizer::save`] writes it.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| Error::TokenizerLib(format!("serializing the tokenizer: {e}")))
    }

    /// Writes the `tokenizer.json` atomically (pretty JSON).
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, self.to_json()?.as_bytes())
    }

    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// Number of ids, including special tokens (largest id + 1).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Encodes `text` without adding special tokens. For char, an unknown character is an error
    /// naming it (the inner tokenizer would silently drop it).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.fast {
            FastPath::Char(table) => table.encode(text),
            FastPath::ByteLevelChunks => {
                let pieces = byte_level::split_for_parallel(text, byte_level::CHUNK_BYTES);
                if pieces.len() == 1 {
                    return self.encode_inner(text);
                }
                let encoded: Vec<Vec<u32>> = pieces
                    .par_iter()
                    .map(|piece| self.encode_inner(piece))
                    .collect::<Result<_>>()?;
                Ok(encoded.concat())
            }
            FastPath::Inner => self.encode_inner(text),
        }
    }

    /// Encodes with the inner `tokenizers::Tokenizer` only (the reference the fast paths match).
    pub fn encode_inner(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::TokenizerLib(format!("encoding: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Decodes `ids`; char tokens are concatenated exactly, bpe goes through the ByteLevel decoder.
    /// Special tokens are kept (`<|endoftext|>` appears as text).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(Error::UnknownTokenId {
                id,
                vocab_size: self.vocab_size,
            });
        }
        match &self.fast {
            FastPath::Char(table) => table.decode(ids),
            FastPath::ByteLevelChunks | FastPath::Inner => self
                .inner
                .decode(ids, false)
                .map_err(|e| Error::TokenizerLib(format!("decoding: {e}"))),
        }
    }

    /// The `<|endoftext|>` id for bpe; `None` for char (and for tokenizers without that token).
    pub fn eos_id(&self) -> Option<u32> {
        match self.kind {
            TokenizerKind::Char => None,
            TokenizerKind::Bpe => self.inner.token_to_id(EOS_TOKEN),
        }
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n\
        All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n";

    #[test]
    fn char_ids_follow_code_point_order_like_nanogpt() {
        let tok = Tokenizer::train_char(SAMPLE).unwrap();
        assert_eq!(tok.kind(), TokenizerKind::Char);
        assert_eq!(tok.eos_id(), None);
        // nanoGPT: chars = sorted(list(set(data))); stoi = {ch: i for i, ch in enumerate(chars)}
        let mut chars: Vec<char> = SAMPLE.chars().collect();
        chars.sort();
        chars.dedup();
        assert_eq!(tok.vocab_size(), chars.len());
        for (i, &c) in chars.iter().enumerate() {
            assert_eq!(tok.encode(&c.to_string()).unwrap(), vec![i as u32], "{c:?}");
        }
        assert_eq!(tok.encode("\n ").unwrap(), vec![0, 1]);
    }

    #[test]
    fn char_round_trip_keeps_newlines_and_spaces() {
        let tok = Tokenizer::train_char(SAMPLE).unwrap();
        let text = "  Speak,\n\nspeak.  \n";
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids.len(), text.chars().count());
        assert_eq!(tok.decode(&ids).unwrap(), text);
        assert_eq!(tok.decode(&tok.encode(SAMPLE).unwrap()).unwrap(), SAMPLE);
    }

    #[test]
    fn char_fast_path_agrees_with_inner_tokenizer() {
        let text = format!("{SAMPLE}héllo wörld — ünïcödé ✓ 日本語\n");
        let tok = Tokenizer::train_char(&text).unwrap();
        let fast = tok.encode(&text).unwrap();
        assert_eq!(fast, tok.encode_inner(&text).unwrap());
        let inner_decoded = tok.inner().decode(&fast, false).unwrap();
        assert_eq!(inner_decoded, text);
        assert_eq!(tok.decode(&fast).unwrap(), text);
    }

    #[test]
    fn char_unknown_character_is_an_error_naming_it() {
        let tok = Tokenizer::train_char("abc").unwrap();
        let err = tok.encode("abz").unwrap_err();
        assert!(
            matches!(err, Error::UnknownChar { ch: 'z', offset: 2 }),
            "{err}"
        );
        assert!(err.to_string().contains("'z'"), "{err}");
    }

    #[test]
    fn decode_rejects_ids_outside_the_vocabulary() {
        let tok = Tokenizer::train_char("abc").unwrap();
        let err = tok.decode(&[0, 3]).unwrap_err();
        assert!(matches!(
            err,
            Error::UnknownTokenId {
                id: 3,
                vocab_size: 3
            }
        ));
    }

    #[test]
    fn char_save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        let tok = Tokenizer::train_char(SAMPLE).unwrap();
        tok.save(&path).unwrap();
        let loaded = Tokenizer::from_file(&path).unwrap();
        assert_eq!(loaded.kind(), TokenizerKind::Char);
        assert_eq!(loaded.vocab_size(), tok.vocab_size());
        assert_eq!(loaded.encode(SAMPLE).unwrap(), tok.encode(SAMPLE).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"Fuse\""), "{text}");
    }

    fn bpe_corpus() -> String {
        let mut s = String::new();
        for i in 0..200 {
            s.push_str(&format!(
                "The quick brown fox {i} jumps over the lazy dog.\nIt's the dog's day; they'll see.\n\n"
            ));
        }
        s
    }

    #[test]
    fn bpe_train_save_load_round_trip() {
        let corpus = bpe_corpus();
        let tok = Tokenizer::train_bpe(&[&corpus, "another text"], 300).unwrap();
        assert_eq!(tok.kind(), TokenizerKind::Bpe);
        assert_eq!(tok.vocab_size(), 300);
        let eos = tok.eos_id().expect("<|endoftext|> is in the vocabulary");
        assert!((eos as usize) < tok.vocab_size());

        let text = "The lazy dog's fox jumps  over\n\n  ünïcödé ✓ 日本語 \t\r\n";
        let ids = tok.encode(text).unwrap();
        assert!(ids.len() < text.len(), "merges were learned");
        assert_eq!(tok.decode(&ids).unwrap(), text);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let loaded = Tokenizer::from_file(&path).unwrap();
        assert_eq!(loaded.kind(), TokenizerKind::Bpe);
        assert_eq!(loaded.vocab_size(), tok.vocab_size());
        assert_eq!(loaded.eos_id(), Some(eos));
        assert_eq!(loaded.encode(text).unwrap(), ids);
        assert_eq!(loaded.decode(&ids).unwrap(), text);
    }

    #[test]
    fn bpe_eos_text_encodes_to_the_eos_id() {
        let tok = Tokenizer::train_bpe(&[&bpe_corpus()], 280).unwrap();
        let ids = tok.encode("dog<|endoftext|>fox").unwrap();
        assert!(ids.contains(&tok.eos_id().unwrap()));
    }

    #[test]
    fn bpe_parallel_chunks_agree_with_whole_text_encoding() {
        let corpus = bpe_corpus();
        let tok = Tokenizer::train_bpe(&[&corpus], 320).unwrap();
        // Long enough to be cut into many pieces, with awkward line ends: trailing spaces, blank
        // lines, lines starting with spaces and contractions.
        let mut text = String::new();
        for i in 0..3000 {
            text.push_str(&format!(
                "line {i} ends here  \n\n   indented {i}\n's contraction\n{i}\n"
            ));
        }
        assert!(text.len() > 2 * byte_level::CHUNK_BYTES);
        assert_eq!(tok.encode(&text).unwrap(), tok.encode_inner(&text).unwrap());
    }

    #[test]
    fn bpe_vocab_size_below_byte_alphabet_is_rejected() {
        let err = Tokenizer::train_bpe(&["abc"], 100).unwrap_err();
        assert!(err.to_string().contains("257"), "{err}");
    }

    #[test]
    fn corrupt_tokenizer_json_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, b"{\"model\": 3").unwrap();
        let err = Tokenizer::from_file(&path).unwrap_err();
        assert!(matches!(err, Error::Tokenizer { .. }), "{err}");
        assert!(err.to_string().contains("tokenizer.json"), "{err}");

        std::fs::write(&path, b"{\"model\": {\"type\": \"Nope\"}}").unwrap();
        let err = Tokenizer::from_file(&path).unwrap_err();
        assert!(matches!(err, Error::Tokenizer { .. }), "{err}");

        let missing = dir.path().join("missing.json");
        let err = Tokenizer::from_file(&missing).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("missing.json"), "{err}");
    }

    #[test]
    fn kind_round_trips_through_serde_and_strings() {
        assert_eq!(
            serde_json::to_string(&TokenizerKind::Bpe).unwrap(),
            "\"bpe\""
        );
        assert_eq!(
            serde_json::from_str::<TokenizerKind>("\"char\"").unwrap(),
            TokenizerKind::Char
        );
        assert_eq!("bpe".parse::<TokenizerKind>().unwrap(), TokenizerKind::Bpe);
        assert!("wordpiece".parse::<TokenizerKind>().is_err());
    }
}
