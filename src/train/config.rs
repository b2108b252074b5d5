//! The training configuration, read from TOML. Unknown keys are errors, so a typo never silently
//! falls back to a default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernels::Precision;
use crate::models::gpt::GptConfig;
use crate::tokenizer::TokenizerKind;
use crate::train::optim::{Decay, Schedule};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub data: DataConfig,
    pub model: GptConfig,
    pub train: OptimConfig,
}

/// Where the corpus is and how to tokenize it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Text corpus (.txt or .txt.gz), relative to the data folder (`DECODEX_DATA`, default
    /// `../shared/data` where that exists) unless absolute.
    pub corpus: PathBuf,
    /// Optional separate validation text; without it the last `val_fraction` of the corpus is used.
    #[serde(default)]
    pub val_corpus: Option<PathBuf>,
    pub tokenizer: TokenizerKind,
    /// BPE vocabulary size (ignored for `char`).
    #[serde(default)]
    pub vocab_size: Option<usize>,
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// Tokenize with this `tokenizer.json` (a pretrained model's, say) instead of training one;
    /// `tokenizer` and `vocab_size` are then ignored. Relative paths are taken from the working
    /// directory. With `train.init_from` the checkpoint's tokenizer is used unless this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_file: Option<PathBuf>,
}

fn default_val_fraction() -> f64 {
    0.1
}

/// Optimisation and schedule. Defaults are nanoGPT's `train.py` defaults where they apply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub batch_size: usize,
    /// Micro-batches accumulated per optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    pub max_iters: usize,
    pub learning_rate: f64,
    pub min_lr: f64,
    #[serde(default)]
    pub warmup_iters: usize,
    /// Cosine decay ends here (default: max_iters).
    #[serde(default)]
    pub lr_decay_iters: Option<usize>,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value (0 = off).
    #[serde(default)]
    pub grad_clip: f64,
    pub eval_interval: usize,
    pub eval_iters: usize,
    #[serde(default = "one")]
    pub log_interval: usize,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// How gradients are computed: "auto" (default), "fast" or "candle".
    #[serde(default)]
    pub backend: BackendKind,
    /// Arithmetic of the matmuls: "fp32" (default) or "bf16" (bf16 inputs, f32 sums, f32 master
    /// weights; fast path only, and only in bf16 on CPUs with AVX512-BF16).
    #[serde(default)]
    pub precision: Precision,
    /// Start from the weights of this decodex GPT checkpoint (a folder with `config.json`,
    /// `model.safetensors`, `tokenizer.json`) instead of a random init: fine-tuning, or continued
    /// pretraining. `[model]` must describe the same architecture; the data is tokenized with the
    /// checkpoint's tokenizer. The optimizer starts fresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

fn one() -> usize {
    1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.95
}
fn default_eps() -> f64 {
    1e-8
}
fn default_seed() -> u64 {
    1337
}

/// The model family a training config trains, named by its `[model] arch`; a GPT config has
/// none. `decodex train` picks its trainer by it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    /// A GPT language model (`TrainConfig`, `trainer::train`).
    #[default]
    Gpt,
    /// The sequence-to-sequence models (`seq2seq::Seq2SeqTrainConfig`, `train_seq2seq`).
    RnnSeq2seq,
    TransformerSeq2seq,
}

impl Arch {
    /// The `[model] arch` of the TOML config at `path`: GPT where it has none or cannot be read
    /// (the GPT trainer then reports what is wrong with the file).
    pub fn of_config(path: &Path) -> Arch {
        #[derive(Deserialize)]
        struct Config {
            model: Model,
        }
        #[derive(Deserialize)]
        struct Model {
            #[serde(default)]
            arch: Arch,
        }
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| toml::from_str::<Config>(&text).ok())
            .map_or(Arch::Gpt, |c| c.model.arch)
    }
}

/// The gradient backend of a training run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The fast CPU path when the model allows it (no dropout), else candle autograd.
    #[default]
    Auto,
    /// The hand-written forward/backward of `models::gpt::fast` (no dropout).
    Fast,
    /// candle's autograd over `models::gpt` (dropout; the reference path).
    Candle,
}

impl TrainConfig {
    /// Reads and validates a TOML config; errors name the file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: TrainConfig = toml::from_str(&text).map_err(|e| Error::BadConfig {
            path: path.to_path_buf(),
            msg: e.message().to_string() + &span_hint(&text, e.span()),
        })?;
        cfg.validate_static().map_err(|e| Error::BadConfig {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Ok(cfg)
    }

    /// Checks everything that does not need the data (vocab_size may still be 0 here).
    pub fn validate_static(&self) -> Result<()> {
        let m = &self.model;
        if m.n_head == 0 || !m.n_embd.is_multiple_of(m.n_head) {
            return Err(Error::HeadsDoNotDivide {
                n_embd: m.n_embd,
                n_head: m.n_head,
            });
        }
        let t = &self.train;
        let bad = |msg: String| Err(Error::Invalid(msg));
        if t.batch_size == 0 || t.grad_accum == 0 {
            return bad("batch_size and grad_accum must be positive".into());
        }
        if t.eval_interval == 0 || t.eval_iters == 0 || t.log_interval == 0 {
            return bad("eval_interval, eval_iters and log_interval must be positive".into());
        }
        if t.learning_rate.is_nan() || t.learning_rate <= 0.0 || t.min_lr < 0.0 {
            return bad(format!(
                "learning_rate ({}) must be positive and min_lr ({}) non-negative",
                t.learning_rate, t.min_lr
            ));
        }
        if self.data.tokenizer == TokenizerKind::Bpe
            && self.data.vocab_size.is_none()
            && self.tokenizer_path().is_none()
        {
            return bad("data.vocab_size is required with tokenizer = \"bpe\"".into());
        }
        if !(0.0..1.0).contains(&self.data.val_fraction) {
            return bad(format!(
                "data.val_fraction ({}) must be in [0, 1)",
                self.data.val_fraction
            ));
        }
        Ok(())
    }

    /// The `tokenizer.json` the data is encoded with, when one is given rather than trained:
    /// `data.tokenizer_file`, else the `train.init_from` checkpoint's.
    pub fn tokenizer_path(&self) -> Option<PathBuf> {
        self.data.tokenizer_file.clone().or_else(|| {
            self.train
                .init_from
                .as_ref()
                .map(|d| d.join(crate::models::gpt::checkpoint::TOKENIZER_FILE))
        })
    }

    pub fn lr_decay_iters(&self) -> usize {
        self.train.lr_decay_iters.unwrap_or(self.train.max_iters)
    }

    /// nanoGPT's `get_lr`: linear warm-up over `warmup_iters` (divided by `warmup_iters + 1`),
    /// cosine decay to `min_lr` at `lr_decay_iters`, then constant.
    pub fn schedule(&self) -> Schedule {
        let t = &self.train;
        Schedule {
            peak: t.learning_rate,
            warmup: t.warmup_iters,
            warmup_div: t.warmup_iters + 1,
            decay: Decay::Cosine {
                min: t.min_lr,
                end: self.lr_decay_iters(),
                from: t.warmup_iters,
                ahead: 0,
            },
        }
    }
}

fn span_hint(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(s) => {
            let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

/// The data folder: `DECODEX_DATA` if set, else `../shared/data` if it exists, else `data`.
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DECODEX_DATA") {
        return PathBuf::from(d);
    }
    let shared = PathBuf::from("../shared/data");
    if shared.exists() {
        return shared;
    }
    PathBuf::from("data")
}

/// Resolves a corpus path: absolute or existing relative to the working directory as given,
/// otherwise relative to the data folder.
pub fn resolve_data_path(p: &Path) -> PathBuf {
    if p.is_absolute() || p.exists() {
        p.to_path_buf()
    } else {
        data_dir().join(p)
    }
}

/// The cache folder for prepared token files: `DECODEX_CACHE`, else `$HOME/.cache/decodex`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("DECODEX_CACHE") {
        return PathBuf::from(d);
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache").join("decodex"),
        None => PathBuf::from(".cache").join("decodex"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAR: &str = r#"
[data]
corpus = "lm/tinyshakespeare/input.txt"
tokenizer = "char"
[model]
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
[train]
batch_size = 12
max_iters = 2000
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 100
eval_interval = 250
eval_iters = 20
"#;

    #[test]
    fn schedule_warms_up_then_decays() {
        let cfg: TrainConfig = toml::from_str(CHAR).unwrap();
        let lr = |it| cfg.schedule().lr(it, 0.0);
        assert!((lr(0) - 1e-3 / 101.0).abs() < 1e-12);
        assert!((lr(100) - 1e-3).abs() < 1e-12);
        assert!((lr(2000) - 1e-4).abs() < 1e-12);
        assert!(lr(1000) < 1e-3 && lr(1000) > 1e-4);
    }

    #[test]
    fn precision_defaults_to_fp32_and_is_validated() {
        let cfg: TrainConfig = toml::from_str(CHAR).unwrap();
        assert_eq!(cfg.train.precision, Precision::F32);
        let bf16 = CHAR.replace("[train]\n", "[train]\nprecision = \"bf16\"\n");
        let cfg: TrainConfig = toml::from_str(&bf16).unwrap();
        cfg.validate_static().unwrap();
        let fp16 = CHAR.replace("[train]\n", "[train]\nprecision = \"fp16\"\n");
        let err = toml::from_str::<TrainConfig>(&fp16)
            .unwrap_err()
            .to_string();
        assert!(err.contains("fp16") && err.contains("bf16"), "{err}");
    }

    /// A one-layer GPT for the backend checks.
    fn tiny_gpt() -> crate::models::gpt::GptConfig {
        crate::models::gpt::GptConfig {
            vocab_size: 11,
            block_size: 8,
            n_layer: 1,
            n_head: 2,
            n_embd: 8,
            dropout: 0.0,
            bias: true,
            activation: crate::models::gpt::Activation::GeluNew,
            layer_norm_epsilon: 1e-5,
        }
    }

    #[test]
    fn bf16_with_the_candle_backend_is_an_error() {
        let text = CHAR.replace(
            "[train]\n",
            "[train]\nprecision = \"bf16\"\nbackend = \"candle\"\n",
        );
        let cfg: TrainConfig = toml::from_str(&text).unwrap();
        let m = tiny_gpt();
        let err = crate::train::trainer::make_backend(&cfg, &m, &[])
            .err()
            .expect("candle + bf16 must be refused")
            .to_string();
        assert!(err.contains("bf16") && err.contains("fast"), "{err}");
    }

    /// On a CPU without AVX512-BF16 the bf16 matmuls exist only as a slow emulation: a config
    /// asking for them is refused, naming the way out.
    #[test]
    #[cfg_attr(
        decodex_avx512bf16,
        ignore = "the build machine has AVX512-BF16, so bf16 is allowed"
    )]
    fn bf16_without_avx512_bf16_is_refused() {
        let text = CHAR.replace("[train]\n", "[train]\nprecision = \"bf16\"\n");
        let cfg: TrainConfig = toml::from_str(&text).unwrap();
        let m = tiny_gpt();
        let params = vec![0f32; m.num_params()];
        let err = crate::train::trainer::make_backend(&cfg, &m, &params)
            .err()
            .expect("bf16 without AVX512-BF16 must be refused")
            .to_string();
        assert!(err.contains("AVX512-BF16") && err.contains("fp32"), "{err}");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let text = CHAR.replace("batch_size = 12", "batch_size = 12\nbatchsize = 3");
        let err = toml::from_str::<TrainConfig>(&text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("batchsize"), "{err}");
    }
}
