//! LoRA adapters in PEFT's layout: a folder with `adapter_config.json` (PEFT's `LoraConfig`
//! fields) and `adapter_model.safetensors` (tensors named
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`, …), which
//! `PeftModel.from_pretrained` loads onto the matching `LlamaForCausalLM`. The weights are in
//! Hugging Face's layout whatever the base file was (decodex trains on `Llama::hf_tensors`,
//! which un-permutes a GGUF file's q and k rows), so an adapter trained on the GGUF
//! SmolLM2 applies to the Hugging Face SmolLM2 and back.
//!
//! The weights file's metadata records the base's shape (`decodex_base`: hidden size, layers,
//! heads, vocabulary); loading onto a base of another shape is an error naming both (as is a
//! PEFT adapter without it whose tensors do not fit).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::lora::{lora_name, lora_shapes, LoraSpec, Proj};
use crate::error::{write_atomic, Error, Result};
use crate::models::llama::LlamaConfig;
use crate::nn::params::Flat;
use crate::nn::tensor_io;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The safetensors metadata key holding the base's shape (PEFT ignores metadata; its
/// `LoraConfig` rejects unknown config fields, so the shape is not kept there).
const BASE_KEY: &str = "decodex_base";

fn base_signature(cfg: &LlamaConfig) -> serde_json::Value {
    serde_json::json!({
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.n_kv_heads(),
        "vocab_size": cfg.vocab_size,
    })
}

/// Writes the adapter folder (each file atomically).
pub fn save(
    dir: &Path,
    cfg: &LlamaConfig,
    spec: &LoraSpec,
    params: &Flat,
    base_name: &str,
) -> Result<()> {
    let targets: Vec<&str> = spec.targets.iter().map(|p| p.module()).collect();
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    });
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        (BASE_KEY.to_string(), base_signature(cfg).to_string()),
    ]);
    tensor_io::save_tensors(&dir.join(WEIGHTS_FILE), &params.tensors(), meta)?;
    let text = serde_json::to_string_pretty(&config).expect("json");
    write_atomic(&dir.join(CONFIG_FILE), text.as_bytes())
}

/// Reads an adapter folder for a base of config `cfg`.
pub fn load(dir: &Path, cfg: &LlamaConfig) -> Result<(LoraSpec, Flat)> {
    let cpath = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cpath).map_err(|e| Error::io(&cpath, e))?;
    let bad = |msg: String| Error::BadConfig {
        path: cpath.clone(),
        msg,
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    if v["peft_type"] != "LORA" {
        return Err(bad(format!(
            "peft_type is {}, only \"LORA\" is supported",
            v["peft_type"]
        )));
    }
    let rank = v["r"]
        .as_u64()
        .ok_or_else(|| bad("\"r\" (the rank) is missing".into()))? as usize;
    if rank == 0 {
        return Err(bad("rank \"r\" is 0".into()));
    }
    let alpha = v["lora_alpha"]
        .as_f64()
        .ok_or_else(|| bad("\"lora_alpha\" is missing".into()))?;
    let dropout = v["lora_dropout"].as_f64().unwrap_or(0.0) as f32;
    let targets = match &v["target_modules"] {
        serde_json::Value::Array(a) => a
            .iter()
            .map(|m| {
                m.as_str()
                    .and_then(Proj::parse)
                    .ok_or_else(|| bad(format!("target module {m} is not a Llama projection")))
            })
            .collect::<Result<Vec<Proj>>>()?,
        _ => return Err(bad("\"target_modules\" must be a list".into())),
    };
    let spec = LoraSpec {
        rank,
        alpha,
        dropout,
        targets,
    };
    let wpath = dir.join(WEIGHTS_FILE);
    let loaded = tensor_io::load_tensors(&wpath)?;
    if let Some(sig) = loaded.metadata.get(BASE_KEY) {
        let sig: serde_json::Value = serde_json::from_str(sig).unwrap_or_default();
        if sig != base_signature(cfg) {
            return Err(Error::UnsupportedModel {
                path: wpath.clone(),
                msg: format!(
                    "the adapter was trained for another base model ({sig}), not this one ({})",
                    base_signature(cfg)
                ),
            });
        }
    }
    let mut flat = Flat::zeros(&lora_shapes(cfg, &spec));
    for e in flat.entries.clone() {
        // PEFT saves without the adapter name; some versions keep ".default".
        let alt = e.name.replace(".weight", ".default.weight");
        let (shape, data) = loaded
            .tensors
            .get(&e.name)
            .or_else(|| loaded.tensors.get(&alt))
            .ok_or_else(|| Error::CorruptCheckpoint {
                path: wpath.clone(),
                msg: format!(
                    "tensor {} is missing (is the adapter for another base model?)",
                    e.name
                ),
            })?;
        if *shape != e.shape {
            return Err(Error::CorruptCheckpoint {
                path: wpath.clone(),
                msg: format!(
                    "tensor {} has shape {shape:?}, but this base needs {:?}: the adapter was trained for another base model",
                    e.name, e.shape
                ),
            });
        }
        flat.data[e.offset..e.offset + e.len].copy_from_slice(data);
    }
    Ok((spec, flat))
}

/// Adds each adapter's (α/r) · B A into the matching weight of `tensors` (a Hugging Face state
/// dict, as `Llama::hf_tensors` gives).
pub fn merge_into(
    tensors: &mut HashMap<String, Tensor>,
    cfg: &LlamaConfig,
    spec: &LoraSpec,
    params: &Flat,
) -> Result<()> {
    let dev = Device::Cpu;
    let get = |name: &str| -> Result<Tensor> {
        let e = &params.entries[params.id(name).expect("laid out by lora_shapes")];
        Ok(Tensor::from_slice(
            &params.data[e.offset..e.offset + e.len],
            e.shape.as_slice(),
            &dev,
        )?)
    };
    for l in 0..cfg.num_hidden_layers {
        for &p in &spec.targets {
            let (a, b) = (get(&lora_name(l, p, "A"))?, get(&lora_name(l, p, "B"))?);
            let delta = (b.matmul(&a)? * spec.scale() as f64)?;
            let name = format!("model.layers.{l}.{}.weight", p.path());
            let w = tensors
                .get_mut(&name)
                .ok_or_else(|| Error::Invalid(format!("the base has no tensor {name}")))?;
            *w = (&*w + delta)?;
        }
    }
    Ok(())
}
