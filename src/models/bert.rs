//! A BERT-family encoder, as Hugging Face's `BertModel` (all-MiniLM-L6-v2 and the other
//! sentence-transformers BERTs): word + position + token-type embeddings and a LayerNorm, then
//! post-LayerNorm blocks of bidirectional self-attention and an erf-GELU MLP.
//!
//! Forward only, over packed sequences: the token rows of every sentence in a batch are stacked
//! with no padding, so each linear layer is one GEMM over real tokens, and attention runs per
//! sentence. That is what a padded batch with an attention mask computes (masked scores get a
//! weight of exactly 0), without the work on padding.

use std::path::Path;

use rayon::prelude::*;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::kernels::simd::{self, simd_fn};
use crate::kernels::{layernorm_forward, matmul, packed_attention, Norm, NormOut, Op, Skip};
use crate::nn::tensor_io::{load_tensors, LoadedTensors};

/// `config.json` of a Hugging Face BERT; the fields the forward uses.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub model_type: Option<String>,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

impl BertConfig {
    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |msg: String| Error::UnsupportedModel {
            path: path.to_path_buf(),
            msg,
        };
        if let Some(t) = self.model_type.as_deref() {
            // RoBERTa and XLM-R number positions from padding_idx + 1: not this forward.
            if t != "bert" {
                return Err(bad(format!(
                    "model_type {t:?} (only \"bert\" encoders are supported)"
                )));
            }
        }
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(Error::BadConfig {
                path: path.to_path_buf(),
                msg: format!("{name} is 0"),
            });
        }
        if self.hidden_act != "gelu" {
            return Err(bad(format!(
                "hidden_act {:?} (only \"gelu\", the erf GELU, is supported)",
                self.hidden_act
            )));
        }
        if let Some(p) = self.position_embedding_type.as_deref() {
            if p != "absolute" {
                return Err(bad(format!("position_embedding_type {p:?}")));
            }
        }
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(Error::HeadsDoNotDivide {
                n_embd: self.hidden_size,
                n_head: self.num_attention_heads,
            });
        }
        Ok(())
    }
}

/// One post-LayerNorm block. Linear weights keep PyTorch's (out, in) layout; the query, key and
/// value projections are stacked into one (3C, C) matrix so that they are one GEMM.
struct Layer {
    qkv_w: Vec<f32>,
    qkv_b: Vec<f32>,
    proj_w: Vec<f32>,
    proj_b: Vec<f32>,
    ln1_w: Vec<f32>,
    ln1_b: Vec<f32>,
    fc_w: Vec<f32>,
    fc_b: Vec<f32>,
    out_w: Vec<f32>,
    out_b: Vec<f32>,
    ln2_w: Vec<f32>,
    ln2_b: Vec<f32>,
}

pub struct Bert {
    pub config: BertConfig,
    word: Vec<f32>,
    pos: Vec<f32>,
    token_type: Vec<f32>,
    ln_w: Vec<f32>,
    ln_b: Vec<f32>,
    layers: Vec<Layer>,
}

/// Takes a tensor by its Hugging Face name (with or without the `bert.` prefix of the task
/// heads' checkpoints), checking its shape.
fn take(t: &mut LoadedTensors, path: &Path, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let (got, data) = t
        .tensors
        .remove(name)
        .or_else(|| t.tensors.remove(&format!("bert.{name}")))
        .ok_or_else(|| Error::CorruptCheckpoint {
            path: path.to_path_buf(),
            msg: format!("tensor {name} is missing"),
        })?;
    if got != shape {
        return Err(Error::CorruptCheckpoint {
            path: path.to_path_buf(),
            msg: format!("tensor {name} has shape {got:?}, the config gives {shape:?}"),
        });
    }
    Ok(data)
}

impl Bert {
    /// Loads `config.json` and `model.safetensors` from a Hugging Face folder.
    pub fn load(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let config: BertConfig = serde_json::from_str(&text).map_err(|e| Error::BadConfig {
            path: cfg_path.clone(),
            msg: e.to_string(),
        })?;
        config.validate(&cfg_path)?;
        let path = dir.join("model.safetensors");
        let mut t = load_tensors(&path)?;
        let (c, i) = (config.hidden_size, config.intermediate_size);
        let mut get = |name: &str, shape: &[usize]| take(&mut t, &path, name, shape);
        let word = get("embeddings.word_embeddings.weight", &[config.vocab_size, c])?;
        let pos = get(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, c],
        )?;
        let token_type = get(
            "embeddings.token_type_embeddings.weight",
            &[config.type_vocab_size, c],
        )?;
        let ln_w = get("embeddings.LayerNorm.weight", &[c])?;
        let ln_b = get("embeddings.LayerNorm.bias", &[c])?;
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let mut qkv_w = Vec::with_capacity(3 * c * c);
            let mut qkv_b = Vec::with_capacity(3 * c);
            for part in ["query", "key", "value"] {
                qkv_w.extend(get(&format!("{p}.attention.self.{part}.weight"), &[c, c])?);
                qkv_b.extend(get(&format!("{p}.attention.self.{part}.bias"), &[c])?);
            }
            layers.push(Layer {
                qkv_w,
                qkv_b,
                proj_w: get(&format!("{p}.attention.output.dense.weight"), &[c, c])?,
                proj_b: get(&format!("{p}.attention.output.dense.bias"), &[c])?,
                ln1_w: get(&format!("{p}.attention.output.LayerNorm.weight"), &[c])?,
                ln1_b: get(&format!("{p}.attention.output.LayerNorm.bias"), &[c])?,
                fc_w: get(&format!("{p}.intermediate.dense.weight"), &[i, c])?,
                fc_b: get(&format!("{p}.intermediate.dense.bias"), &[i])?,
                out_w: get(&format!("{p}.output.dense.weight"), &[c, i])?,
                out_b: get(&format!("{p}.output.dense.bias"), &[c])?,
                ln2_w: get(&format!("{p}.output.LayerNorm.weight"), &[c])?,
                ln2_b: get(&format!("{p}.output.LayerNorm.bias"), &[c])?,
            });
        }
        Ok(Bert {
            config,
            word,
            pos,
            token_type,
            ln_w,
            ln_b,
            layers,
        })
    }

    /// The last hidden state (N, C) of the packed sequences: `ids` holds every sequence's
    /// token ids back to back (N in all), `lens` their lengths. Token type 0 throughout (one
    /// segment per sequence). Each length must be at most `max_position_embeddings`.
    pub fn forward(&self, ids: &[u32], lens: &[usize]) -> Vec<f32> {
        let cfg = &self.config;
        let (n, c, i) = (ids.len(), cfg.hidden_size, cfg.intermediate_size);
        assert_eq!(
            lens.iter().sum::<usize>(),
            n,
            "lengths do not add up to the ids"
        );
        assert!(lens.iter().all(|&l| l <= cfg.max_position_embeddings));
        let eps = cfg.layer_norm_eps as f32;

        // Embeddings: x = LN(word[id] + pos[t] + type[0]).
        let mut x = vec![0f32; n * c];
        let mut emb = vec![0f32; n * c];
        let positions = lens.iter().flat_map(|&l| 0..l);
        for ((row, &id), t) in emb.chunks_exact_mut(c).zip(ids).zip(positions) {
            let id = id as usize;
            let (w, p) = (&self.word[id * c..][..c], &self.pos[t * c..][..c]);
            for (((o, &w), &p), &ty) in row.iter_mut().zip(w).zip(p).zip(&self.token_type[..c]) {
                *o = w + p + ty;
            }
        }
        let (mut mean, mut rstd) = (vec![0f32; n], vec![0f32; n]);
        let ln = |w, b| Norm { w, b: Some(b), eps };
        layernorm_forward(
            NormOut {
                out: &mut x,
                mean: &mut mean,
                rstd: &mut rstd,
            },
            &mut emb,
            None,
            ln(&self.ln_w, &self.ln_b),
        );

        let mut qkv = vec![0f32; n * 3 * c];
        let mut ctx = vec![0f32; n * c];
        let mut h = vec![0f32; n * i];
        let mut sum = emb; // (N, C) scratch: a residual sum before its LayerNorm
        let mut x2 = vec![0f32; n * c];
        for layer in &self.layers {
            // qkv (N, 3C) = x @ Wqkvᵀ + b: the bias is written first and the product added.
            fill_rows(&mut qkv, &layer.qkv_b);
            matmul(
                (n, 3 * c, c),
                &mut qkv,
                true,
                Op::N(&x),
                Op::T(&layer.qkv_w),
                1.0,
            );
            packed_attention(&qkv, &mut ctx, lens, cfg.num_attention_heads);
            // x = LN1(x + ctx @ Wprojᵀ + b)
            matmul(
                (n, c, c),
                &mut sum,
                false,
                Op::N(&ctx),
                Op::T(&layer.proj_w),
                1.0,
            );
            let ln1 = ln(&layer.ln1_w, &layer.ln1_b);
            add_norm(
                &mut x,
                &mut x2,
                &mut sum,
                &layer.proj_b,
                ln1,
                (&mut mean, &mut rstd),
            );
            // x = LN2(x + gelu(x @ Wfcᵀ + b) @ Woutᵀ + b)
            fill_rows(&mut h, &layer.fc_b);
            matmul((n, i, c), &mut h, true, Op::N(&x), Op::T(&layer.fc_w), 1.0);
            gelu_in_place(&mut h);
            matmul(
                (n, c, i),
                &mut sum,
                false,
                Op::N(&h),
                Op::T(&layer.out_w),
                1.0,
            );
            let ln2 = ln(&layer.ln2_w, &layer.ln2_b);
            add_norm(
                &mut x,
                &mut x2,
                &mut sum,
                &layer.out_b,
                ln2,
                (&mut mean, &mut rstd),
            );
        }
        x
    }
}

/// The post-LayerNorm residual step: x = LN(x + sum + bias), where `sum` holds a sublayer's
/// output without its bias. `x2` receives the result and is swapped with `x`; `sum` and the
/// statistics are scratch.
fn add_norm(
    x: &mut Vec<f32>,
    x2: &mut Vec<f32>,
    sum: &mut [f32],
    bias: &[f32],
    norm: Norm,
    (mean, rstd): (&mut [f32], &mut [f32]),
) {
    let out = NormOut {
        out: x2,
        mean,
        rstd,
    };
    let skip = Skip {
        x,
        bias: Some(bias),
    };
    layernorm_forward(out, sum, Some(skip), norm);
    std::mem::swap(x, x2);
}

/// Every row of `dst` (rows of `row.len()`) set to `row`.
fn fill_rows(dst: &mut [f32], row: &[f32]) {
    dst.par_chunks_mut(row.len() * 64).for_each(|rows| {
        for r in rows.chunks_exact_mut(row.len()) {
            r.copy_from_slice(row);
        }
    });
}

simd_fn! {
    fn gelu_chunk(h: &mut [f32]) {
        for v in h.iter_mut() {
            *v = simd::gelu_erf(*v);
        }
    }
}

fn gelu_in_place(h: &mut [f32]) {
    h.par_chunks_mut(16384).for_each(gelu_chunk);
}
