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
use crate::models::pretrained;

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
    /// sha256 of the weights and of every config and tokenizer file that shapes the vectors.
    pub fingerprint: String,
}

/// A text embedding model: `embed` gives one row of `dim` floats per text.
pub trait Embedder: Send + Sync {
    fn info(&self) -> &ModelInfo;
    /// (texts.len(), dim) row-major, and the tokens read of the texts in all (the usage an
    /// API reports).
    fn embed_counted(&self, texts: &[&str]) -> Result<(Vec<f32>, usize)>;
    /// (texts.len(), dim) row-major.
    fn embed(&self, texts: &[&str]) -> Result<Vec<f32>> {
        Ok(self.embed_counted(texts)?.0)
    }
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

/// sha256 over the whole of each file that exists among `files` (name and bytes, in order):
/// the weights and every config and tokenizer file that shapes the vectors.
fn fingerprint(files: &[PathBuf]) -> Result<String> {
    let mut h = Sha256::new();
    for f in files.iter().filter(|f| f.exists()) {
        h.update(file_name(f).as_bytes());
        let mut file = std::fs::File::open(f).map_err(|e| Error::io(f, e))?;
        std::io::copy(&mut file, &mut h).map_err(|e| Error::io(f, e))?;
    }
    Ok(format!("{:x}", h.finalize()))
}

/// The safetensors weight files of a folder (one file or shards), sorted.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut w: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    w.sort();
    Ok(w)
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

/// The pooling of a sentence-transformers `Pooling` config: exactly one of mean or CLS.
fn read_pooling(path: &Path) -> Result<Pooling> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::BadConfig {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    let on: Vec<&str> = cfg
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| k.starts_with("pooling_mode_") && v.as_bool() == Some(true))
        .map(|(k, _)| k.as_str())
        .collect();
    match on[..] {
        ["pooling_mode_mean_tokens"] => Ok(Pooling::Mean),
        ["pooling_mode_cls_token"] => Ok(Pooling::Cls),
        _ => Err(Error::UnsupportedModel {
            path: path.to_path_buf(),
            msg: format!("pooling modes {on:?} (exactly one of mean or CLS is supported)"),
        }),
    }
}

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
        let (pooling, normalize, pool_dir) = match read_json("modules.json")? {
            None => (Pooling::Mean, true, None),
            Some(modules) => {
                let list = modules.as_array().cloned().unwrap_or_default();
                let (mut pool_dir, mut normalize) = (None, false);
                for m in &list {
                    let ty = m.get("type").and_then(|t| t.as_str()).unwrap_or("");
                    match ty.rsplit('.').next().unwrap_or("") {
                        "Transformer" => {}
                        "Pooling" => {
                            let p = m
                                .get("path")
                                .and_then(|p| p.as_str())
                                .unwrap_or("1_Pooling");
                            pool_dir = Some(p.to_string());
                        }
                        "Normalize" => normalize = true,
                        _ => {
                            return Err(Error::UnsupportedModel {
                                path: dir.join("modules.json"),
                                msg: format!(
                                "module {ty:?} (Transformer, Pooling and Normalize are supported)"
                            ),
                            })
                        }
                    }
                }
                let pooling = match &pool_dir {
                    None => Pooling::Mean,
                    Some(p) => read_pooling(&dir.join(p).join("config.json"))?,
                };
                (pooling, normalize, pool_dir)
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
        if tokenizer.get_vocab_size(true) > bert.config.vocab_size {
            return Err(Error::VocabMismatch {
                path: tok_path,
                tokenizer: tokenizer.get_vocab_size(true),
                model: bert.config.vocab_size,
            });
        }
        let mut files = weight_files(dir)?;
        files.extend(
            [
                "config.json",
                "tokenizer.json",
                "sentence_bert_config.json",
                "modules.json",
            ]
            .map(|f| dir.join(f)),
        );
        files.extend(pool_dir.map(|p| dir.join(p).join("config.json")));
        let info = ModelInfo {
            name: file_name(dir),
            path: absolute(dir),
            kind: "bert".into(),
            dim: bert.config.hidden_size,
            fingerprint: fingerprint(&files)?,
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
        // In slices: an `Encoding` also holds offsets and token strings, ten times the ids.
        let mut ids = Vec::with_capacity(texts.len());
        for slice in texts.chunks(1024) {
            let enc = self
                .tokenizer
                .encode_batch(slice.to_vec(), true)
                .map_err(|e| Error::TokenizerLib(e.to_string()))?;
            ids.extend(enc.into_iter().map(|e| e.get_ids().to_vec()));
        }
        Ok(ids)
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

    fn embed_counted(&self, texts: &[&str]) -> Result<(Vec<f32>, usize)> {
        let ids = self.tokenize(texts)?;
        let tokens = ids.iter().map(Vec::len).sum();
        Ok((self.embed_ids(&ids), tokens))
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
        let (kind, dim) = (model.arch(), model.hidden_size());
        let files = if path.is_file() {
            vec![path.to_path_buf()]
        } else {
            let mut f = weight_files(path)?;
            f.extend(["config.json", "tokenizer.json"].map(|n| path.join(n)));
            f
        };
        let info = ModelInfo {
            name: file_name(path),
            path: absolute(path),
            kind: kind.into(),
            dim,
            fingerprint: fingerprint(&files)?,
        };
        Ok(Self { model, info })
    }

    /// The text's embedding and the tokens it read.
    fn embed_one(&self, text: &str) -> Result<(Vec<f32>, usize)> {
        let mut ids = self.model.tokenizer.encode(text)?;
        ids.truncate(self.model.context_len());
        let dim = self.info.dim;
        if ids.is_empty() {
            return Ok((vec![0f32; dim], 0));
        }
        let t = ids.len();
        let idx = Tensor::from_vec(ids, (1, t), &Device::Cpu)?;
        let hidden = self.model.hidden(&idx)?;
        // (1, T, C) -> (C): the mean over the tokens.
        let mut v = hidden.squeeze(0)?.mean(0)?.to_vec1::<f32>()?;
        l2_normalize(&mut v, dim);
        Ok((v, t))
    }
}

impl Embedder for DecoderEmbedder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn embed_counted(&self, texts: &[&str]) -> Result<(Vec<f32>, usize)> {
        let mut out = Vec::with_capacity(texts.len() * self.info.dim);
        let mut tokens = 0;
        for t in texts {
            let (v, n) = self.embed_one(t)?;
            out.extend(v);
            tokens += n;
        }
        Ok((out, tokens))
    }
}
