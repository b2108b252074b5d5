//! Loading any decoder decodex can run, by what the path holds: a GGUF file (Llama
//! architecture), a Hugging Face Llama directory (config.json with `model_type: "llama"`), or a
//! GPT-2 checkpoint (decodex's own, or Hugging Face's GPT2LMHeadModel). With it come the
//! tokenizer, the end-of-sequence ids and the chat template.

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::{Gpt, Llama};
use crate::error::{Error, Result};
use crate::models::gpt::checkpoint;
use crate::tokenizer::Tokenizer;

/// The network of a loaded decoder.
pub enum Network {
    Gpt(Gpt),
    Llama(Llama),
}

pub struct Pretrained {
    pub network: Network,
    pub tokenizer: Tokenizer,
    /// Ids that end a sequence.
    pub eos_ids: Vec<u32>,
    /// The Jinja chat template of instruct models (tokenizer_config.json or GGUF metadata).
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub path: PathBuf,
}

/// Loads the decoder at `path`. GGUF matrices stay quantized unless `dequantize`. `tokenizer`
/// replaces the model's own tokenizer (a `tokenizer.json`).
pub fn load(path: &Path, dequantize: bool, tokenizer: Option<&Path>) -> Result<Pretrained> {
    let device = Device::Cpu;
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "model not found"),
        ));
    }
    let token_text =
        |tok: &Tokenizer, id: Option<u32>| id.and_then(|id| tok.inner().id_to_token(id));
    if path.is_file() {
        let llama = Llama::from_gguf(path, dequantize, &device)?;
        let tok = match tokenizer {
            Some(t) => Tokenizer::from_file(t)?,
            None => Tokenizer::from_gguf(path)?,
        };
        let template = gguf_string(path, "tokenizer.chat_template")?;
        let eos_ids = llama.cfg.eos_ids();
        release_freed_heap();
        return Ok(Pretrained {
            bos_token: token_text(&tok, llama.cfg.bos_token_id),
            eos_token: token_text(&tok, eos_ids.first().copied()),
            eos_ids,
            chat_template: template,
            tokenizer: tok,
            network: Network::Llama(llama),
            path: path.to_path_buf(),
        });
    }
    let config: serde_json::Value = {
        let p = path.join("config.json");
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_str(&text).map_err(|e| Error::BadConfig {
            path: p.clone(),
            msg: format!("not valid JSON: {e}"),
        })?
    };
    let tok_path = tokenizer
        .map(Path::to_path_buf)
        .unwrap_or_else(|| path.join("tokenizer.json"));
    let tok_config = read_json(&path.join("tokenizer_config.json"));
    let special = |key: &str| -> Option<String> {
        let v = tok_config.as_ref()?.get(key)?;
        v.as_str()
            .map(String::from)
            .or_else(|| v.get("content").and_then(|c| c.as_str()).map(String::from))
    };
    if config["model_type"] == "llama" {
        let llama = Llama::from_hf_dir(path, &device)?;
        let tok = Tokenizer::from_file(&tok_path)?;
        let eos_ids = llama.cfg.eos_ids();
        return Ok(Pretrained {
            bos_token: special("bos_token").or_else(|| token_text(&tok, llama.cfg.bos_token_id)),
            eos_token: special("eos_token").or_else(|| token_text(&tok, eos_ids.first().copied())),
            chat_template: tok_config
                .as_ref()
                .and_then(|c| c.get("chat_template")?.as_str().map(String::from)),
            eos_ids,
            tokenizer: tok,
            network: Network::Llama(llama),
            path: path.to_path_buf(),
        });
    }
    let loaded = checkpoint::load_model(path)?;
    let gpt = loaded.gpt(&device)?;
    let eos_ids = loaded.tokenizer.eos_id().into_iter().collect();
    Ok(Pretrained {
        network: Network::Gpt(gpt),
        eos_ids,
        chat_template: None,
        bos_token: None,
        eos_token: None,
        tokenizer: loaded.tokenizer,
        path: path.to_path_buf(),
    })
}

impl Pretrained {
    /// The chat template, or the error for a model without one, so that a chat can be refused
    /// before its first message.
    pub fn require_chat_template(&self) -> Result<&str> {
        self.chat_template
            .as_deref()
            .ok_or_else(|| Error::UnsupportedModel {
                path: self.path.clone(),
                msg: "the model has no chat template (tokenizer_config.json's chat_template or \
                      the GGUF's tokenizer.chat_template); use an instruct model that has one, \
                      or give this one plain-text prompts"
                    .into(),
            })
    }

    /// The prompt as the model's chat template formats one user message, ready for the
    /// assistant's reply (Hugging Face's `apply_chat_template(..., add_generation_prompt=True)`).
    pub fn chat_prompt(&self, user: &str) -> Result<String> {
        self.chat_prompt_for(&[("user", user)])
    }

    /// The chat template applied to a whole conversation of (role, content) messages, ready for
    /// the assistant's next reply.
    pub fn chat_prompt_for(&self, messages: &[(&str, &str)]) -> Result<String> {
        let template = self.require_chat_template()?;
        let mut env = minijinja::Environment::new();
        // transformers compiles chat templates with trim_blocks and lstrip_blocks on: a block
        // tag on its own line leaves no newline or indentation behind.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        let bad = |e: minijinja::Error| Error::UnsupportedModel {
            path: self.path.clone(),
            msg: format!("its chat template does not render: {e}"),
        };
        env.add_template("chat", template).map_err(bad)?;
        let ctx = minijinja::context! {
            messages => messages
                .iter()
                .map(|(role, content)| minijinja::context! { role => role, content => content })
                .collect::<Vec<_>>(),
            add_generation_prompt => true,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        };
        env.get_template("chat")
            .and_then(|t| t.render(ctx))
            .map_err(bad)
    }

    /// The most positions the network attends over.
    pub fn context_len(&self) -> usize {
        self.decoder().context_len()
    }

    /// Whether decoding slides a window past the context instead of stopping: decodex's own GPT
    /// checkpoints do (nanoGPT's convention); see `SamplingConfig::crop_context`.
    pub fn crop_context(&self) -> bool {
        matches!(self.network, Network::Gpt(_))
    }

    /// The architecture's name: "gpt" or "llama".
    pub fn arch(&self) -> &'static str {
        match &self.network {
            Network::Gpt(_) => "gpt",
            Network::Llama(_) => "llama",
        }
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        match &self.network {
            Network::Gpt(g) => g.cfg.n_embd,
            Network::Llama(l) => l.cfg.hidden_size,
        }
    }

    /// The last hidden states (after the final norm) of `ids` (B, T): (B, T, hidden_size).
    pub fn hidden(&self, ids: &candle_core::Tensor) -> Result<candle_core::Tensor> {
        Ok(match &self.network {
            Network::Gpt(g) => g.hidden(ids, None, None)?,
            Network::Llama(l) => l.hidden(ids, &mut l.candle_cache())?,
        })
    }

    /// The network as the decoding engine drives it.
    pub fn decoder(&self) -> &dyn crate::models::Decoder {
        match &self.network {
            Network::Gpt(m) => m,
            Network::Llama(m) => m,
        }
    }
}

fn read_json(p: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
}

/// A string from a GGUF file's metadata.
fn gguf_string(path: &Path, key: &str) -> Result<Option<String>> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let c = super::llama::read_gguf(path, &mut f)?;
    Ok(c.metadata
        .get(key)
        .and_then(|v| v.to_string().ok())
        .cloned())
}

/// `load`, then a LoRA adapter folder (PEFT layout) merged into the weights, which are then
/// dense f32 (a GGUF base is dequantized). Without `adapter` this is `load`.
pub fn load_with_adapter(
    path: &Path,
    dequantize: bool,
    tokenizer: Option<&Path>,
    adapter: Option<&Path>,
) -> Result<Pretrained> {
    let Some(dir) = adapter else {
        return load(path, dequantize, tokenizer);
    };
    let mut model = load(path, true, tokenizer)?;
    let Network::Llama(llama) = &model.network else {
        return Err(Error::UnsupportedModel {
            path: path.to_path_buf(),
            msg: "LoRA adapters apply to Llama-family models only".into(),
        });
    };
    let cfg = llama.cfg.clone();
    let (spec, params) = crate::models::llama::adapter::load(dir, &cfg)?;
    let mut tensors: std::collections::HashMap<_, _> = llama.hf_tensors()?.into_iter().collect();
    crate::models::llama::adapter::merge_into(&mut tensors, &cfg, &spec, &params)?;
    model.network = Network::Llama(Llama::from_hf_tensors(cfg, tensors, path, &Device::Cpu)?);
    Ok(model)
}

/// Hands the heap freed while loading back to the system. The GGUF metadata is parsed three
/// times (model, tokenizer, chat template), each parse some 100,000 small strings; glibc keeps
/// what they leave free in the process (about 30 MB for SmolLM2's vocabulary) unless asked.
fn release_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's heap to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}
