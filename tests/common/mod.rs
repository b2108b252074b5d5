//! Helpers shared by the behaviour tests: a temporary cache, tiny configs, running the binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Points the prepared-data cache at a folder owned by this test binary.
pub fn init_cache() -> PathBuf {
    static ONCE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ONCE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("decodex-test-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::env::set_var("DECODEX_CACHE", &dir);
        dir
    })
    .clone()
}

/// A small English corpus: Tiny Shakespeare's first 100,000 characters, from the data folder
/// (`DECODEX_DATA`). A missing dataset fails the test: no synthetic text stands in for it.
pub fn small_corpus() -> String {
    let p = decodex::train::config::resolve_data_path(Path::new("lm/tinyshakespeare/input.txt"));
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("{}: {e} (set DECODEX_DATA to the data folder)", p.display()));
    text.chars().take(100_000).collect()
}

/// A tiny char-level config over `corpus` (absolute path).
pub fn tiny_config(corpus: &Path, extra_model: &str, extra_train: &str) -> String {
    format!(
        r#"[data]
corpus = {corpus:?}
tokenizer = "char"

[model]
n_layer = 2
n_head = 2
n_embd = 32
block_size = 16
{extra_model}

[train]
batch_size = 4
max_iters = 40
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 5
beta1 = 0.9
beta2 = 0.99
weight_decay = 0.1
grad_clip = 1.0
eval_interval = 10
eval_iters = 2
seed = 42
{extra_train}
"#
    )
}

pub fn decodex(args: &[&str]) -> Output {
    let cache = init_cache();
    Command::new(env!("CARGO_BIN_EXE_decodex"))
        .args(args)
        .env("DECODEX_CACHE", cache)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("the decodex binary runs")
}

/// Runs a command that prints one JSON object (`--json`), asserting that it succeeds.
pub fn decodex_json(args: &[&str]) -> serde_json::Value {
    json_of(&decodex(args), &args.join(" "))
}

/// The one JSON object a successful `decodex … --json` run (`what`) printed.
pub fn json_of(out: &Output, what: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "decodex {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

/// Asserts exit code 2 and exactly one line on stderr containing every `needles`.
pub fn assert_clear_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "exit code; stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line on stderr, got: {stderr}"
    );
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
}

/// Writes the small corpus (`DIR/c.txt`, once) and a tiny config `DIR/NAME` over it, with the
/// `edits` (from, to) applied to the config text. Returns the config's path.
pub fn write_config(
    dir: &Path,
    name: &str,
    extra_model: &str,
    extra_train: &str,
    edits: &[(&str, &str)],
) -> PathBuf {
    let corpus = dir.join("c.txt");
    if !corpus.exists() {
        std::fs::write(&corpus, small_corpus()).unwrap();
    }
    let mut text = tiny_config(&corpus, extra_model, extra_train);
    for (from, to) in edits {
        assert!(text.contains(from), "the tiny config has no {from:?}");
        text = text.replace(from, to);
    }
    let cfg = dir.join(name);
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// The pretrained-model cache `scripts/fetch_models.sh` fills: DECODEX_MODELS, else
/// ~/.cache/decodex/models.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("DECODEX_MODELS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/decodex/models"),
    }
}

/// SmolLM2-135M-Instruct (Q4_1 GGUF); panics with the fix when it has not been fetched.
pub fn smollm2() -> PathBuf {
    let p = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch_models.sh (CI's .ci/run does)",
        p.display()
    );
    p
}

/// all-MiniLM-L6-v2 (sentence-transformers folder); panics with the fix when it has not been
/// fetched.
pub fn minilm() -> PathBuf {
    let p = models_dir().join("all-MiniLM-L6-v2");
    assert!(
        p.join("model.safetensors").exists(),
        "{} is missing: run scripts/fetch_models.sh (CI's .ci/run does)",
        p.display()
    );
    p
}

/// Trains a tiny char model for `iters` steps into `dir/run` (config `dir/ok.toml`) and returns
/// the run's path.
pub fn trained_model(dir: &Path, iters: usize) -> PathBuf {
    let cfg = write_config(dir, "ok.toml", "", "", &[]);
    let run = dir.join("run");
    let iters = iters.to_string();
    let out = decodex(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--max-iters",
        &iters,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run
}

/// `decodex ARGS` with `stdin` piped in (a process that exits before reading it is not an error
/// of the pipe: its exit status and output say what happened).
pub fn decodex_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_decodex"))
        .args(args)
        .env("DECODEX_CACHE", init_cache())
        .env("RAYON_NUM_THREADS", "2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the decodex binary runs");
    let mut input = child.stdin.take().expect("stdin is piped");
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    child.wait_with_output().expect("the decodex binary runs")
}

/// 96 characters: one token per id of tests/fixtures/llama_tiny's vocabulary.
pub const LLAMA_CHARS: &str =
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:?!'\"{}[]-_\n#$%&()*+/;<=>@\\^`|~";

/// A copy of tests/fixtures/llama_tiny (a Hugging Face folder, no chat template) in `dir/name`,
/// with a char tokenizer over `chars` (96 of them).
pub fn tiny_llama(dir: &Path, name: &str, chars: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_tiny");
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), out.join(f)).unwrap();
    }
    let tok = decodex::tokenizer::Tokenizer::train_char(chars).unwrap();
    assert_eq!(tok.vocab_size(), 96);
    tok.save(&out.join("tokenizer.json")).unwrap();
    out
}

#[allow(unused_imports)] // not every test binary compares floats
pub use decodex::testutil::{max_abs_diff, nan_max};

/// Every `.rs` file under `dir`, sorted.
pub fn rust_files(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}
