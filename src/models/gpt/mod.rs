//! GPT-2: a decoder-only transformer, matching Hugging Face's `GPT2LMHeadModel` (and nanoGPT's
//! `model.py`) tensor for tensor. Read top to bottom: attention, MLP, block, model.
//!
//! `fast` is the same function as hand-written forward and backward kernels over flat buffers, the
//! CPU training path.
//!
//! Shapes: B batch, T time, C = n_embd, nh heads, hs = C / nh head size, V vocabulary.

use std::collections::HashMap;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

pub mod checkpoint;
pub mod config;
pub mod fast;

pub use config::{Activation, GptConfig};

use crate::models::Cache;
use crate::nn::{attention, causal_mask, dropout, gelu, Conv1D, KvCache, LayerNorm};

/// Training-time randomness: `Some` enables dropout with this RNG; `None` is evaluation.
pub type Train<'a> = Option<&'a mut ChaCha8Rng>;

/// Causal multi-head self-attention: one fused qkv projection, then the output projection.
#[derive(Debug, Clone)]
struct CausalSelfAttention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    n_head: usize,
    dropout: f32,
}

impl CausalSelfAttention {
    fn new(vb: VarBuilder, cfg: &GptConfig) -> Result<Self> {
        let c = cfg.n_embd;
        Ok(Self {
            c_attn: Conv1D::new(vb.pp("c_attn"), c, 3 * c, cfg.bias)?,
            c_proj: Conv1D::new(vb.pp("c_proj"), c, c, cfg.bias)?,
            n_head: cfg.n_head,
            dropout: cfg.dropout,
        })
    }

    /// `mask`: the causal mask (T, T_past + T), or `None` for a single query.
    fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        mut train: Train,
    ) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let hs = c / self.n_head;
        // (B, T, 3C) -> three (B, T, C) -> (B, T, nh, hs) -> (B, nh, T, hs)
        let qkv = self.c_attn.forward(x)?;
        let split = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i * c, c)?
                .reshape((b, t, self.n_head, hs))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, mut k, mut v) = (split(0)?, split(1)?, split(2)?);
        if let Some(cache) = cache {
            if let Some((pk, pv)) = cache.as_ref() {
                // (B, nh, T_past, hs) ++ (B, nh, T, hs) along time
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *cache = Some((k.clone(), v.clone()));
        }
        let drop = match train.as_deref_mut() {
            Some(rng) if self.dropout > 0.0 => Some((self.dropout, rng)),
            _ => None,
        };
        let y = attention(&q, &k, &v, mask, drop)?;
        // (B, nh, T, hs) -> (B, T, nh, hs) -> (B, T, C)
        let y = y.transpose(1, 2)?.reshape((b, t, c))?;
        let y = self.c_proj.forward(&y)?;
        maybe_dropout(&y, self.dropout, train)
    }
}

fn maybe_dropout(x: &Tensor, p: f32, train: Train) -> Result<Tensor> {
    match train {
        Some(rng) if p > 0.0 => dropout(x, p, rng),
        _ => Ok(x.clone()),
    }
}

/// The position-wise feed-forward network: C -> 4C -> GELU -> C.
#[derive(Debug, Clone)]
struct Mlp {
    c_fc: Conv1D,
    c_proj: Conv1D,
    activation: Activation,
    dropout: f32,
}

impl Mlp {
    fn new(vb: VarBuilder, cfg: &GptConfig) -> Result<Self> {
        let c = cfg.n_embd;
        Ok(Self {
            c_fc: Conv1D::new(vb.pp("c_fc"), c, 4 * c, cfg.bias)?,
            c_proj: Conv1D::new(vb.pp("c_proj"), 4 * c, c, cfg.bias)?,
            activation: cfg.activation,
            dropout: cfg.dropout,
        })
    }

    fn forward(&self, x: &Tensor, train: Train) -> Result<Tensor> {
        let h = gelu(&self.c_fc.forward(x)?, self.activation == Activation::Gelu)?;
        maybe_dropout(&self.c_proj.forward(&h)?, self.dropout, train)
    }
}

/// A pre-LayerNorm transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x)).
#[derive(Debug, Clone)]
struct Block {
    ln_1: LayerNorm,
    attn: CausalSelfAttention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(vb: VarBuilder, cfg: &GptConfig) -> Result<Self> {
        let (c, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
        Ok(Self {
            ln_1: LayerNorm::new(vb.pp("ln_1"), c, cfg.bias, eps)?,
            attn: CausalSelfAttention::new(vb.pp("attn"), cfg)?,
            ln_2: LayerNorm::new(vb.pp("ln_2"), c, cfg.bias, eps)?,
            mlp: Mlp::new(vb.pp("mlp"), cfg)?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<(Tensor, Tensor)>>,
        mut train: Train,
    ) -> Result<Tensor> {
        let a = self
            .attn
            .forward(&self.ln_1.forward(x)?, mask, cache, train.as_deref_mut())?;
        let x = (x + a)?;
        let m = self.mlp.forward(&self.ln_2.forward(&x)?, train)?;
        x + m
    }
}

/// The GPT-2 language model. The LM head is tied to the token embedding `wte`.
#[derive(Debug, Clone)]
pub struct Gpt {
    pub cfg: GptConfig,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
}

impl Gpt {
    /// Builds the model from tensors named as in `GPT2LMHeadModel` (`transformer.wte.weight`, ...).
    pub fn new(vb: VarBuilder, cfg: &GptConfig) -> Result<Self> {
        let vb = vb.pp("transformer");
        let (c, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
        let blocks = (0..cfg.n_layer)
            .map(|l| Block::new(vb.pp("h").pp(l), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            wte: vb.get((cfg.vocab_size, c), "wte.weight")?,
            wpe: vb.get((cfg.block_size, c), "wpe.weight")?,
            blocks,
            ln_f: LayerNorm::new(vb.pp("ln_f"), c, cfg.bias, eps)?,
        })
    }

    /// Builds the model from a name -> tensor map (for example a loaded safetensors file), keeping
    /// the tensors' dtype (f32, or f64 for gradient checks).
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        cfg: &GptConfig,
        device: &Device,
    ) -> Result<Self> {
        let dtype = tensors
            .values()
            .next()
            .map(|t| t.dtype())
            .unwrap_or(DType::F32);
        Self::new(VarBuilder::from_tensors(tensors, dtype, device), cfg)
    }

    /// idx (B, T) u32 token ids -> logits (B, T, V). With a cache, `idx` holds only the new
    /// tokens and positions continue from the cached length; the cache is extended.
    pub fn forward(
        &self,
        idx: &Tensor,
        cache: Option<&mut KvCache>,
        train: Train,
    ) -> Result<Tensor> {
        let x = self.hidden(idx, cache, train)?;
        let (b, t, c) = x.dims3()?;
        // tied head: (B*T, C) @ (C, V) -> (B, T, V)
        let logits = x.reshape((b * t, c))?.matmul(&self.wte.t()?)?;
        logits.reshape((b, t, self.cfg.vocab_size))
    }

    /// idx (B, T) -> the last hidden state (B, T, C), after the final LayerNorm: what the LM
    /// head reads (and what mean-pooled decoder embeddings average).
    pub fn hidden(
        &self,
        idx: &Tensor,
        cache: Option<&mut KvCache>,
        mut train: Train,
    ) -> Result<Tensor> {
        let (b, t) = idx.dims2()?;
        let past = cache.as_ref().map(|c| c.len()).unwrap_or(0);
        if past + t > self.cfg.block_size {
            candle_core::bail!(
                "sequence of {} tokens exceeds the context length block_size = {}",
                past + t,
                self.cfg.block_size
            );
        }
        // token + position embeddings: (B, T, C) + (T, C)
        let tok = self
            .wte
            .embedding(&idx.flatten_all()?)?
            .reshape((b, t, self.cfg.n_embd))?;
        let pos = self.wpe.narrow(0, past, t)?;
        let mut x = maybe_dropout(
            &tok.broadcast_add(&pos)?,
            self.cfg.dropout,
            train.as_deref_mut(),
        )?;
        // One causal mask for every layer; a single query attends to all keys.
        let mask = (t > 1)
            .then(|| causal_mask(t, past + t, f32::NEG_INFINITY, idx.device()))
            .transpose()?;
        let mask = mask.as_ref();
        match cache {
            Some(cache) => {
                for (block, layer_cache) in self.blocks.iter().zip(cache.layers.iter_mut()) {
                    x = block.forward(&x, mask, Some(layer_cache), train.as_deref_mut())?;
                }
            }
            None => {
                for block in &self.blocks {
                    x = block.forward(&x, mask, None, train.as_deref_mut())?;
                }
            }
        }
        self.ln_f.forward(&x)
    }

    /// Mean cross-entropy of next-token prediction: idx and targets (B, T) u32.
    pub fn loss(&self, idx: &Tensor, targets: &Tensor, train: Train) -> Result<Tensor> {
        let logits = self.forward(idx, None, train)?;
        let (b, t, v) = logits.dims3()?;
        crate::nn::cross_entropy(&logits.reshape((b * t, v))?, &targets.flatten_all()?)
    }
}

/// GPT-2's initialisation (as nanoGPT): weights N(0, 0.02), residual projections (`c_proj`)
/// N(0, 0.02 / sqrt(2 n_layer)), biases 0, LayerNorm weights 1. Returns one flat vector in the
/// order of `GptConfig::param_shapes()`, drawn from a ChaCha RNG seeded with `seed`.
pub fn init_params(cfg: &GptConfig, seed: u64) -> Vec<f32> {
    use rand::SeedableRng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(cfg.num_params());
    let resid_std = 0.02 / (2.0 * cfg.n_layer as f32).sqrt();
    for (name, shape) in cfg.param_shapes() {
        let n: usize = shape.iter().product();
        if name.ends_with(".bias") {
            out.extend(std::iter::repeat_n(0.0, n));
        } else if name.contains("ln_") {
            out.extend(std::iter::repeat_n(1.0, n));
        } else {
            let std = if name.ends_with("c_proj.weight") {
                resid_std
            } else {
                0.02
            };
            out.extend((0..n).map(|_| std * standard_normal(&mut rng)));
        }
    }
    out
}

/// A standard normal sample (Box-Muller), so initialisation depends only on the seed.
fn standard_normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Splits a flat parameter vector (in `param_shapes()` order) into named tensors.
pub fn flat_to_tensors(
    cfg: &GptConfig,
    flat: &[f32],
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    let mut map = HashMap::new();
    let mut off = 0;
    for (name, shape) in cfg.param_shapes() {
        let n: usize = shape.iter().product();
        map.insert(
            name,
            Tensor::from_slice(&flat[off..off + n], shape, device)?,
        );
        off += n;
    }
    Ok(map)
}

impl crate::models::Decoder for Gpt {
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn context_len(&self) -> usize {
        self.cfg.block_size
    }

    fn new_cache(&self, _batch: usize) -> crate::error::Result<Cache> {
        Ok(Cache::new(KvCache::new(self.cfg.n_layer)))
    }

    fn step(
        &self,
        tokens: &[u32],
        batch: usize,
        cache: &mut Cache,
    ) -> crate::error::Result<Vec<f32>> {
        let cache = cache.get::<KvCache>()?;
        let len = tokens.len() / batch.max(1);
        let device = self.wte.device();
        let ids = Tensor::from_slice(tokens, (batch, len), device)?;
        let logits = self.forward(&ids, Some(cache), None)?;
        let last = logits.narrow(1, len - 1, 1)?.squeeze(1)?;
        Ok(last.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// The whole-window forward: the mean loss of `Gpt::loss` times the positions.
    fn sum_nll(&self, inputs: &[u32], targets: &[u32], batch: usize) -> crate::error::Result<f64> {
        let n = inputs.len() / batch.max(1);
        let device = self.wte.device();
        let x = Tensor::from_slice(inputs, (batch, n), device)?;
        let y = Tensor::from_slice(targets, (batch, n), device)?;
        let loss = self.loss(&x, &y, None)?.to_scalar::<f32>()? as f64;
        Ok(loss * (batch * n) as f64)
    }

    fn select_rows(&self, cache: &mut Cache, rows: &[usize]) -> crate::error::Result<()> {
        let cache = cache.get::<KvCache>()?;
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let idx = Tensor::from_vec(idx, rows.len(), self.wte.device())?;
        for (k, v) in cache.layers.iter_mut().flatten() {
            *k = k.index_select(&idx, 0)?;
            *v = v.index_select(&idx, 0)?;
        }
        Ok(())
    }
}
