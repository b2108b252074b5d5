//! Model directories: `model.safetensors` + `config.json` + `tokenizer.json`, laid out so that
//! Hugging Face `transformers` loads them as GPT-2 (`GPT2LMHeadModel`), plus, for training
//! checkpoints, `optimizer.safetensors` and `trainer_state.json`. Every file is written
//! atomically (temporary file, then rename).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::error::{write_atomic, Error, Result};
use crate::models::gpt::{Activation, GptConfig};
use crate::nn::tensor_io::{load_tensors, save_tensors, LoadedTensors};
use crate::tokenizer::Tokenizer;

pub const MODEL_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "trainer_state.json";

/// Hugging Face's GPT-2 `config.json`, with decodex's `bias` flag as an extra key (transformers
/// keeps unknown keys as attributes and ignores them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HfGpt2Config {
    #[serde(default = "gpt2_type")]
    pub model_type: String,
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "gelu_new")]
    pub activation_function: String,
    #[serde(default)]
    pub resid_pdrop: f32,
    #[serde(default)]
    pub embd_pdrop: f32,
    #[serde(default)]
    pub attn_pdrop: f32,
    #[serde(default = "eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default = "yes")]
    pub bias: bool,
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

fn gpt2_type() -> String {
    "gpt2".into()
}
fn gelu_new() -> String {
    "gelu_new".into()
}
fn eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

impl HfGpt2Config {
    pub fn from_gpt(cfg: &GptConfig, eos: Option<u32>) -> Self {
        Self {
            model_type: "gpt2".into(),
            architectures: vec!["GPT2LMHeadModel".into()],
            vocab_size: cfg.vocab_size,
            n_positions: cfg.block_size,
            n_embd: cfg.n_embd,
            n_layer: cfg.n_layer,
            n_head: cfg.n_head,
            n_inner: None,
            activation_function: cfg.activation.name().into(),
            resid_pdrop: cfg.dropout,
            embd_pdrop: cfg.dropout,
            attn_pdrop: cfg.dropout,
            layer_norm_epsilon: cfg.layer_norm_epsilon,
            tie_word_embeddings: true,
            bos_token_id: eos,
            eos_token_id: eos,
            bias: cfg.bias,
            torch_dtype: Some("float32".into()),
        }
    }

    pub fn to_gpt(&self, path: &Path) -> Result<GptConfig> {
        let bad = |msg: String| Error::BadConfig {
            path: path.to_path_buf(),
            msg,
        };
        if self.model_type != "gpt2" {
            return Err(bad(format!(
                "model_type {:?} is not supported here (expected \"gpt2\")",
                self.model_type
            )));
        }
        if self.n_inner.is_some_and(|n| n != 4 * self.n_embd) {
            return Err(bad("n_inner other than 4 * n_embd is not supported".into()));
        }
        if !self.tie_word_embeddings {
            return Err(bad("untied word embeddings are not supported".into()));
        }
        let activation = match self.activation_function.as_str() {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluNew,
            "gelu" => Activation::Gelu,
            other => {
                return Err(bad(format!(
                    "activation_function {other:?} is not supported"
                )))
            }
        };
        let cfg = GptConfig {
            vocab_size: self.vocab_size,
            block_size: self.n_positions,
            n_layer: self.n_layer,
            n_head: self.n_head,
            n_embd: self.n_embd,
            dropout: self.resid_pdrop,
            bias: self.bias,
            activation,
            layer_norm_epsilon: self.layer_norm_epsilon,
        };
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }
}

/// Writes `config.json`.
pub fn save_config(dir: &Path, cfg: &GptConfig, eos: Option<u32>) -> Result<()> {
    let json =
        serde_json::to_string_pretty(&HfGpt2Config::from_gpt(cfg, eos)).expect("config serializes");
    write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())
}

/// Reads `config.json` (decodex's or Hugging Face's GPT-2 one).
pub fn load_config(dir: &Path) -> Result<GptConfig> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let hf: HfGpt2Config = serde_json::from_str(&text).map_err(|e| Error::BadConfig {
        path: path.clone(),
        msg: e.to_string(),
    })?;
    hf.to_gpt(&path)
}

/// Gathers the model's parameters from loaded tensors into one flat vector in
/// `param_shapes()` order, checking every name and shape. Accepts Hugging Face's variants: names
/// without the `transformer.` prefix, an extra `lm_head.weight` and attention-mask buffers.
pub fn flat_params(cfg: &GptConfig, loaded: &LoadedTensors, path: &Path) -> Result<Vec<f32>> {
    let mut flat = Vec::with_capacity(cfg.num_params());
    for (name, shape) in cfg.param_shapes() {
        let short = name.strip_prefix("transformer.").unwrap_or(&name);
        let (got_shape, data) = loaded
            .tensors
            .get(&name)
            .or_else(|| loaded.tensors.get(short))
            .ok_or_else(|| Error::CorruptCheckpoint {
                path: path.to_path_buf(),
                msg: format!("tensor {name} is missing"),
            })?;
        if *got_shape != shape {
            return Err(Error::CorruptCheckpoint {
                path: path.to_path_buf(),
                msg: format!("tensor {name} has shape {got_shape:?}, the config needs {shape:?}"),
            });
        }
        flat.extend_from_slice(data);
    }
    Ok(flat)
}

/// Writes the model weights (named by `param_shapes()`) and `config.json`. With `hf_biases`,
/// a model without biases is written with explicit zero biases so `transformers` loads it
/// without warnings.
pub fn save_model(
    dir: &Path,
    cfg: &GptConfig,
    flat: &[f32],
    eos: Option<u32>,
    step: Option<u64>,
    hf_biases: bool,
) -> Result<()> {
    let mut out_cfg = cfg.clone();
    let zeros;
    let mut tensors: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
    let mut off = 0;
    for (name, shape) in cfg.param_shapes() {
        let n: usize = shape.iter().product();
        tensors.push((name, shape, &flat[off..off + n]));
        off += n;
    }
    if hf_biases && !cfg.bias {
        out_cfg.bias = true;
        let max = 4 * cfg.n_embd;
        zeros = vec![0.0f32; max];
        let with_bias = out_cfg.param_shapes();
        let mut by_name: HashMap<String, (Vec<usize>, &[f32])> =
            tensors.drain(..).map(|(n, s, d)| (n, (s, d))).collect();
        for (name, shape) in with_bias {
            let n: usize = shape.iter().product();
            let (s, d) = by_name
                .remove(&name)
                .unwrap_or_else(|| (shape.clone(), &zeros[..n]));
            tensors.push((name, s, d));
        }
    }
    let mut meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    if let Some(s) = step {
        meta.insert("step".into(), s.to_string());
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    save_tensors(&dir.join(MODEL_FILE), &tensors, meta)?;
    save_config(dir, &out_cfg, eos)
}

/// A model directory loaded for inference.
pub struct LoadedModel {
    pub cfg: GptConfig,
    pub params: Vec<f32>,
    pub tokenizer: Tokenizer,
    pub dir: PathBuf,
}

/// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`, checking that the
/// tokenizer's vocabulary fits the model's.
pub fn load_model(dir: &Path) -> Result<LoadedModel> {
    if !dir.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
        ));
    }
    let cfg = load_config(dir)?;
    let tok_path = dir.join(TOKENIZER_FILE);
    let tokenizer = Tokenizer::from_file(&tok_path)?;
    if tokenizer.vocab_size() > cfg.vocab_size {
        return Err(Error::VocabMismatch {
            path: tok_path,
            tokenizer: tokenizer.vocab_size(),
            model: cfg.vocab_size,
        });
    }
    let model_path = dir.join(MODEL_FILE);
    let loaded = load_tensors(&model_path)?;
    let params = flat_params(&cfg, &loaded, &model_path)?;
    Ok(LoadedModel {
        cfg,
        params,
        tokenizer,
        dir: dir.to_path_buf(),
    })
}

impl LoadedModel {
    /// The candle model on `device`.
    pub fn gpt(&self, device: &Device) -> Result<crate::models::Gpt> {
        let tensors = crate::models::gpt::flat_to_tensors(&self.cfg, &self.params, device)?;
        Ok(crate::models::Gpt::from_tensors(
            tensors, &self.cfg, device,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same tensors and metadata give the same bytes, whatever order the metadata map
    /// iterates in, and the sorted header still loads.
    #[test]
    fn save_tensors_is_byte_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = ([1.0f32, 2.0, 3.0], [0.5f32; 4]);
        let tensors = [
            ("z.weight".to_string(), vec![3], &a[..]),
            ("a.bias".to_string(), vec![2, 2], &b[..]),
        ];
        let meta = || -> HashMap<String, String> {
            (0..32)
                .map(|i| (format!("key{i}"), format!("{i}")))
                .collect()
        };
        let files: Vec<Vec<u8>> = (0..4)
            .map(|i| {
                let p = dir.path().join(format!("{i}.safetensors"));
                save_tensors(&p, &tensors, meta()).unwrap();
                std::fs::read(&p).unwrap()
            })
            .collect();
        assert!(files.iter().all(|f| f == &files[0]));
        let back = load_tensors(&dir.path().join("0.safetensors")).unwrap();
        assert_eq!(back.metadata, meta());
        assert_eq!(back.tensors["z.weight"], (vec![3], a.to_vec()));
        assert_eq!(back.tensors["a.bias"], (vec![2, 2], b.to_vec()));
    }
}
