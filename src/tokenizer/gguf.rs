//! The tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`), rebuilt as a Hugging Face
//! `tokenizer.json`, as `transformers` does when it loads a GGUF file: byte-level BPE (model
//! `gpt2`) from the token list and merges, with control tokens as special added tokens.

use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::{json, Value as Json};

/// The `tokenizer.json` for the GGUF metadata, or a message saying what is missing or
/// unsupported.
pub fn tokenizer_json(c: &Content) -> std::result::Result<Json, String> {
    let meta = |key: &str| c.metadata.get(&format!("tokenizer.ggml.{key}"));
    let strings = |v: &Value| -> Vec<String> {
        v.to_vec()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.to_string().ok().cloned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let model = meta("model")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .ok_or("the file has no tokenizer (tokenizer.ggml.model is missing)")?;
    if model != "gpt2" {
        return Err(format!(
            "tokenizer model {model:?} is not supported (supported: \"gpt2\", byte-level BPE); \
             pass a tokenizer.json instead"
        ));
    }
    let tokens = meta("tokens")
        .map(strings)
        .ok_or("tokenizer.ggml.tokens is missing")?;
    let merges = meta("merges").map(strings).unwrap_or_default();
    let types: Vec<i64> = meta("token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|a| a.iter().map(|t| t.to_i32().map_or(1, i64::from)).collect())
        .unwrap_or_default();
    let pre = meta("pre")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    // Token types (llama.cpp): 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    let added: Vec<Json> = types
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == 3 || t == 4)
        .map(|(i, &t)| {
            json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": t == 4, "special": t == 3})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                            "use_regex": true});
    let pre_tokenizer = match pre.as_str() {
        // Llama 3: its own split regex, then bytes mapped without GPT-2's regex.
        "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated",
             "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
             "use_regex": false}]}),
        _ => byte_level.clone(),
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    }))
}

/// Llama 3's pre-tokenizer regex (from its tokenizer.json).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
