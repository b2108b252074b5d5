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
    /// A checkpoint or model file that cannot be read; the advice depends on where such a file
    /// comes from (a GGUF file is downloaded, a checkpoint trained).
    #[error(
        "{path}: {} is truncated or corrupt ({}); {}",
        corrupt_what(path),
        first_line(msg),
        corrupt_advice(path)
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

/// What a corrupt file is called: a downloaded GGUF model file, or a checkpoint.
fn corrupt_what(path: &std::path::Path) -> &'static str {
    if is_gguf(path) {
        "the GGUF file"
    } else {
        "the checkpoint"
    }
}

/// What to do about a corrupt file.
fn corrupt_advice(path: &std::path::Path) -> &'static str {
    if is_gguf(path) {
        "download it again (scripts/fetch_models.sh fetches and checks the SmolLM2 GGUF)"
    } else {
        "re-train it or restore it from a backup"
    }
}

fn is_gguf(path: &std::path::Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The first line of a message from another library (candle's may go on with a backtrace),
/// so that what is wrapped around it stays on one line.
fn first_line(msg: &str) -> &str {
    msg.lines().next().unwrap_or("").trim_end()
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

/// The temporary files and folders being written now (`.NAME.tmpPID…` beside their targets),
/// which an interrupted process removes before it exits ([`remove_temp_paths`]).
static TEMP_PATHS: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// A temporary path registered for removal on interruption while this guard lives. Dropping it
/// only unregisters the path: the writer renames or removes it itself.
#[derive(Debug)]
pub struct TempPath(std::path::PathBuf);

impl TempPath {
    /// Registers `path` (before it is created, so that no moment leaves it unregistered).
    pub fn register(path: &std::path::Path) -> Self {
        if let Ok(mut paths) = TEMP_PATHS.lock() {
            paths.push(path.to_path_buf());
        }
        TempPath(path.to_path_buf())
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Ok(mut paths) = TEMP_PATHS.lock() {
            if let Some(i) = paths.iter().rposition(|p| *p == self.0) {
                paths.swap_remove(i);
            }
        }
    }
}

/// Removes every registered temporary file and folder: what a signal handler calls before the
/// process exits, so that an interrupted run leaves no `.NAME.tmpPID` behind.
pub fn remove_temp_paths() {
    // A writer holding the lock at the signal cannot be waited for; its path is skipped.
    let Ok(paths) = TEMP_PATHS.try_lock() else {
        return;
    };
    for p in paths.iter() {
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(p);
        } else {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename, so a
/// reader never sees a half-written file and a failed write leaves the old file in place. The
/// temporary file is registered ([`TempPath`]): an interrupted process removes it.
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
    let _registered = TempPath::register(&tmp);
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
