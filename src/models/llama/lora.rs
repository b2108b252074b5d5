//! LoRA (Hu et al. 2021, as PEFT's `LoraLayer`): which projections are adapted, the adapters'
//! names and shapes in PEFT's layout, and their initialization.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::LlamaConfig;
use crate::error::{Error, Result};
use crate::nn::params::Flat;

/// The seven projections of a block LoRA can adapt, in PEFT's module names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// The module's name in a Llama block (`q_proj`, …, `down_proj`), as PEFT's
    /// `target_modules` names it.
    pub fn module(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    /// The module's path inside a block (`self_attn.q_proj`, `mlp.up_proj`, …).
    pub fn path(self) -> String {
        let parent = match self {
            Proj::Q | Proj::K | Proj::V | Proj::O => "self_attn",
            _ => "mlp",
        };
        format!("{parent}.{}", self.module())
    }

    /// Parses a module name: `q_proj` or its short form `q` (likewise k, v, o, gate, up, down).
    pub fn parse(s: &str) -> Option<Proj> {
        let s = s.trim();
        let s = s.strip_suffix("_proj").unwrap_or(s);
        Some(match s {
            "q" => Proj::Q,
            "k" => Proj::K,
            "v" => Proj::V,
            "o" => Proj::O,
            "gate" => Proj::Gate,
            "up" => Proj::Up,
            "down" => Proj::Down,
            _ => return None,
        })
    }

    /// (out, in) features of the projection's weight.
    pub fn dims(self, cfg: &LlamaConfig) -> (usize, usize) {
        let (c, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (q, kv) = (
            cfg.num_attention_heads * cfg.head_dim(),
            cfg.n_kv_heads() * cfg.head_dim(),
        );
        match self {
            Proj::Q => (q, c),
            Proj::K | Proj::V => (kv, c),
            Proj::O => (c, q),
            Proj::Gate | Proj::Up => (i, c),
            Proj::Down => (c, i),
        }
    }
}

/// The base model's tensor names, in the order of a Hugging Face state dict.
pub fn base_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (c, v) = (cfg.hidden_size, cfg.vocab_size);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, c])];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![c]));
        for proj in [Proj::Q, Proj::K, Proj::V, Proj::O] {
            let (o, i) = proj.dims(cfg);
            out.push((format!("{p}.{}.weight", proj.path()), vec![o, i]));
        }
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![c]));
        for proj in [Proj::Gate, Proj::Up, Proj::Down] {
            let (o, i) = proj.dims(cfg);
            out.push((format!("{p}.{}.weight", proj.path()), vec![o, i]));
        }
    }
    out.push(("model.norm.weight".to_string(), vec![c]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, c]));
    }
    out
}

/// LoRA's settings, as PEFT's `LoraConfig` names them.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub targets: Vec<Proj>,
}

impl LoraSpec {
    pub fn scale(&self) -> f32 {
        (self.alpha / self.rank as f64) as f32
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::Invalid(
                "LoRA rank must be at least 1 (rank 0 adapts nothing)".into(),
            ));
        }
        if self.targets.is_empty() {
            return Err(Error::Invalid(
                "LoRA needs at least one target module".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Invalid(format!(
                "LoRA dropout {} is outside [0, 1)",
                self.dropout
            )));
        }
        Ok(())
    }
}

/// PEFT's tensor name of adapter matrix `ab` ("A" or "B") of projection `p` in layer `l`.
pub fn lora_name(l: usize, p: Proj, ab: &str) -> String {
    format!(
        "base_model.model.model.layers.{l}.{}.lora_{ab}.weight",
        p.path()
    )
}

/// The adapter tensors' layout: for each layer and target, A (r, in) then B (out, r).
pub fn lora_shapes(cfg: &LlamaConfig, spec: &LoraSpec) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        for &p in &spec.targets {
            let (o, i) = p.dims(cfg);
            out.push((lora_name(l, p, "A"), vec![spec.rank, i]));
            out.push((lora_name(l, p, "B"), vec![o, spec.rank]));
        }
    }
    out
}

/// Fresh adapters as PEFT initialises them: A Kaiming-uniform (a = √5, so U(±1/√in)), B zero,
/// which makes the adapted model start equal to the base.
pub fn init_lora(cfg: &LlamaConfig, spec: &LoraSpec, rng: &mut ChaCha8Rng) -> Flat {
    let mut f = Flat::zeros(&lora_shapes(cfg, spec));
    for e in f.entries.clone() {
        if e.name.ends_with("lora_A.weight") {
            let bound = 1.0 / (e.shape[1] as f32).sqrt();
            for x in &mut f.data[e.offset..e.offset + e.len] {
                *x = rng.gen_range(-bound..bound);
            }
        }
    }
    f
}
