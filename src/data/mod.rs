//! Training data, nanoGPT style: [`prepare`] turns a text corpus into `train.bin` / `val.bin` (flat
//! token ids, as `data/shakespeare_char/prepare.py` writes them), `tokenizer.json` and `meta.json`;
//! [`TokenFile`] memory-maps a token file and [`Batcher`] samples random (x, y) blocks from it.

mod batcher;
mod corpus;
pub mod parallel;
mod token_file;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use batcher::Batcher;
pub use token_file::{TokenDtype, TokenFile};

use crate::error::{write_atomic, Error, Result};
use crate::tokenizer::{Tokenizer, TokenizerKind};

/// nanoGPT holds out the last 10% of the characters for validation.
pub const DEFAULT_VAL_FRACTION: f64 = 0.1;

/// What [`prepare`] reads and where it writes.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// The corpus: UTF-8 text, plain (`.txt`) or gzip-compressed (`.txt.gz`).
    pub input: PathBuf,
    /// A separate validation text; without it the input is split by `val_fraction`.
    pub val_input: Option<PathBuf>,
    pub tokenizer: TokenizerKind,
    /// Required for bpe (at least 257: 256 bytes + `<|endoftext|>`); ignored for char.
    pub vocab_size: Option<usize>,
    /// Share of the input's characters held out for validation when there is no `val_input`:
    /// the first `1 - val_fraction` is train, the rest val, split at a char boundary. Default 0.1.
    pub val_fraction: f64,
    /// Encode with this `tokenizer.json` instead of training a tokenizer (`tokenizer` and
    /// `vocab_size` are then ignored).
    pub tokenizer_file: Option<PathBuf>,
    /// Output folder, created if missing.
    pub out: PathBuf,
}

impl PrepareOptions {
    /// Options with the defaults: no separate validation text, `val_fraction` 0.1, no vocab size.
    pub fn new(
        input: impl Into<PathBuf>,
        tokenizer: TokenizerKind,
        out: impl Into<PathBuf>,
    ) -> Self {
        PrepareOptions {
            input: input.into(),
            val_input: None,
            tokenizer,
            vocab_size: None,
            val_fraction: DEFAULT_VAL_FRACTION,
            tokenizer_file: None,
            out: out.into(),
        }
    }

    /// Checks the options that need no file.
    pub fn validate(&self) -> Result<()> {
        if self.val_input.is_none() && !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return Err(Error::Invalid(format!(
                "val_fraction must be between 0 and 1 (exclusive), got {}; or give a separate \
                 validation text",
                self.val_fraction
            )));
        }
        if self.tokenizer == TokenizerKind::Bpe
            && self.vocab_size.is_none()
            && self.tokenizer_file.is_none()
        {
            return Err(Error::Invalid(
                "the bpe tokenizer needs a vocab_size (e.g. 8192)".into(),
            ));
        }
        if self.out.is_file() {
            return Err(Error::Invalid(format!(
                "output {} is a file; give a folder",
                self.out.display()
            )));
        }
        Ok(())
    }
}

/// What [`prepare`] did.
#[derive(Debug, Clone)]
pub struct PrepareReport {
    pub train_tokens: usize,
    pub val_tokens: usize,
    pub vocab_size: usize,
    pub out: PathBuf,
    pub seconds: f64,
}

/// `meta.json`: how the token files were made and how to read them.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct Meta {
    pub vocab_size: usize,
    /// "u16" or "u32".
    pub dtype: String,
    pub tokenizer: TokenizerKind,
    pub train_tokens: usize,
    pub val_tokens: usize,
    /// The input path as given.
    pub source: String,
    /// Hex SHA-256 of the input file as stored (compressed, for a .gz).
    pub source_sha256: String,
    /// The separate validation text, if one was given.
    pub val_source: Option<String>,
}

impl Meta {
    pub const FILE: &'static str = "meta.json";

    /// Reads `dir/meta.json`, checking that its dtype is known.
    pub fn load(dir: &Path) -> Result<Meta> {
        let path = dir.join(Self::FILE);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let meta: Meta = serde_json::from_slice(&bytes).map_err(|e| Error::Data {
            path: path.clone(),
            msg: format!("not a valid meta.json ({e}); run prepare again"),
        })?;
        if TokenDtype::parse(&meta.dtype).is_none() {
            return Err(Error::Data {
                path,
                msg: format!(
                    "unknown dtype {:?}; expected \"u16\" or \"u32\"",
                    meta.dtype
                ),
            });
        }
        Ok(meta)
    }
}

/// Reads a UTF-8 corpus, plain or gzip-compressed (detected by its magic bytes). Errors name the
/// file: missing or unreadable (`Io`), corrupt gzip (`Data`), invalid UTF-8 (`NotUtf8`, with the
/// offset into the decompressed text), empty (`EmptyCorpus`).
pub fn read_corpus(path: &Path) -> Result<String> {
    Ok(corpus::read_corpus(path)?.text)
}

/// Reads a UTF-8 text, plain or gzip-compressed, that may be empty (a file of hypotheses or
/// references, say). Errors name the file, as [`read_corpus`]'s do.
pub fn read_text(path: &Path) -> Result<String> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    corpus::decode_text(path, raw)
}

/// Names of the files [`prepare`] writes into its output folder.
pub const TRAIN_FILE: &str = "train.bin";
pub const VAL_FILE: &str = "val.bin";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Tokenizes a corpus into `out/`: `train.bin`, `val.bin` (little-endian u16 when vocab_size <=
/// 65536, else u32), `tokenizer.json` and `meta.json`.
///
/// The char vocabulary is built from all the text (train and val, as nanoGPT does); a bpe vocabulary
/// is trained on the train text only. Everything is read, validated and encoded in memory before
/// the first file is written, so a failure leaves an existing output folder as it was; each file is
/// written atomically and `meta.json` last.
pub fn prepare(opts: &PrepareOptions) -> Result<PrepareReport> {
    let start = Instant::now();
    opts.validate()?;
    let input = corpus::read_corpus(&opts.input)?;
    let val_corpus = match &opts.val_input {
        Some(path) => Some(corpus::read_corpus(path)?),
        None => None,
    };
    let (train_text, val_text) = match &val_corpus {
        Some(val) => (input.text.as_str(), val.text.as_str()),
        None => corpus::split_at_fraction(&input.text, opts.val_fraction),
    };
    if train_text.is_empty() || val_text.is_empty() {
        return Err(Error::Data {
            path: opts.input.clone(),
            msg: format!(
                "{} characters are too few to hold out a val_fraction of {} and keep both splits \
                 non-empty; give a larger corpus",
                input.text.chars().count(),
                opts.val_fraction
            ),
        });
    }

    let tokenizer = match (&opts.tokenizer_file, opts.tokenizer) {
        (Some(path), _) => Tokenizer::from_file(path)?,
        (None, TokenizerKind::Char) => Tokenizer::train_char_texts(&[train_text, val_text])?,
        (None, TokenizerKind::Bpe) => {
            // validate() checked that a bpe vocab_size is present.
            let vocab_size = opts.vocab_size.unwrap_or_default();
            Tokenizer::train_bpe(&[train_text], vocab_size)?
        }
    };
    let train_ids = tokenizer.encode(train_text)?;
    let val_ids = tokenizer.encode(val_text)?;
    let vocab_size = tokenizer.vocab_size();
    let dtype = TokenDtype::for_vocab(vocab_size);
    let meta = Meta {
        vocab_size,
        dtype: dtype.as_str().to_string(),
        tokenizer: tokenizer.kind(),
        train_tokens: train_ids.len(),
        val_tokens: val_ids.len(),
        source: opts.input.display().to_string(),
        source_sha256: input.sha256,
        val_source: opts.val_input.as_ref().map(|p| p.display().to_string()),
    };
    let train_bytes = dtype.to_bytes(&train_ids);
    let val_bytes = dtype.to_bytes(&val_ids);
    let tokenizer_json = tokenizer.to_json()?;
    let meta_json = serde_json::to_string_pretty(&meta)
        .map_err(|e| Error::Invalid(format!("serializing meta.json: {e}")))?;

    let out = &opts.out;
    write_atomic(&out.join(TRAIN_FILE), &train_bytes)?;
    write_atomic(&out.join(VAL_FILE), &val_bytes)?;
    write_atomic(&out.join(TOKENIZER_FILE), tokenizer_json.as_bytes())?;
    write_atomic(&out.join(Meta::FILE), meta_json.as_bytes())?;
    Ok(PrepareReport {
        train_tokens: train_ids.len(),
        val_tokens: val_ids.len(),
        vocab_size,
        out: out.clone(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of preparing `input` with a fresh tokenizer of `kind` into `out`.
    fn prepare_err(input: &Path, kind: TokenizerKind, out: &Path) -> Error {
        prepare(&PrepareOptions::new(input, kind, out)).unwrap_err()
    }

    /// A few kilobytes of varied text with newlines and non-ASCII chars.
    fn sample_text() -> String {
        let mut s = String::new();
        for i in 0..300 {
            s.push_str(&format!(
                "Line {i}: the quick brown fox — naïve café — jumps over the lazy dog.\n"
            ));
            if i % 7 == 0 {
                s.push('\n');
            }
        }
        s
    }

    fn write_input(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn read_tokens(out: &Path, name: &str, meta: &Meta) -> Vec<u32> {
        let file = TokenFile::open(&out.join(name), &meta.dtype).unwrap();
        let mut ids = vec![0; file.len()];
        file.read_into(0, &mut ids);
        ids
    }

    #[test]
    fn prepare_char_writes_token_files_tokenizer_and_meta() {
        let dir = tempfile::tempdir().unwrap();
        let text = sample_text();
        let input = write_input(dir.path(), "input.txt", &text);
        let out = dir.path().join("out");
        let report = prepare(&PrepareOptions::new(&input, TokenizerKind::Char, &out)).unwrap();

        let n = text.chars().count();
        let n_train = (n as f64 * 0.9) as usize;
        assert_eq!(report.train_tokens, n_train);
        assert_eq!(report.val_tokens, n - n_train);
        let meta = Meta::load(&out).unwrap();
        assert_eq!(meta.dtype, "u16");
        assert_eq!(meta.tokenizer, TokenizerKind::Char);
        assert_eq!(meta.vocab_size, report.vocab_size);
        assert_eq!((meta.train_tokens, meta.val_tokens), (n_train, n - n_train));
        assert_eq!(meta.source_sha256.len(), 64);
        assert_eq!(meta.val_source, None);
        assert_eq!(
            std::fs::metadata(out.join(TRAIN_FILE)).unwrap().len() as usize,
            2 * n_train
        );

        let tok = Tokenizer::from_file(&out.join(TOKENIZER_FILE)).unwrap();
        assert_eq!(tok.kind(), TokenizerKind::Char);
        let train = tok.decode(&read_tokens(&out, TRAIN_FILE, &meta)).unwrap();
        let val = tok.decode(&read_tokens(&out, VAL_FILE, &meta)).unwrap();
        assert_eq!(train + &val, text);
    }

    #[test]
    fn prepare_bpe_with_separate_val_input() {
        let dir = tempfile::tempdir().unwrap();
        let text = sample_text();
        let input = write_input(dir.path(), "train.txt", &text);
        let val = write_input(dir.path(), "valid.txt", "The lazy fox, unseen: ✓ ½\n");
        let out = dir.path().join("out");
        let mut opts = PrepareOptions::new(&input, TokenizerKind::Bpe, &out);
        opts.val_input = Some(val.clone());
        opts.vocab_size = Some(300);
        let report = prepare(&opts).unwrap();

        let meta = Meta::load(&out).unwrap();
        assert_eq!(meta.tokenizer, TokenizerKind::Bpe);
        assert_eq!(meta.vocab_size, 300);
        assert_eq!(meta.val_source, Some(val.display().to_string()));
        let tok = Tokenizer::from_file(&out.join(TOKENIZER_FILE)).unwrap();
        let train_ids = read_tokens(&out, TRAIN_FILE, &meta);
        assert_eq!(train_ids.len(), report.train_tokens);
        assert!(train_ids.len() < text.len() / 2, "merges compress the text");
        assert_eq!(tok.decode(&train_ids).unwrap(), text);
        let val_ids = read_tokens(&out, VAL_FILE, &meta);
        assert_eq!(tok.decode(&val_ids).unwrap(), "The lazy fox, unseen: ✓ ½\n");
    }

    #[test]
    fn prepare_gzip_input_gives_the_same_tokens_as_plain_text() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let text = sample_text();
        let plain = write_input(dir.path(), "input.txt", &text);
        let gz_path = dir.path().join("input.txt.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        std::fs::write(&gz_path, gz.finish().unwrap()).unwrap();

        let (out_a, out_b) = (dir.path().join("a"), dir.path().join("b"));
        prepare(&PrepareOptions::new(&plain, TokenizerKind::Char, &out_a)).unwrap();
        prepare(&PrepareOptions::new(&gz_path, TokenizerKind::Char, &out_b)).unwrap();
        for name in [TRAIN_FILE, VAL_FILE, TOKENIZER_FILE] {
            assert_eq!(
                std::fs::read(out_a.join(name)).unwrap(),
                std::fs::read(out_b.join(name)).unwrap(),
                "{name}"
            );
        }
    }

    #[test]
    fn prepare_writes_u32_when_vocab_exceeds_u16() {
        let dir = tempfile::tempdir().unwrap();
        // 70000 distinct chars (code points from U+0100, surrogates skipped).
        let text: String = (0x100u32..)
            .filter_map(char::from_u32)
            .take(70_000)
            .collect();
        let input = write_input(dir.path(), "wide.txt", &text);
        let out = dir.path().join("out");
        let report = prepare(&PrepareOptions::new(&input, TokenizerKind::Char, &out)).unwrap();
        assert_eq!(report.vocab_size, 70_000);
        let meta = Meta::load(&out).unwrap();
        assert_eq!(meta.dtype, "u32");
        // Ids are code point order, so the val split holds the largest ids.
        let val = read_tokens(&out, VAL_FILE, &meta);
        assert_eq!(val.len(), 7_000);
        assert_eq!(*val.last().unwrap(), 69_999);
        assert_eq!(
            std::fs::metadata(out.join(TRAIN_FILE)).unwrap().len(),
            4 * 63_000
        );
    }

    #[test]
    fn missing_input_is_an_io_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("nope.txt");
        let err = prepare_err(&input, TokenizerKind::Char, dir.path());
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("nope.txt"), "{err}");
    }

    #[test]
    fn empty_corpus_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let input = write_input(dir.path(), "empty.txt", "");
        let err = prepare_err(&input, TokenizerKind::Char, dir.path());
        assert!(matches!(err, Error::EmptyCorpus { .. }), "{err}");
        assert!(err.to_string().contains("empty.txt"), "{err}");
    }

    #[test]
    fn non_utf8_corpus_is_an_error_with_the_byte_offset() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("latin1.txt");
        std::fs::write(&input, b"caf\xc3\xa9 na\xefve").unwrap();
        let err = prepare_err(&input, TokenizerKind::Char, dir.path());
        assert!(matches!(err, Error::NotUtf8 { offset: 8, .. }), "{err}");
        assert!(err.to_string().contains("latin1.txt"), "{err}");
    }

    #[test]
    fn bad_options_fail_before_reading_anything() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.txt");
        let err = prepare_err(&missing, TokenizerKind::Bpe, dir.path());
        assert!(err.to_string().contains("vocab_size"), "{err}");
        let mut opts = PrepareOptions::new(&missing, TokenizerKind::Char, dir.path());
        opts.val_fraction = 1.0;
        let err = prepare(&opts).unwrap_err();
        assert!(err.to_string().contains("val_fraction"), "{err}");
    }

    #[test]
    fn corpus_too_short_to_split_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let input = write_input(dir.path(), "tiny.txt", "a");
        let err = prepare_err(&input, TokenizerKind::Char, dir.path());
        assert!(matches!(err, Error::Data { .. }), "{err}");
    }

    #[test]
    fn failed_prepare_leaves_existing_output_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let good = write_input(dir.path(), "input.txt", &sample_text());
        let out = dir.path().join("out");
        prepare(&PrepareOptions::new(&good, TokenizerKind::Char, &out)).unwrap();
        let before: Vec<Vec<u8>> = [TRAIN_FILE, VAL_FILE, TOKENIZER_FILE, Meta::FILE]
            .iter()
            .map(|n| std::fs::read(out.join(n)).unwrap())
            .collect();

        // The input is fine but the separate validation text is not UTF-8: fails after the
        // input was read and before anything is written.
        let bad_val = dir.path().join("val.txt");
        std::fs::write(&bad_val, b"ok\xff").unwrap();
        let other = write_input(dir.path(), "other.txt", "completely different text\n");
        let mut opts = PrepareOptions::new(&other, TokenizerKind::Char, &out);
        opts.val_input = Some(bad_val);
        let err = prepare(&opts).unwrap_err();
        assert!(matches!(err, Error::NotUtf8 { offset: 2, .. }), "{err}");

        let after: Vec<Vec<u8>> = [TRAIN_FILE, VAL_FILE, TOKENIZER_FILE, Meta::FILE]
            .iter()
            .map(|n| std::fs::read(out.join(n)).unwrap())
            .collect();
        assert_eq!(before, after);
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 4, "{leftovers:?}");
    }

    #[test]
    fn meta_load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = Meta::load(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        std::fs::write(dir.path().join(Meta::FILE), b"{\"vocab_size\": 3").unwrap();
        let err = Meta::load(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Data { .. }), "{err}");
        assert!(err.to_string().contains("meta.json"), "{err}");
    }
}
