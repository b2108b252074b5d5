//! Llama-family decoder (Llama 2/3, SmolLM, TinyLlama, Mistral without sliding window):
//! token embeddings → N × [RMSNorm → grouped-query attention with rotary positions → residual,
//! RMSNorm → SwiGLU MLP → residual] → RMSNorm → linear head (tied to the embeddings or not).
//!
//! Weights come from a Hugging Face directory (config.json + safetensors, dense) or a GGUF file
//! (`llama.cpp`'s format), whose quantized matrices are kept quantized and multiplied by candle's
//! quantized matmul, or dequantized to f32 on request. llama.cpp's converter permutes the rows of
//! the query and key projections so that rotary embedding rotates adjacent pairs (2i, 2i+1);
//! Hugging Face checkpoints rotate the halves (i, i + d/2). The model keeps the weights as stored
//! and applies the matching rotation (`RopeStyle`), so both compute the same function.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::models::{Cache, Decoder};

pub mod adapter;
pub mod fast;
pub mod infer;
pub mod lora;

use crate::error::{Error, Result};
use crate::kernels::quant::QuantMatrix;
use crate::kernels::{rope_tables, RopeAngles};
use crate::nn::{attention, causal_mask};

/// The architecture's hyper-parameters, named as in Hugging Face's `LlamaConfig`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// One id or a list, as in Hugging Face configs.
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_ctx() -> usize {
    2048
}

impl LlamaConfig {
    pub fn n_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The end-of-sequence ids (none when the config names none).
    pub fn eos_ids(&self) -> Vec<u32> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => {
                n.as_u64().map(|n| n as u32).into_iter().collect()
            }
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_u64().map(|n| n as u32))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| {
            Err(Error::UnsupportedModel {
                path: path.to_path_buf(),
                msg,
            })
        };
        let (h, kv) = (self.num_attention_heads, self.n_kv_heads());
        if h == 0 || kv == 0 || !self.hidden_size.is_multiple_of(h) || !h.is_multiple_of(kv) {
            return bad(format!(
                "hidden size {} with {h} heads and {kv} key/value heads does not split evenly",
                self.hidden_size
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!("head size {} is odd", self.head_dim()));
        }
        Ok(())
    }
}

/// Which pairs of a head's dimensions rotary embedding rotates together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// (i, i + d/2): Hugging Face's `rotate_half`.
    Halves,
    /// (2i, 2i + 1): llama.cpp's layout for GGUF files.
    Adjacent,
}

/// A weight matrix (out, in) applied as x @ Wᵀ: dense f32; Q4_0, Q4_1 or Q8_0 blocks through
/// decodex's integer kernels (`kernels::quant`); other quantizations through candle's.
#[derive(Debug, Clone)]
pub enum Linear {
    Dense(Tensor),
    /// Shared: a tied head and the token embedding are one matrix.
    Blocks(std::sync::Arc<QuantMatrix>),
    Quantized(QMatMul),
}

impl Linear {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Linear::Dense(w) => x.broadcast_matmul(&w.t()?)?,
            Linear::Blocks(q) => {
                let dims = x.dims().to_vec();
                let rows = x.elem_count() / q.cols;
                let xs = x.flatten_all()?.to_vec1::<f32>()?;
                let mut out = vec![0f32; rows * q.rows];
                q.matmul(&xs, rows, &mut out);
                let mut shape = dims;
                *shape.last_mut().expect("x has a feature axis") = q.rows;
                Tensor::from_vec(out, shape, x.device())?
            }
            Linear::Quantized(q) => q.forward(x)?,
        })
    }

    /// The quantized form of a GGUF matrix: decodex's block kernels where they apply, candle's
    /// quantized matmul otherwise.
    fn quantized(q: QTensor) -> Result<Linear> {
        Ok(match QuantMatrix::from_qtensor(&q)? {
            Some(m) => Linear::Blocks(std::sync::Arc::new(m)),
            None => Linear::Quantized(QMatMul::from_qtensor(q)?),
        })
    }
}

/// The token embedding table (vocab, hidden): f32, or the GGUF blocks it was stored in.
#[derive(Debug, Clone)]
enum Embedding {
    Dense(Tensor),
    Blocks(std::sync::Arc<QuantMatrix>),
}

/// One transformer block.
#[derive(Debug, Clone)]
struct Block {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    mlp_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

#[derive(Debug, Clone)]
pub struct Llama {
    pub cfg: LlamaConfig,
    embed: Embedding,
    blocks: Vec<Block>,
    norm: Tensor,
    head: Linear,
    rope: RopeStyle,
    /// cos and sin of position × frequency, (max positions, head_dim / 2).
    cos: Tensor,
    sin: Tensor,
    /// The same tables as flat vectors, for the decoding path.
    cos_table: Vec<f32>,
    sin_table: Vec<f32>,
    pub device: Device,
    /// Whether the matrices are quantized (a GGUF file loaded without dequantizing). The
    /// decoding path then computes as llama.cpp's CPU backend does (`kernels::ggml`, `kernels::quant`):
    /// f64 RMSNorm sums, ggml's rotary tables and expf, an f16 KV cache and f16 attention
    /// products; otherwise it computes in f32 as `transformers` does.
    pub quantized: bool,
    /// The quantized path's attention: llama.cpp's flash attention (`-fa on`, the default, as
    /// llama.cpp's `auto` resolves on a CPU) or its attention without (`-fa off`); see
    /// `kernels::kv_attention`.
    pub flash_attn: bool,
}

/// The candle forward's key/value cache: k and v of each layer, (batch, kv heads, positions,
/// head_dim).
#[derive(Debug, Clone)]
pub struct CandleCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Positions already fed (the same for every row).
    pub pos: usize,
}

impl Llama {
    /// Loads a GGUF file of the `llama` architecture. Quantized matrices stay quantized unless
    /// `dequantize`; norms and embeddings are f32 either way.
    pub fn from_gguf(path: &Path, dequantize: bool, device: &Device) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let content = read_gguf(path, &mut file)?;
        let cfg = gguf_config(path, &content)?;
        let corrupt = |e: candle_core::Error| Error::CorruptCheckpoint {
            path: path.to_path_buf(),
            msg: e.to_string(),
        };
        let mut get = |name: &str| -> Result<QTensor> {
            if !content.tensor_infos.contains_key(name) {
                return Err(Error::CorruptCheckpoint {
                    path: path.to_path_buf(),
                    msg: format!("tensor {name} is missing"),
                });
            }
            content.tensor(&mut file, name, device).map_err(corrupt)
        };
        let dense = |q: QTensor| -> Result<Tensor> { Ok(q.dequantize(device)?) };
        let linear = |q: QTensor| -> Result<Linear> {
            Ok(if dequantize {
                Linear::Dense(q.dequantize(device)?)
            } else {
                Linear::quantized(q)?
            })
        };
        // The token embedding stays in its blocks when they are decodex's formats (rows are
        // dequantized as they are looked up), shared with a tied head.
        let embed_q = get("token_embd.weight")?;
        let embed_blocks = match dequantize {
            false => QuantMatrix::from_qtensor(&embed_q)?.map(std::sync::Arc::new),
            true => None,
        };
        let embed = match &embed_blocks {
            Some(m) => Embedding::Blocks(m.clone()),
            None => Embedding::Dense(embed_q.dequantize(device)?),
        };
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let mut w = |n: &str| get(&format!("blk.{l}.{n}.weight"));
            blocks.push(Block {
                attn_norm: dense(w("attn_norm")?)?,
                q: linear(w("attn_q")?)?,
                k: linear(w("attn_k")?)?,
                v: linear(w("attn_v")?)?,
                o: linear(w("attn_output")?)?,
                mlp_norm: dense(w("ffn_norm")?)?,
                gate: linear(w("ffn_gate")?)?,
                up: linear(w("ffn_up")?)?,
                down: linear(w("ffn_down")?)?,
            });
        }
        let norm = dense(get("output_norm.weight")?)?;
        let head = if content.tensor_infos.contains_key("output.weight") {
            linear(get("output.weight")?)?
        } else if let Some(m) = embed_blocks {
            Linear::Blocks(m)
        } else {
            linear(embed_q)?
        };
        Self::assemble(
            cfg,
            embed,
            blocks,
            norm,
            head,
            RopeStyle::Adjacent,
            !dequantize,
            device,
        )
    }

    /// Loads a Hugging Face directory: `config.json` and `model.safetensors` or the shards
    /// named by `model.safetensors.index.json`.
    pub fn from_hf_dir(dir: &Path, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let cfg: LlamaConfig = serde_json::from_str(&text).map_err(|e| Error::BadConfig {
            path: cfg_path.clone(),
            msg: format!("not a Llama config.json: {e}"),
        })?;
        cfg.validate(&cfg_path)?;
        let mut tensors = HashMap::new();
        for file in safetensors_files(dir)? {
            let loaded = candle_core::safetensors::load(&file, device).map_err(|e| {
                Error::CorruptCheckpoint {
                    path: file.clone(),
                    msg: e.to_string(),
                }
            })?;
            tensors.extend(loaded);
        }
        Self::from_hf_tensors(cfg, tensors, dir, device)
    }

    /// Builds the model from tensors named as in a Hugging Face `LlamaForCausalLM` state dict
    /// (q and k rows in Hugging Face's order); `source` names where they came from, for errors.
    pub fn from_hf_tensors(
        cfg: LlamaConfig,
        mut tensors: HashMap<String, Tensor>,
        source: &Path,
        device: &Device,
    ) -> Result<Self> {
        let dir = source;
        let mut get = |name: &str| -> Result<Tensor> {
            let t = tensors
                .remove(name)
                .ok_or_else(|| Error::CorruptCheckpoint {
                    path: dir.to_path_buf(),
                    msg: format!("tensor {name} is missing"),
                })?;
            Ok(t.to_dtype(DType::F32)?.to_device(device)?)
        };
        let embed_w = get("model.embed_tokens.weight")?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let mut w = |n: &str| get(&format!("{p}.{n}.weight"));
            blocks.push(Block {
                attn_norm: w("input_layernorm")?,
                q: Linear::Dense(w("self_attn.q_proj")?),
                k: Linear::Dense(w("self_attn.k_proj")?),
                v: Linear::Dense(w("self_attn.v_proj")?),
                o: Linear::Dense(w("self_attn.o_proj")?),
                mlp_norm: w("post_attention_layernorm")?,
                gate: Linear::Dense(w("mlp.gate_proj")?),
                up: Linear::Dense(w("mlp.up_proj")?),
                down: Linear::Dense(w("mlp.down_proj")?),
            });
        }
        let norm = get("model.norm.weight")?;
        let head = match get("lm_head.weight") {
            Ok(w) if !cfg.tie_word_embeddings => Linear::Dense(w),
            _ => Linear::Dense(embed_w.clone()),
        };
        let embed = Embedding::Dense(embed_w);
        Self::assemble(
            cfg,
            embed,
            blocks,
            norm,
            head,
            RopeStyle::Halves,
            false,
            device,
        )
    }

    /// The weights as a Hugging Face `LlamaForCausalLM` state dict: f32, q and k rows in
    /// Hugging Face's order (a GGUF file's are un-permuted), `lm_head.weight` only when the head
    /// is not tied. Needs dense weights (a GGUF file loaded with `dequantize`).
    pub fn hf_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let dense = |l: &Linear, name: &str| -> Result<Tensor> {
            match l {
                Linear::Dense(w) => Ok(w.clone()),
                _ => Err(Error::Invalid(format!(
                    "{name} is quantized; load the model dequantized to export its weights"
                ))),
            }
        };
        let (nh, nkv) = (self.cfg.num_attention_heads, self.cfg.n_kv_heads());
        let to_hf = |w: Tensor, heads: usize| -> Result<Tensor> {
            Ok(match self.rope {
                RopeStyle::Halves => w,
                RopeStyle::Adjacent => {
                    let (rows, cols) = w.dims2()?;
                    // llama.cpp stores row h·d + 2i + j of Hugging Face's row h·d + j·d/2 + i.
                    w.reshape((heads, rows / heads / 2, 2, cols))?
                        .transpose(1, 2)?
                        .contiguous()?
                        .reshape((rows, cols))?
                }
            })
        };
        let mut out = Vec::new();
        let embed = match &self.embed {
            Embedding::Dense(e) => e.clone(),
            Embedding::Blocks(_) => {
                return Err(Error::Invalid(
                    "the embedding is quantized; load the model dequantized".into(),
                ))
            }
        };
        out.push(("model.embed_tokens.weight".to_string(), embed));
        for (l, b) in self.blocks.iter().enumerate() {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.input_layernorm.weight"), b.attn_norm.clone()));
            out.push((
                format!("{p}.self_attn.q_proj.weight"),
                to_hf(dense(&b.q, "q")?, nh)?,
            ));
            out.push((
                format!("{p}.self_attn.k_proj.weight"),
                to_hf(dense(&b.k, "k")?, nkv)?,
            ));
            out.push((format!("{p}.self_attn.v_proj.weight"), dense(&b.v, "v")?));
            out.push((format!("{p}.self_attn.o_proj.weight"), dense(&b.o, "o")?));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                b.mlp_norm.clone(),
            ));
            out.push((format!("{p}.mlp.gate_proj.weight"), dense(&b.gate, "gate")?));
            out.push((format!("{p}.mlp.up_proj.weight"), dense(&b.up, "up")?));
            out.push((format!("{p}.mlp.down_proj.weight"), dense(&b.down, "down")?));
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if !self.cfg.tie_word_embeddings {
            out.push(("lm_head.weight".to_string(), dense(&self.head, "lm_head")?));
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        cfg: LlamaConfig,
        embed: Embedding,
        blocks: Vec<Block>,
        norm: Tensor,
        head: Linear,
        rope: RopeStyle,
        quantized: bool,
        device: &Device,
    ) -> Result<Self> {
        let half = cfg.head_dim() / 2;
        let n = cfg.max_position_embeddings;
        // The quantized path computes as llama.cpp does, rotary tables included.
        let how = [RopeAngles::F32, RopeAngles::Ggml][quantized as usize];
        let (cos_table, sin_table) = rope_tables(n, 2 * half, cfg.rope_theta, how);
        Ok(Self {
            cos: Tensor::from_slice(&cos_table, (n, half), device)?,
            sin: Tensor::from_slice(&sin_table, (n, half), device)?,
            cos_table,
            sin_table,
            cfg,
            embed,
            blocks,
            norm,
            head,
            rope,
            device: device.clone(),
            quantized,
            flash_attn: true,
        })
    }

    /// The embeddings of `ids`, row after row (ids.len() × hidden).
    pub fn embed_rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let c = self.cfg.hidden_size;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            return Err(Error::UnknownTokenId {
                id: bad,
                vocab_size: self.cfg.vocab_size,
            });
        }
        let mut x = vec![0f32; ids.len() * c];
        match &self.embed {
            Embedding::Dense(e) => infer::with_f32(e, |e| {
                for (row, &id) in x.chunks_exact_mut(c).zip(ids) {
                    row.copy_from_slice(&e[id as usize * c..(id as usize + 1) * c]);
                }
            })?,
            Embedding::Blocks(m) => {
                for (row, &id) in x.chunks_exact_mut(c).zip(ids) {
                    m.dequantize_row(id as usize, row);
                }
            }
        }
        Ok(x)
    }

    /// An empty cache for `forward`.
    pub fn candle_cache(&self) -> CandleCache {
        CandleCache {
            layers: vec![None; self.cfg.num_hidden_layers],
            pos: 0,
        }
    }

    /// Logits (B, T, vocab) for token ids (B, T) that follow the cache's positions; the cache
    /// grows by T. The reference path, in candle ops; decoding runs `infer::step`, which computes
    /// the same function on flat buffers (`tests/llama.rs` checks both against transformers).
    pub fn forward(&self, ids: &Tensor, cache: &mut CandleCache) -> Result<Tensor> {
        self.head.forward(&self.hidden(ids, cache)?)
    }

    /// The last hidden state (B, T, C), after the final RMSNorm, of `forward`: what the LM
    /// head reads (and what mean-pooled decoder embeddings average).
    pub fn hidden(&self, ids: &Tensor, cache: &mut CandleCache) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let start = cache.pos;
        if start + t > self.cfg.max_position_embeddings {
            return Err(Error::Invalid(format!(
                "{} positions exceed the model's context of {}",
                start + t,
                self.cfg.max_position_embeddings
            )));
        }
        let (nh, nkv, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.n_kv_heads(),
            self.cfg.head_dim(),
        );
        let eps = self.cfg.rms_norm_eps as f32;
        let cos = self.cos.narrow(0, start, t)?;
        let sin = self.sin.narrow(0, start, t)?;
        let mask = (t > 1)
            .then(|| causal_mask(t, start + t, f32::NEG_INFINITY, &self.device))
            .transpose()?;
        let rows = self.embed_rows(&ids.flatten_all()?.to_vec1::<u32>()?)?;
        let mut x = Tensor::from_vec(rows, (b, t, self.cfg.hidden_size), &self.device)?;
        for (block, kv) in self.blocks.iter().zip(cache.layers.iter_mut()) {
            let h = candle_nn::ops::rms_norm(&x, &block.attn_norm, eps)?;
            let heads = |y: Tensor, n: usize| -> Result<Tensor> {
                Ok(y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
            };
            let q = heads(block.q.forward(&h)?, nh)?;
            let k = heads(block.k.forward(&h)?, nkv)?;
            let v = heads(block.v.forward(&h)?, nkv)?;
            let (q, k) = match self.rope {
                RopeStyle::Halves => (
                    candle_nn::rotary_emb::rope(&q, &cos, &sin)?,
                    candle_nn::rotary_emb::rope(&k, &cos, &sin)?,
                ),
                RopeStyle::Adjacent => (
                    candle_nn::rotary_emb::rope_i(&q, &cos, &sin)?,
                    candle_nn::rotary_emb::rope_i(&k, &cos, &sin)?,
                ),
            };
            let (k, v) = match kv.take() {
                Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                None => (k, v),
            };
            *kv = Some((k.clone(), v.clone()));
            let y = attention(&q, &k, &v, mask.as_ref(), None)?;
            let y = y.transpose(1, 2)?.reshape((b, t, nh * hd))?;
            x = (x + block.o.forward(&y)?)?;
            let h = candle_nn::ops::rms_norm(&x, &block.mlp_norm, eps)?;
            let g = candle_nn::ops::silu(&block.gate.forward(&h)?)?;
            let m = (g * block.up.forward(&h)?)?;
            x = (x + block.down.forward(&m)?)?;
        }
        cache.pos += t;
        Ok(candle_nn::ops::rms_norm(&x, &self.norm, eps)?)
    }
}

impl Decoder for Llama {
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn context_len(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    fn new_cache(&self, batch: usize) -> Result<Cache> {
        Ok(Cache::new(infer::Cache::new(
            &self.cfg,
            batch,
            self.quantized,
        )))
    }

    fn step(&self, tokens: &[u32], batch: usize, cache: &mut Cache) -> Result<Vec<f32>> {
        let cache = cache.get::<infer::Cache>()?;
        // Run on a worker of the current rayon pool: each parallel region of the step then starts
        // from a thread that works in it, instead of handing off from (and waking back) the
        // caller, which at batch 1 costs more than some of the regions themselves.
        rayon::scope(|_| infer::step(self, tokens, batch, cache))
    }

    fn step_many(&self, feeds: &mut [(&[u32], &mut Cache)]) -> Result<Vec<Vec<f32>>> {
        let mut own = Vec::with_capacity(feeds.len());
        for (tokens, cache) in feeds.iter_mut() {
            own.push((*tokens, cache.get::<infer::Cache>()?));
        }
        rayon::scope(|_| infer::step_many(self, &mut own))
    }

    fn select_rows(&self, cache: &mut Cache, rows: &[usize]) -> Result<()> {
        let cache = cache.get::<infer::Cache>()?;
        cache.select_rows(rows);
        Ok(())
    }

    fn set_padding(&self, cache: &mut Cache, pads: &[usize]) -> Result<()> {
        let cache = cache.get::<infer::Cache>()?;
        cache.set_padding(pads)
    }
}

/// Reads a GGUF header, turning a short or malformed file into one clear error.
pub fn read_gguf(path: &Path, file: &mut std::fs::File) -> Result<gguf_file::Content> {
    let content = gguf_file::Content::read(file).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("unknown dtype") {
            Error::UnsupportedModel {
                path: path.to_path_buf(),
                msg: format!("a tensor has a quantization type decodex cannot read ({msg})"),
            }
        } else {
            Error::CorruptCheckpoint {
                path: path.to_path_buf(),
                msg: format!("not a readable GGUF file: {msg}"),
            }
        }
    })?;
    // Content::read does not look at the tensor data: check that the file holds all of it.
    let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
    for (name, info) in &content.tensor_infos {
        let elems = info.shape.elem_count();
        let bytes = elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        let end = content.tensor_data_offset + info.offset + bytes as u64;
        if end > size {
            return Err(Error::CorruptCheckpoint {
                path: path.to_path_buf(),
                msg: format!(
                    "the file ends before tensor {name} ({end} bytes needed, {size} present)"
                ),
            });
        }
    }
    Ok(content)
}

/// The Llama hyper-parameters in a GGUF header; other architectures are refused.
fn gguf_config(path: &Path, c: &gguf_file::Content) -> Result<LlamaConfig> {
    let unsupported = |msg: String| Error::UnsupportedModel {
        path: path.to_path_buf(),
        msg,
    };
    let arch = c
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if arch != "llama" {
        return Err(unsupported(format!(
            "architecture {arch:?} is not supported (supported: \"llama\")"
        )));
    }
    for (name, info) in &c.tensor_infos {
        use candle_core::quantized::GgmlDType as G;
        let ok = matches!(
            info.ggml_dtype,
            G::F32
                | G::F16
                | G::BF16
                | G::Q4_0
                | G::Q4_1
                | G::Q5_0
                | G::Q5_1
                | G::Q8_0
                | G::Q2K
                | G::Q3K
                | G::Q4K
                | G::Q5K
                | G::Q6K
                | G::Q8K
        );
        if !ok {
            return Err(unsupported(format!(
                "tensor {name} has quantization {:?}, which is not supported",
                info.ggml_dtype
            )));
        }
    }
    let u = |key: &str| -> Result<usize> {
        c.metadata
            .get(&format!("llama.{key}"))
            .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
            .map(|v| v as usize)
            .ok_or_else(|| unsupported(format!("metadata llama.{key} is missing")))
    };
    let f = |key: &str, default: f64| -> f64 {
        c.metadata
            .get(&format!("llama.{key}"))
            .and_then(|v| v.to_f32().ok())
            .map_or(default, f64::from)
    };
    let id = |key: &str| {
        c.metadata
            .get(&format!("tokenizer.ggml.{key}"))
            .and_then(|v| v.to_u32().ok())
    };
    let vocab_size = match u("vocab_size") {
        Ok(v) => v,
        Err(_) => c
            .metadata
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.len())
            .ok_or_else(|| unsupported("no vocabulary size in the metadata".into()))?,
    };
    let cfg = LlamaConfig {
        vocab_size,
        hidden_size: u("embedding_length")?,
        intermediate_size: u("feed_forward_length")?,
        num_hidden_layers: u("block_count")?,
        num_attention_heads: u("attention.head_count")?,
        num_key_value_heads: u("attention.head_count_kv").ok(),
        rms_norm_eps: f("attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta: f("rope.freq_base", 10_000.0),
        max_position_embeddings: u("context_length").unwrap_or(2048),
        tie_word_embeddings: !c.tensor_infos.contains_key("output.weight"),
        bos_token_id: id("bos_token_id"),
        eos_token_id: id("eos_token_id").map(serde_json::Value::from),
    };
    cfg.validate(path)?;
    Ok(cfg)
}

/// The safetensors files of a Hugging Face directory.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::BadConfig {
        path: index.clone(),
        msg: e.to_string(),
    })?;
    let mut files: Vec<String> = json["weight_map"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files.dedup();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}
