//! Sequence-to-sequence models: the configuration of either architecture (named by `arch`),
//! the model itself, and loading a trained model directory (`model.safetensors`, `config.json`,
//! `tokenizer.json`).

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::models::rnn_seq2seq::{RnnConfig, RnnSeq2Seq};
use crate::models::transformer_seq2seq::{Transformer, TransformerConfig};
use crate::nn::linear::Dropout;
use crate::nn::params::Params;
use crate::tokenizer::Tokenizer;

/// Additive mask value for positions that must not be attended to.
pub const MASKED: f32 = -1e9;

/// A sequence-to-sequence architecture and its settings, named by `arch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch")]
pub enum ModelConfig {
    #[serde(rename = "transformer-seq2seq")]
    Transformer(TransformerConfig),
    #[serde(rename = "rnn-seq2seq")]
    Rnn(RnnConfig),
}

impl ModelConfig {
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Transformer(c) => c.validate(),
            ModelConfig::Rnn(c) => c.validate(),
        }
    }

    pub fn max_len(&self) -> usize {
        match self {
            ModelConfig::Transformer(c) => c.max_len,
            ModelConfig::Rnn(c) => c.max_len,
        }
    }

    /// Sets the vocabulary size and the start, end and padding ids from the tokenizer.
    pub fn set_vocab(&mut self, vocab: usize, special: u32) {
        match self {
            ModelConfig::Transformer(c) => {
                c.vocab_size = vocab;
                (c.bos_id, c.eos_id, c.pad_id) = (special, special, special);
            }
            ModelConfig::Rnn(c) => {
                c.vocab_size = vocab;
                (c.bos_id, c.eos_id, c.pad_id) = (special, special, special);
            }
        }
    }

    /// (start, end, padding) ids.
    pub fn ids(&self) -> (u32, u32, u32) {
        match self {
            ModelConfig::Transformer(c) => (c.bos_id, c.eos_id, c.pad_id),
            ModelConfig::Rnn(c) => (c.bos_id, c.eos_id, c.pad_id),
        }
    }
}

/// A trained sequence-to-sequence model of either architecture.
pub enum Seq2Seq {
    Transformer(Transformer),
    Rnn(RnnSeq2Seq),
}

impl Seq2Seq {
    pub fn new(cfg: &ModelConfig, p: &mut Params, device: &Device) -> Result<Self> {
        let vocab = match cfg {
            ModelConfig::Transformer(c) => c.vocab_size,
            ModelConfig::Rnn(c) => c.vocab_size,
        };
        if vocab == 0 {
            return Err(Error::Invalid("the model's vocab_size is 0".into()));
        }
        Ok(match cfg {
            ModelConfig::Transformer(c) => Seq2Seq::Transformer(Transformer::new(c, p, device)?),
            ModelConfig::Rnn(c) => Seq2Seq::Rnn(RnnSeq2Seq::new(c, p)?),
        })
    }

    pub fn config(&self) -> ModelConfig {
        match self {
            Seq2Seq::Transformer(m) => ModelConfig::Transformer(m.cfg.clone()),
            Seq2Seq::Rnn(m) => ModelConfig::Rnn(m.cfg.clone()),
        }
    }

    /// Attention weights (target tokens × source tokens) of decoding `tgt` after `src`: the
    /// last decoder layer's cross-attention averaged over heads (Transformer), or the
    /// attention of each step (RNN).
    pub fn attention_map(&self, src: &[u32], tgt: &[u32]) -> Result<Vec<Vec<f32>>> {
        match self {
            Seq2Seq::Transformer(m) => m.attention_map(src, tgt),
            Seq2Seq::Rnn(m) => m.attention_map(src, tgt),
        }
    }

    /// Training logits (B, T, V) for source id rows and decoder inputs (B, T).
    pub fn forward(&self, src: &[Vec<u32>], tgt_in: &Tensor, rng: Dropout) -> Result<Tensor> {
        match self {
            Seq2Seq::Transformer(m) => m.forward_rows(src, tgt_in, rng),
            Seq2Seq::Rnn(m) => m.forward(src, tgt_in, rng),
        }
    }
}

/// Loads a model directory written by training: (model, tokenizer).
pub fn load_seq2seq(dir: &Path, device: &Device) -> Result<(Seq2Seq, Tokenizer)> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let cfg: ModelConfig = serde_json::from_str(&text).map_err(|e| Error::UnsupportedModel {
        path: cfg_path.clone(),
        msg: format!(
            "not a sequence-to-sequence model config ({e}); a language model cannot translate"
        ),
    })?;
    let weights = dir.join("model.safetensors");
    let tensors =
        candle_core::safetensors::load(&weights, device).map_err(|e| Error::CorruptCheckpoint {
            path: weights.clone(),
            msg: e.to_string(),
        })?;
    let mut p = Params::load(tensors, device, false);
    let model = Seq2Seq::new(&cfg, &mut p, device).map_err(|e| Error::CorruptCheckpoint {
        path: weights.clone(),
        msg: e.to_string(),
    })?;
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    Ok((model, tok))
}

/// Source ids (B, S) right-padded with `pad`, and the additive key mask (B, 1, 1, S) that hides
/// the padding.
pub fn source_batch(rows: &[Vec<u32>], pad: u32, device: &Device) -> Result<(Tensor, Tensor)> {
    let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
    let (ids, s, lens) = crate::data::parallel::pad_rows(&refs, pad);
    if s == 0 {
        return Err(Error::Invalid("cannot encode an empty source".into()));
    }
    let mask: Vec<f32> = lens
        .iter()
        .flat_map(|&l| (0..s).map(move |j| if j < l { 0.0 } else { MASKED }))
        .collect();
    Ok((
        Tensor::from_vec(ids, (rows.len(), s), device)?,
        Tensor::from_vec(mask, (rows.len(), 1, 1, s), device)?,
    ))
}
