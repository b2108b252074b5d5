//! Text embeddings behind one trait: sentence-transformers encoders (a BERT, mean pooling with
//! the attention mask, L2 normalisation, as `SentenceTransformer.encode` computes them) and
//! decodex's decoders (GPT checkpoints, Llama-family GGUF or Hugging Face folders: the last
//! hidden state mean-pooled over the text's tokens, L2-normalised).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::models::bert::Bert;
use crate::models::pretrained::{self, Network};

/// What identifies the model that made a set of vectors: an index records it, and queries or
/// appends with another model are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The folder's or file's name, for people.
    pub name: String,
    /// Where the model was loaded from (absolute): the default model of an index's queries.
    pub path: PathBuf,
    /// `bert`, `gpt` or `llama`.
    pub kind: String,
    pub dim: usize,
    /// sha256 over the config and the weights' size, first and last MiB: cheap for large files
    /// and different for any two real checkpoints.
    pub fingerprint: String,
}

/// A text embedding model: `embed` gives one row of `dim` floats per text.
pub trait Embedder: Send + Sync {
    fn info(&self) -> &ModelInfo;
    /// (texts.len(), dim) row-major.
    fn embed(&self, texts: &[&str]) -> Result<Vec<f32>>;
    fn dim(&self) -> usize {
        self.info().dim
    }
}

/// Loads the embedder at `path`: a sentence-transformers / Hugging Face BERT folder, a decodex
/// GPT checkpoint folder, a Hugging Face Llama folder or a GGUF file.
pub fn load_embedder(path: &Path) -> Result<Box<dyn Embedder>> {
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "model not found"),
        ));
    }
    if path.is_dir() {
        let cfg = path.join("config.json");
        let text = std::fs::read_to_string(&cfg).map_err(|e| Error::io(&cfg, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::BadConfig {
            path: cfg.clone(),
            msg: e.to_string(),
        })?;
        if matches!(
            v.get("model_type").and_then(|t| t.as_str()),
            Some("bert" | "roberta" | "xlm-roberta")
        ) {
            return Ok(Box::new(SentenceEncoder::load(path)?));
        }
    }
    Ok(Box::new(DecoderEmbedder::load(path)?))
}

/// sha256 of the config text, the weights' length and their first and last MiB.
fn fingerprint(config: &[u8], weights: &Path) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(weights).map_err(|e| Error::io(weights, e))?;
    let len = f.metadata().map_err(|e| Error::io(weights, e))?.len();
    let mut h = Sha256::new();
    h.update(config);
    h.update(len.to_le_bytes());
    let mut buf = vec![0u8; (1 << 20).min(len as usize)];
    f.read_exact(&mut buf).map_err(|e| Error::io(weights, e))?;
    h.update(&buf);
    f.seek(SeekFrom::Start(len - buf.len() as u64))
        .and_then(|_| f.read_exact(&mut buf))
        .map_err(|e| Error::io(weights, e))?;
    h.update(&buf);
    Ok(format!("{:x}", h.finalize()))
}

fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Scales each row of (n, dim) to unit length (rows of zeros stay zero), as
/// `torch.nn.functional.normalize` with eps 1e-12.
pub fn l2_normalize(v: &mut [f32], dim: usize) {
    for row in v.chunks_exact_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|x| *x /= norm);
    }
}

// ------------------------------------------------------------------------------------------------
// sentence-transformers encoders

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The mean of the token vectors under the attention mask.
    Mean,
    /// The `[CLS]` token's vector.
    Cls,
}

/// A sentence-transformers model: Transformer (BERT) → Pooling → optional Normalize, read from
/// `modules.json`, `sentence_bert_config.json` and `1_Pooling/config.json` when present (a plain
/// Hugging Face BERT folder gets mean pooling, normalisation and its full context).
pub struct SentenceEncoder {
    pub bert: Bert,
    tokenizer: tokenizers::Tokenizer,
    pub max_len: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    info: ModelInfo,
}

/// Token positions per forward batch: enough rows for the GEMMs to run near peak, few enough
/// that the activations stay in the last-level cache's neighbourhood.
const BATCH_TOKENS: usize = 2048;

impl SentenceEncoder {
    pub fn load(dir: &Path) -> Result<Self> {
        let bert = Bert::load(dir)?;
        let read_json = |name: &str| -> Result<Option<serde_json::Value>> {
            let p = dir.join(name);
            if !p.exists() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::BadConfig {
                    path: p,
                    msg: e.to_string(),
                })
        };
        let cfg_max = bert.config.max_position_embeddings;
        let max_len = read_json("sentence_bert_config.json")?
            .and_then(|v| v.get("max_seq_length").and_then(|m| m.as_u64()))
            .map_or(cfg_max, |m| (m as usize).min(cfg_max));
        let (pooling, normalize) = match read_json("modules.json")? {
            None => (Pooling::Mean, true),
            Some(modules) => {
                let list = modules.as_array().cloned().unwrap_or_default();
                let has = |ty: &str| {
                    list.iter().any(|m| {
                        m.get("type")
                            .and_then(|t| t.as_str())
                            .is_some_and(|t| t.ends_with(ty))
                    })
                };
                let pool_dir = list
                    .iter()
                    .find(|m| {
                        m.get("type")
                            .and_then(|t| t.as_str())
                            .is_some_and(|t| t.ends_with(".Pooling"))
                    })
                    .and_then(|m| m.get("path").and_then(|p| p.as_str()))
                    .unwrap_or("1_Pooling")
                    .to_string();
                let pool_cfg = read_json(&format!("{pool_dir}/config.json"))?;
                let flag = |k: &str| {
                    pool_cfg
                        .as_ref()
                        .and_then(|c| c.get(k).and_then(|b| b.as_bool()))
                        .unwrap_or(false)
                };
                let pooling = if flag("pooling_mode_cls_token") {
                    Pooling::Cls
                } else if flag("pooling_mode_mean_tokens") || pool_cfg.is_none() {
                    Pooling::Mean
                } else {
                    return Err(Error::UnsupportedModel {
                        path: dir.join(pool_dir).join("config.json"),
                        msg: "only mean or CLS pooling is supported".into(),
                    });
                };
                (pooling, has(".Normalize"))
            }
        };
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer =
            tokenizers::Tokenizer::from_file(&tok_path).map_err(|e| Error::Tokenizer {
                path: tok_path.clone(),
                msg: e.to_string(),
            })?;
        // tokenizer.json may carry a fixed padding and another truncation length (MiniLM's
        // says 128): sentence-transformers pads to the batch (here: packs) and truncates at
        // max_seq_length, special tokens included.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| Error::Tokenizer {
                path: tok_path.clone(),
                msg: e.to_string(),
            })?;
        let cfg_bytes = std::fs::read(dir.join("config.json")).unwrap_or_default();
        let weights = dir.join("model.safetensors");
        let info = ModelInfo {
            name: file_name(dir),
            path: absolute(dir),
            kind: "bert".into(),
            dim: bert.config.hidden_size,
            fingerprint: fingerprint(&cfg_bytes, &weights)?,
        };
        Ok(Self {
            bert,
            tokenizer,
            max_len,
            pooling,
            normalize,
            info,
        })
    }

    /// Token ids of each text, `[CLS] … [SEP]`, truncated at `max_len`.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let enc = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| Error::TokenizerLib(e.to_string()))?;
        Ok(enc.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Embeddings of tokenized texts, (n, dim): the sequences run longest first in packed
    /// batches of about `BATCH_TOKENS` positions, then go back to their order.
    pub fn embed_ids(&self, seqs: &[Vec<u32>]) -> Vec<f32> {
        let c = self.bert.config.hidden_size;
        let mut order: Vec<usize> = (0..seqs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
        let mut out = vec![0f32; seqs.len() * c];
        let mut start = 0;
        while start < order.len() {
            let mut end = start;
            let mut tokens = 0;
            while end < order.len()
                && (end == start || tokens + seqs[order[end]].len() <= BATCH_TOKENS)
            {
                tokens += seqs[order[end]].len();
                end += 1;
            }
            let batch = &order[start..end];
            let ids: Vec<u32> = batch
                .iter()
                .flat_map(|&i| seqs[i].iter().copied())
                .collect();
            let lens: Vec<usize> = batch.iter().map(|&i| seqs[i].len()).collect();
            let hidden = self.bert.forward(&ids, &lens);
            let mut row0 = 0;
            for (&i, &l) in batch.iter().zip(&lens) {
                let dst = &mut out[i * c..(i + 1) * c];
                let rows = &hidden[row0 * c..(row0 + l) * c];
                match self.pooling {
                    Pooling::Cls => dst.copy_from_slice(&rows[..c]),
                    Pooling::Mean => {
                        for r in rows.chunks_exact(c) {
                            dst.iter_mut().zip(r).for_each(|(d, &v)| *d += v);
                        }
                        let inv = 1.0 / l.max(1) as f32;
                        dst.iter_mut().for_each(|d| *d *= inv);
                    }
                }
                row0 += l;
            }
            start = end;
        }
        if self.normalize {
            l2_normalize(&mut out, c);
        }
        out
    }
}

impl Embedder for SentenceEncoder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<f32>> {
        Ok(self.embed_ids(&self.tokenize(texts)?))
    }
}

// ------------------------------------------------------------------------------------------------
// Decoders

/// A decodex decoder as an embedder: each text alone through the network (no BOS added, no
/// padding), its last hidden state averaged over the tokens and L2-normalised. A text longer
/// than the context keeps its first tokens.
pub struct DecoderEmbedder {
    model: pretrained::Pretrained,
    info: ModelInfo,
}

impl DecoderEmbedder {
    pub fn load(path: &Path) -> Result<Self> {
        let model = pretrained::load(path, false, None)?;
        let (kind, dim, weights, cfg): (&str, usize, PathBuf, Vec<u8>) = match &model.network {
            Network::Gpt(g) => (
                "gpt",
                g.cfg.n_embd,
                path.join("model.safetensors"),
                std::fs::read(path.join("config.json")).unwrap_or_default(),
            ),
            Network::Llama(l) => {
                let (weights, cfg) = if path.is_file() {
                    (path.to_path_buf(), Vec::new())
                } else {
                    (
                        path.join("model.safetensors"),
                        std::fs::read(path.join("config.json")).unwrap_or_default(),
                    )
                };
                ("llama", l.cfg.hidden_size, weights, cfg)
            }
        };
        let info = ModelInfo {
            name: file_name(path),
            path: absolute(path),
            kind: kind.into(),
            dim,
            fingerprint: fingerprint(&cfg, &weights)?,
        };
        Ok(Self { model, info })
    }

    fn embed_one(&self, text: &str) -> Result<Vec<f32>> {
        let mut ids = self.model.tokenizer.encode(text)?;
        ids.truncate(self.model.context_len());
        let dim = self.info.dim;
        if ids.is_empty() {
            return Ok(vec![0f32; dim]);
        }
        let t = ids.len();
        let idx = Tensor::from_vec(ids, (1, t), &Device::Cpu)?;
        let hidden = match &self.model.network {
            Network::Gpt(g) => g.hidden(&idx, None, None)?,
            Network::Llama(l) => l.hidden(&idx, &mut l.candle_cache())?,
        };
        // (1, T, C) -> (C): the mean over the tokens.
        let mut v = hidden.squeeze(0)?.mean(0)?.to_vec1::<f32>()?;
        l2_normalize(&mut v, dim);
        Ok(v)
    }
}

impl Embedder for DecoderEmbedder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(texts.len() * self.info.dim);
        for t in texts {
            out.extend(self.embed_one(t)?);
        }
        Ok(out)
    }
}
