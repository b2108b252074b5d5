//! Model configuration. `GptConfig` mirrors the fields of Hugging Face's `GPT2Config`
//! (`config.json`) under nanoGPT's names where they differ (`block_size` = `n_positions`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The GPT-2 architecture's hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// Vocabulary size V (set from the tokenizer when omitted in a training config).
    #[serde(default)]
    pub vocab_size: usize,
    /// Context length T_max (`n_positions` in Hugging Face's config).
    pub block_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_embd: usize,
    /// Dropout on embeddings, attention weights and residual branches (0 = off).
    #[serde(default)]
    pub dropout: f32,
    /// Biases in the linear layers and LayerNorms (GPT-2: true). Without them the model exports
    /// to Hugging Face with zero biases, which computes the same function.
    #[serde(default = "default_true")]
    pub bias: bool,
    /// `"gelu_new"` (tanh approximation, GPT-2's) or `"gelu"` (exact, erf).
    #[serde(default)]
    pub activation: Activation,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
}

fn default_true() -> bool {
    true
}
/// The MLP's GELU, by Hugging Face's name for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// The tanh approximation (GPT-2's `gelu_new`).
    #[default]
    #[serde(rename = "gelu_new")]
    GeluNew,
    /// The exact erf form (`gelu`).
    #[serde(rename = "gelu")]
    Gelu,
}

impl Activation {
    /// Hugging Face's name: "gelu_new" or "gelu".
    pub fn name(self) -> &'static str {
        match self {
            Activation::GeluNew => "gelu_new",
            Activation::Gelu => "gelu",
        }
    }
}

impl std::fmt::Display for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
fn default_eps() -> f64 {
    1e-5
}

impl GptConfig {
    /// Head size hs = C / nh.
    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Checks the invariants the model relies on; errors name the offending values.
    pub fn validate(&self) -> Result<()> {
        if self.n_head == 0 || self.n_embd == 0 || self.n_layer == 0 || self.block_size == 0 {
            return Err(Error::Invalid(format!(
                "n_layer ({}), n_head ({}), n_embd ({}) and block_size ({}) must all be positive",
                self.n_layer, self.n_head, self.n_embd, self.block_size
            )));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::HeadsDoNotDivide {
                n_embd: self.n_embd,
                n_head: self.n_head,
            });
        }
        if self.vocab_size == 0 {
            return Err(Error::Invalid("vocab_size must be positive".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Invalid(format!(
                "dropout ({}) must be in [0, 1)",
                self.dropout
            )));
        }
        Ok(())
    }

    /// Number of parameters (the tied LM head counted once).
    pub fn num_params(&self) -> usize {
        let (c, l, v, t) = (self.n_embd, self.n_layer, self.vocab_size, self.block_size);
        let b = if self.bias { 1 } else { 0 };
        let per_layer = 2 * (c + b * c) // ln_1, ln_2
            + c * 3 * c + b * 3 * c      // c_attn
            + c * c + b * c              // attn.c_proj
            + c * 4 * c + b * 4 * c      // c_fc
            + 4 * c * c + b * c; // mlp.c_proj
        v * c + t * c + l * per_layer + c + b * c
    }

    /// The parameter tensors in a fixed order, with Hugging Face GPT2LMHeadModel names and shapes.
    /// Linear weights keep GPT-2's `Conv1D` layout, (in, out), so that checkpoints load in
    /// `transformers` without a transpose. Biases are listed only when `bias` is set.
    pub fn param_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (c, v, t) = (self.n_embd, self.vocab_size, self.block_size);
        let mut out = vec![
            ("transformer.wte.weight".to_string(), vec![v, c]),
            ("transformer.wpe.weight".to_string(), vec![t, c]),
        ];
        for l in 0..self.n_layer {
            let p = format!("transformer.h.{l}");
            let mut push = |name: &str, shape: Vec<usize>, is_bias: bool| {
                if !is_bias || self.bias {
                    out.push((format!("{p}.{name}"), shape));
                }
            };
            push("ln_1.weight", vec![c], false);
            push("ln_1.bias", vec![c], true);
            push("attn.c_attn.weight", vec![c, 3 * c], false);
            push("attn.c_attn.bias", vec![3 * c], true);
            push("attn.c_proj.weight", vec![c, c], false);
            push("attn.c_proj.bias", vec![c], true);
            push("ln_2.weight", vec![c], false);
            push("ln_2.bias", vec![c], true);
            push("mlp.c_fc.weight", vec![c, 4 * c], false);
            push("mlp.c_fc.bias", vec![4 * c], true);
            push("mlp.c_proj.weight", vec![4 * c, c], false);
            push("mlp.c_proj.bias", vec![c], true);
        }
        out.push(("transformer.ln_f.weight".to_string(), vec![c]));
        if self.bias {
            out.push(("transformer.ln_f.bias".to_string(), vec![c]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> GptConfig {
        GptConfig {
            vocab_size: 65,
            block_size: 64,
            n_layer: 4,
            n_head: 4,
            n_embd: 128,
            dropout: 0.0,
            bias: true,
            activation: Activation::GeluNew,
            layer_norm_epsilon: 1e-5,
        }
    }

    #[test]
    fn param_count_matches_shapes() {
        for bias in [true, false] {
            let cfg = GptConfig { bias, ..tiny() };
            let n: usize = cfg
                .param_shapes()
                .iter()
                .map(|(_, s)| s.iter().product::<usize>())
                .sum();
            assert_eq!(n, cfg.num_params());
        }
    }

    #[test]
    fn heads_must_divide() {
        let cfg = GptConfig {
            n_head: 3,
            ..tiny()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("128") && err.contains('3'), "{err}");
    }
}
