//! Typed errors for the library. Each variant carries the offending value and, where a file is
//! involved, its path, so that the command line can print one clear line.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: the corpus is empty; give a text file with at least a few thousand characters"
    )]
    EmptyCorpus { path: PathBuf },
    #[error("{path}: the corpus is not valid UTF-8 (first bad byte at offset {offset}); re-encode it as UTF-8")]
    NotUtf8 { path: PathBuf, offset: usize },
    #[error("{path}: {msg}")]
    BadConfig { path: PathBuf, msg: String },
    #[error("invalid model config: n_embd ({n_embd}) is not divisible by n_head ({n_head})")]
    HeadsDoNotDivide { n_embd: usize, n_head: usize },
    /// An invalid argument, setting or state: the message says which and how to fix it.
    #[error("{0}")]
    Invalid(String),
    #[error(
        "{path}: checkpoint is truncated or corrupt ({msg}); re-train or restore it from a backup"
    )]
    CorruptCheckpoint { path: PathBuf, msg: String },
    #[error("{path}: unsupported model: {msg}")]
    UnsupportedModel { path: PathBuf, msg: String },
    #[error("{path}: tokenizer vocabulary ({tokenizer}) does not match the model's vocab_size ({model})")]
    VocabMismatch {
        path: PathBuf,
        tokenizer: usize,
        model: usize,
    },
    #[error("{path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Data { path: PathBuf, msg: String },
    #[error("{path}: {lines} lines, but the hypothesis file {hyp} has {hyp_lines}; give one reference line per hypothesis line")]
    LineCount {
        path: PathBuf,
        lines: usize,
        hyp: PathBuf,
        hyp_lines: usize,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("character {ch:?} (byte offset {offset}) is not in the char tokenizer's vocabulary; prepare the data again from a corpus that contains it, or use the bpe tokenizer")]
    UnknownChar { ch: char, offset: usize },
    /// A text file the tokenizer cannot encode: the tokenizer's error (`UnknownChar`, ...) with
    /// the file it came from.
    #[error("{path}: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
    #[error("token id {id} is outside the tokenizer's vocabulary (vocab_size {vocab_size})")]
    UnknownTokenId { id: u32, vocab_size: usize },
    #[error("tokenizer: {0}")]
    TokenizerLib(String),
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename, so a
/// reader never sees a half-written file and a failed write leaves the old file in place.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per process and call, so concurrent writers never share a temporary file.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp{}-{n}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
