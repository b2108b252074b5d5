//! transformer-seq2seq: the encoder–decoder Transformer of "Attention Is All You Need" (Vaswani
//! et al., 2017), for translation and other sequence-to-sequence tasks.
//!
//! - Token embeddings scaled by √d_model plus sinusoidal or learned positions; one table shared
//!   by source, target and output layer (a joint vocabulary), or separate tables.
//! - Encoder layers: self-attention and a position-wise FFN (ReLU or GELU). Decoder layers:
//!   causal self-attention, cross-attention over the encoder output, FFN.
//! - Post-LayerNorm (the original) or pre-LayerNorm (a final norm closes each stack).
//! - Tensor names follow Hugging Face's Marian/BART layout (`model.encoder.layers.0.self_attn.
//!   q_proj.weight`, `encoder_attn`, `fc1`, `final_logits_bias`, ...).
//!
//! Decoding runs through the shared engine (`decode::Decoder`) on an [`EncodedSource`]: the
//! encoder output is computed once per source, each decoder layer's cross-attention keys and
//! values once from it, and self-attention keys and values grow by one position per step.

use candle_core::{DType, Device, IndexOp, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::seq2seq::{source_batch, MASKED};
use crate::models::{Cache, Decoder};
use crate::nn::fused;
use crate::nn::linear::{maybe_dropout, Dropout, Linear};
use crate::nn::params::{Init, Params};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Positions {
    Sinusoidal,
    Learned,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    /// Filled in from the tokenizer when training starts.
    #[serde(default)]
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub d_ff: usize,
    #[serde(default = "default_dropout")]
    pub dropout: f32,
    /// Longest source, and longest target with its start token, in tokens.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    #[serde(default = "default_positions")]
    pub positions: Positions,
    /// LayerNorm before each sublayer (true) or after the residual sum (false, the original).
    #[serde(default)]
    pub pre_norm: bool,
    #[serde(default = "yes")]
    pub share_embeddings: bool,
    /// Output layer = target embedding table (transposed).
    #[serde(default = "yes")]
    pub tie_output: bool,
    #[serde(default)]
    pub activation: FfnActivation,
    /// The decoder's start token, the end token, and the padding token (filled in from the
    /// tokenizer).
    #[serde(default)]
    pub bos_id: u32,
    #[serde(default)]
    pub eos_id: u32,
    #[serde(default)]
    pub pad_id: u32,
}

fn default_dropout() -> f32 {
    0.1
}
fn default_max_len() -> usize {
    128
}
fn default_positions() -> Positions {
    Positions::Sinusoidal
}
fn yes() -> bool {
    true
}

/// The feed-forward sublayer's activation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FfnActivation {
    /// max(0, x), the original Transformer's.
    #[default]
    Relu,
    /// The exact erf GELU.
    Gelu,
}

impl TransformerConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Invalid(msg));
        if self.n_heads == 0 || self.d_model == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            return bad(format!(
                "d_model ({}) must be a positive multiple of n_heads ({})",
                self.d_model, self.n_heads
            ));
        }
        if self.positions == Positions::Sinusoidal && !self.d_model.is_multiple_of(2) {
            return bad(format!(
                "sinusoidal positions need an even d_model, not {}",
                self.d_model
            ));
        }
        if self.encoder_layers == 0 || self.decoder_layers == 0 || self.d_ff == 0 {
            return bad(format!(
                "encoder_layers ({}), decoder_layers ({}) and d_ff ({}) must be at least 1",
                self.encoder_layers, self.decoder_layers, self.d_ff
            ));
        }
        if self.max_len < 2 {
            return bad(format!("max_len ({}) must be at least 2", self.max_len));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct LayerNorm {
    w: Tensor,
    b: Tensor,
}

impl LayerNorm {
    fn new(p: &mut Params, name: &str, d: usize) -> Result<Self> {
        Ok(LayerNorm {
            w: p.get(&format!("{name}.weight"), &[d], Init::Ones)?,
            b: p.get(&format!("{name}.bias"), &[d], Init::Zeros)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        fused::layer_norm(x, &self.w, &self.b, 1e-5)
    }
}

/// Multi-head scaled dot-product attention with its own projections.
#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
}

impl Attention {
    fn new(p: &mut Params, name: &str, d: usize, heads: usize) -> Result<Self> {
        Ok(Attention {
            q: Linear::new(p, &format!("{name}.q_proj"), d, d, true)?,
            k: Linear::new(p, &format!("{name}.k_proj"), d, d, true)?,
            v: Linear::new(p, &format!("{name}.v_proj"), d, d, true)?,
            o: Linear::new(p, &format!("{name}.out_proj"), d, d, true)?,
            heads,
        })
    }

    /// (B, T, D) -> (B, H, T, D/H).
    fn split(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        Ok(x.reshape((b, t, self.heads, d / self.heads))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Keys and values of `x` (B, S, D), split into heads.
    fn keys_values(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.split(&self.k.forward(x)?)?,
            self.split(&self.v.forward(x)?)?,
        ))
    }

    /// softmax(q kᵀ/√d_head + mask) v for queries from `x` (B, T, D) over k, v (B, H, S, d_head);
    /// `mask` is additive, (1 or B, 1, 1 or T, S). One fused op (forward and backward), without
    /// dropout on the attention weights.
    fn attend(&self, x: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let q = self.split(&self.q.forward(x)?)?;
        let y = fused::masked_attention(&q, k, v, mask)?;
        self.o.forward(&y.transpose(1, 2)?.reshape((b, t, d))?)
    }
}

#[derive(Debug, Clone)]
struct FeedForward {
    fc1: Linear,
    fc2: Linear,
    gelu: bool,
}

impl FeedForward {
    fn forward(&self, x: &Tensor, p: f32, rng: Dropout) -> Result<Tensor> {
        let h = self.fc1.forward(x)?;
        let h = if self.gelu { h.gelu_erf()? } else { h.relu()? };
        self.fc2.forward(&maybe_dropout(&h, p, rng)?)
    }
}

/// One encoder or decoder layer; decoder layers have cross-attention.
#[derive(Debug, Clone)]
struct Layer {
    self_attn: Attention,
    self_norm: LayerNorm,
    cross: Option<(Attention, LayerNorm)>,
    ffn: FeedForward,
    ffn_norm: LayerNorm,
}

impl Layer {
    fn new(p: &mut Params, name: &str, cfg: &TransformerConfig, decoder: bool) -> Result<Self> {
        let d = cfg.d_model;
        let cross = if decoder {
            Some((
                Attention::new(p, &format!("{name}.encoder_attn"), d, cfg.n_heads)?,
                LayerNorm::new(p, &format!("{name}.encoder_attn_layer_norm"), d)?,
            ))
        } else {
            None
        };
        Ok(Layer {
            self_attn: Attention::new(p, &format!("{name}.self_attn"), d, cfg.n_heads)?,
            self_norm: LayerNorm::new(p, &format!("{name}.self_attn_layer_norm"), d)?,
            cross,
            ffn: FeedForward {
                fc1: Linear::new(p, &format!("{name}.fc1"), d, cfg.d_ff, true)?,
                fc2: Linear::new(p, &format!("{name}.fc2"), cfg.d_ff, d, true)?,
                gelu: cfg.activation == FfnActivation::Gelu,
            },
            ffn_norm: LayerNorm::new(p, &format!("{name}.final_layer_norm"), d)?,
        })
    }
}

/// x + sublayer, with the LayerNorm before the sublayer (pre) or after the sum (post).
fn residual(
    x: &Tensor,
    norm: &LayerNorm,
    pre: bool,
    p: f32,
    rng: Dropout,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    if pre {
        let y = f(&norm.forward(x)?)?;
        Ok((x + maybe_dropout(&y, p, rng)?)?)
    } else {
        let y = f(x)?;
        norm.forward(&(x + maybe_dropout(&y, p, rng)?)?)
    }
}

/// The sinusoidal table (max_len, d): sin(pos·ω_i) in the first half of each row, cos in the
/// second, ω_i = 10000^(−2i/d) (Marian's layout of the original formula).
pub fn sinusoids(max_len: usize, d: usize) -> Vec<f32> {
    let half = d / 2;
    let mut out = vec![0f32; max_len * d];
    for pos in 0..max_len {
        for i in 0..half {
            let w = (pos as f64) / 10000f64.powf(2.0 * i as f64 / d as f64);
            out[pos * d + i] = w.sin() as f32;
            out[pos * d + half + i] = w.cos() as f32;
        }
    }
    out
}

#[derive(Debug, Clone)]
pub struct Transformer {
    pub cfg: TransformerConfig,
    src_embed: Tensor,
    tgt_embed: Tensor,
    /// (max_len, d) for source and target: the same sinusoid table, or learned ones.
    src_pos: Tensor,
    tgt_pos: Tensor,
    encoder: Vec<Layer>,
    decoder: Vec<Layer>,
    /// Final norms of pre-norm stacks.
    enc_norm: Option<LayerNorm>,
    dec_norm: Option<LayerNorm>,
    /// (V, d): the target table when tied.
    head: Tensor,
    head_bias: Tensor,
}

impl Transformer {
    /// Builds the model, drawing or loading its parameters from `p`.
    pub fn new(cfg: &TransformerConfig, p: &mut Params, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let (v, d) = (cfg.vocab_size, cfg.d_model);
        let emb_init = Init::Normal((d as f32).powf(-0.5));
        let (src_embed, tgt_embed) = if cfg.share_embeddings {
            let e = p.get("model.shared.weight", &[v, d], emb_init)?;
            (e.clone(), e)
        } else {
            (
                p.get("model.encoder.embed_tokens.weight", &[v, d], emb_init)?,
                p.get("model.decoder.embed_tokens.weight", &[v, d], emb_init)?,
            )
        };
        let (src_pos, tgt_pos) = match cfg.positions {
            Positions::Sinusoidal => {
                let t = Tensor::from_vec(sinusoids(cfg.max_len, d), (cfg.max_len, d), device)?;
                (t.clone(), t)
            }
            Positions::Learned => {
                let init = Init::Normal(0.02);
                (
                    p.get(
                        "model.encoder.embed_positions.weight",
                        &[cfg.max_len, d],
                        init,
                    )?,
                    p.get(
                        "model.decoder.embed_positions.weight",
                        &[cfg.max_len, d],
                        init,
                    )?,
                )
            }
        };
        let encoder = (0..cfg.encoder_layers)
            .map(|i| Layer::new(p, &format!("model.encoder.layers.{i}"), cfg, false))
            .collect::<Result<Vec<_>>>()?;
        let decoder = (0..cfg.decoder_layers)
            .map(|i| Layer::new(p, &format!("model.decoder.layers.{i}"), cfg, true))
            .collect::<Result<Vec<_>>>()?;
        let (enc_norm, dec_norm) = if cfg.pre_norm {
            (
                Some(LayerNorm::new(p, "model.encoder.layer_norm", d)?),
                Some(LayerNorm::new(p, "model.decoder.layer_norm", d)?),
            )
        } else {
            (None, None)
        };
        let head = if cfg.tie_output {
            tgt_embed.clone()
        } else {
            p.get("lm_head.weight", &[v, d], Init::Xavier)?
        };
        let head_bias = p.get("final_logits_bias", &[1, v], Init::Zeros)?;
        Ok(Transformer {
            cfg: cfg.clone(),
            src_embed,
            tgt_embed,
            src_pos,
            tgt_pos,
            encoder,
            decoder,
            enc_norm,
            dec_norm,
            head,
            head_bias,
        })
    }

    /// Token embeddings × √d plus positions start..start + T, for ids (B, T).
    fn embed(&self, table: &Tensor, pos: &Tensor, ids: &Tensor, start: usize) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if start + t > self.cfg.max_len {
            return Err(Error::Invalid(format!(
                "{} positions exceed the model's max_len of {}",
                start + t,
                self.cfg.max_len
            )));
        }
        let d = self.cfg.d_model;
        let x = table
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, d))?;
        let x = (x * (d as f64).sqrt())?;
        Ok(x.broadcast_add(&pos.narrow(0, start, t)?.unsqueeze(0)?)?)
    }

    /// The encoder output (B, S, D) for source ids (B, S) with additive key mask (B, 1, 1, S).
    pub fn encode(&self, src: &Tensor, mask: &Tensor, rng: Dropout) -> Result<Tensor> {
        let p = self.cfg.dropout;
        let mut x = maybe_dropout(&self.embed(&self.src_embed, &self.src_pos, src, 0)?, p, rng)?;
        for layer in &self.encoder {
            let sa = &layer.self_attn;
            x = residual(&x, &layer.self_norm, self.cfg.pre_norm, p, rng, |h| {
                let (k, v) = sa.keys_values(h)?;
                sa.attend(h, &k, &v, mask)
            })?;
            x = residual(&x, &layer.ffn_norm, self.cfg.pre_norm, p, rng, |h| {
                layer.ffn.forward(h, p, rng)
            })?;
        }
        match &self.enc_norm {
            Some(n) => n.forward(&x),
            None => Ok(x),
        }
    }

    /// Output logits (B, T, V) of the final decoder states (B, T, D).
    fn logits(&self, h: &Tensor) -> Result<Tensor> {
        let h = match &self.dec_norm {
            Some(n) => n.forward(h)?,
            None => h.clone(),
        };
        let (b, t, d) = h.dims3()?;
        let y = h.reshape((b * t, d))?.matmul(&self.head.t()?)?;
        Ok(y.broadcast_add(&self.head_bias)?.reshape((b, t, ()))?)
    }

    /// Teacher-forced logits (B, T, V) for target inputs (B, T) (start token + target, shifted)
    /// given source ids (B, S) and their additive key mask (B, 1, 1, S).
    pub fn forward(
        &self,
        src: &Tensor,
        src_mask: &Tensor,
        tgt_in: &Tensor,
        rng: Dropout,
    ) -> Result<Tensor> {
        let memory = self.encode(src, src_mask, rng)?;
        let (x, _) = self.decode_all(&memory, src_mask, tgt_in, rng, false)?;
        self.logits(&x)
    }

    /// The decoder stack over all target inputs (B, T) at once: its final states (B, T, D)
    /// and, with `weights`, the last layer's cross-attention weights averaged over heads
    /// (B, T, S), computed beside the fused op that uses them.
    fn decode_all(
        &self,
        memory: &Tensor,
        src_mask: &Tensor,
        tgt_in: &Tensor,
        rng: Dropout,
        weights: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (p, pre) = (self.cfg.dropout, self.cfg.pre_norm);
        let causal = causal_mask(tgt_in.dim(1)?, 0, memory.device())?;
        let mut x = maybe_dropout(
            &self.embed(&self.tgt_embed, &self.tgt_pos, tgt_in, 0)?,
            p,
            rng,
        )?;
        let mut captured = None;
        let last = self.decoder.len() - 1;
        for (l, layer) in self.decoder.iter().enumerate() {
            let sa = &layer.self_attn;
            x = residual(&x, &layer.self_norm, pre, p, rng, |h| {
                let (k, v) = sa.keys_values(h)?;
                sa.attend(h, &k, &v, &causal)
            })?;
            let (ca, cn) = layer
                .cross
                .as_ref()
                .expect("decoder layers attend to the source");
            x = residual(&x, cn, pre, p, rng, |h| {
                let (k, v) = ca.keys_values(memory)?;
                if weights && l == last {
                    // softmax(q kᵀ/√d + mask), averaged over heads.
                    let q = ca.split(&ca.q.forward(h)?)?;
                    let d = (self.cfg.d_model / self.cfg.n_heads) as f64;
                    let att = (q.matmul(&k.t()?.contiguous()?)? / d.sqrt())?;
                    let att = candle_nn::ops::softmax(&att.broadcast_add(src_mask)?, D::Minus1)?;
                    captured = Some(att.mean(1)?);
                }
                ca.attend(h, &k, &v, src_mask)
            })?;
            x = residual(&x, &layer.ffn_norm, pre, p, rng, |h| {
                layer.ffn.forward(h, p, rng)
            })?;
        }
        Ok((x, captured))
    }

    /// Cross-attention weights of the last decoder layer, averaged over heads, while decoding
    /// `tgt` (the generated tokens, without the start token) after `src`: one row of source
    /// weights per target token.
    pub fn attention_map(&self, src: &[u32], tgt: &[u32]) -> Result<Vec<Vec<f32>>> {
        let device = self.src_embed.device();
        let (ids, mask) = source_batch(&[src.to_vec()], self.cfg.pad_id, device)?;
        let memory = self.encode(&ids, &mask, None)?;
        let mut input = vec![self.cfg.bos_id];
        input.extend_from_slice(&tgt[..tgt.len().saturating_sub(1)]);
        let t = input.len();
        let tgt_in = Tensor::from_vec(input, (1, t), device)?;
        let (_, weights) = self.decode_all(&memory, &mask, &tgt_in, None, true)?;
        match weights {
            Some(w) => Ok(w.squeeze(0)?.to_vec2::<f32>()?),
            None => Ok(Vec::new()),
        }
    }

    /// `forward` from source id rows (right-padded and masked here).
    pub fn forward_rows(&self, rows: &[Vec<u32>], tgt_in: &Tensor, rng: Dropout) -> Result<Tensor> {
        let (src, mask) = source_batch(rows, self.cfg.pad_id, self.src_embed.device())?;
        self.forward(&src, &mask, tgt_in, rng)
    }

    /// Encodes source id rows (each at most max_len, non-empty) for decoding.
    pub fn encode_sources(&self, rows: &[Vec<u32>]) -> Result<EncodedSource<'_>> {
        let device = self.src_embed.device();
        let (ids, mask) = source_batch(rows, self.cfg.pad_id, device)?;
        let memory = self.encode(&ids, &mask, None)?;
        Ok(EncodedSource {
            model: self,
            memory,
            mask,
        })
    }
}

/// Additive causal mask (1, 1, T, start + T) for T queries at positions start.. over keys
/// 0..start + T.
pub fn causal_mask(t: usize, start: usize, device: &Device) -> Result<Tensor> {
    Ok(crate::nn::causal_mask(t, start + t, MASKED, device)?.reshape((1, 1, t, start + t))?)
}

/// Encoder outputs of a batch of sources: the model the decoding engine drives.
pub struct EncodedSource<'m> {
    model: &'m Transformer,
    /// (rows, S, D) and (rows, 1, 1, S).
    memory: Tensor,
    mask: Tensor,
}

/// Decoding state: per decoder layer, self-attention keys/values so far and the cross-attention
/// keys/values of the source, all (rows, H, ·, d_head).
#[derive(Debug, Clone)]
pub struct Seq2SeqCache {
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    cross_kv: Vec<(Tensor, Tensor)>,
    mask: Tensor,
    pos: usize,
}

impl Decoder for EncodedSource<'_> {
    fn vocab_size(&self) -> usize {
        self.model.cfg.vocab_size
    }

    fn context_len(&self) -> usize {
        self.model.cfg.max_len
    }

    fn new_cache(&self, batch: usize) -> Result<Cache> {
        let rows = self.memory.dim(0)?;
        if batch != rows {
            return Err(Error::Invalid(format!(
                "a cache of {batch} rows for {rows} encoded sources"
            )));
        }
        let cross_kv = self
            .model
            .decoder
            .iter()
            .map(|l| {
                let (ca, _) = l
                    .cross
                    .as_ref()
                    .expect("decoder layers attend to the source");
                ca.keys_values(&self.memory)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Cache::new(Seq2SeqCache {
            self_kv: vec![None; self.model.decoder.len()],
            cross_kv,
            mask: self.mask.clone(),
            pos: 0,
        }))
    }

    fn step(&self, tokens: &[u32], batch: usize, cache: &mut Cache) -> Result<Vec<f32>> {
        let cache = cache.get::<Seq2SeqCache>()?;
        let m = self.model;
        let t = tokens.len() / batch.max(1);
        if t == 0 || t * batch != tokens.len() {
            return Err(Error::Invalid(format!(
                "step: {} tokens do not form {batch} rows",
                tokens.len()
            )));
        }
        let device = self.memory.device();
        let ids = Tensor::from_slice(tokens, (batch, t), device)?;
        let start = cache.pos;
        let mut x = m.embed(&m.tgt_embed, &m.tgt_pos, &ids, start)?;
        let causal = causal_mask(t, start, device)?;
        let pre = m.cfg.pre_norm;
        for (l, layer) in m.decoder.iter().enumerate() {
            let sa = &layer.self_attn;
            let slot = &mut cache.self_kv[l];
            x = residual(&x, &layer.self_norm, pre, 0.0, None, |h| {
                let (k, v) = sa.keys_values(h)?;
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                let y = sa.attend(h, &k, &v, &causal)?;
                *slot = Some((k, v));
                Ok(y)
            })?;
            let (ca, cn) = layer
                .cross
                .as_ref()
                .expect("decoder layers attend to the source");
            let (ck, cv) = &cache.cross_kv[l];
            let mask = &cache.mask;
            x = residual(&x, cn, pre, 0.0, None, |h| ca.attend(h, ck, cv, mask))?;
            x = residual(&x, &layer.ffn_norm, pre, 0.0, None, |h| {
                layer.ffn.forward(h, 0.0, None)
            })?;
        }
        cache.pos += t;
        let last = x.i((.., t - 1..t, ..))?;
        let logits = m.logits(&last)?.reshape((batch, ()))?;
        Ok(logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
    }

    fn select_rows(&self, cache: &mut Cache, rows: &[usize]) -> Result<()> {
        let cache = cache.get::<Seq2SeqCache>()?;
        let idx = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            self.memory.device(),
        )?;
        let pick = |t: &Tensor| t.index_select(&idx, 0);
        for kv in cache.self_kv.iter_mut().flatten() {
            *kv = (pick(&kv.0)?, pick(&kv.1)?);
        }
        for kv in cache.cross_kv.iter_mut() {
            *kv = (pick(&kv.0)?, pick(&kv.1)?);
        }
        cache.mask = pick(&cache.mask)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::max_abs_diff;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn tiny() -> TransformerConfig {
        TransformerConfig {
            vocab_size: 11,
            d_model: 8,
            n_heads: 2,
            encoder_layers: 2,
            decoder_layers: 2,
            d_ff: 16,
            dropout: 0.0,
            max_len: 16,
            positions: Positions::Sinusoidal,
            pre_norm: false,
            share_embeddings: true,
            tie_output: true,
            activation: FfnActivation::Relu,
            bos_id: 0,
            eos_id: 0,
            pad_id: 0,
        }
    }

    fn model(cfg: &TransformerConfig) -> Transformer {
        let mut p = Params::init(ChaCha8Rng::seed_from_u64(1), &Device::Cpu);
        Transformer::new(cfg, &mut p, &Device::Cpu).unwrap()
    }

    /// Step-by-step decoding with the caches gives the teacher-forced logits of every
    /// position, and padding a source does not change its result.
    #[test]
    fn incremental_decoding_matches_teacher_forcing() {
        for (pre, pos) in [(false, Positions::Sinusoidal), (true, Positions::Learned)] {
            let mut cfg = tiny();
            cfg.pre_norm = pre;
            cfg.positions = pos;
            let m = model(&cfg);
            let src = vec![vec![3, 4, 5, 6], vec![7, 8]];
            let tgt = [0u32, 5, 2, 9];
            let enc = m.encode_sources(&src).unwrap();
            let mut cache = enc.new_cache(2).unwrap();
            let mut steps = Vec::new();
            for &tok in &tgt {
                steps.push(enc.step(&[tok, tok], 2, &mut cache).unwrap());
            }
            let (ids, mask) = source_batch(&src, 0, &Device::Cpu).unwrap();
            let tgt_in = Tensor::from_vec([tgt, tgt].concat(), (2, 4), &Device::Cpu).unwrap();
            let full = m.forward(&ids, &mask, &tgt_in, None).unwrap();
            for (i, s) in steps.iter().enumerate() {
                let want: Vec<f32> = full
                    .i((.., i, ..))
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let diff = max_abs_diff(s, &want);
                assert!(diff < 1e-4, "pre_norm {pre}, position {i}: {diff}");
            }
            // The short source alone gives row 1's logits.
            let alone = m.encode_sources(&src[1..]).unwrap();
            let mut c1 = alone.new_cache(1).unwrap();
            let got = alone.step(&[0], 1, &mut c1).unwrap();
            let diff = max_abs_diff(&got, &steps[0][11..]);
            assert!(diff < 1e-4, "padding changed the result: {diff}");
        }
    }
}
