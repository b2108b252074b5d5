//! Writes the SmolLM2 Q4_1 logits decodex computes along llama.cpp's own greedy continuations
//! (tests/fixtures/smollm2_llamacpp.json), one raw little-endian f32 file per prompt:
//! (steps, vocab). `scripts/compare_llamacpp.py teacher --decodex DIR` compares them with
//! llama.cpp's logits along the same tokens.
//!
//!   cargo run --release --example teacher_forced_logits -- /tmp/decodex-logits

use anyhow::{Context, Result};
use candle_core::Device;
use decodex::decode::Decoder;
use decodex::models::llama::Llama;
use serde_json::Value;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect()
        })
        .unwrap_or_default()
}

fn main() -> Result<()> {
    let out = std::env::args()
        .nth(1)
        .context("usage: teacher_forced_logits OUT_DIR")?;
    let models = std::env::var("DECODEX_MODELS").unwrap_or_else(|_| {
        format!(
            "{}/.cache/decodex/models",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    let model = format!("{models}/SmolLM2-135M-Instruct.Q4_1.gguf");
    let mut m = Llama::from_gguf(model.as_ref(), false, &Device::Cpu)?;
    // `scripts/compare_llamacpp.py teacher` runs llama.cpp without flash attention.
    m.flash_attn = false;
    let read =
        |p: &str| -> Result<Value> { Ok(serde_json::from_str(&std::fs::read_to_string(p)?)?) };
    let fx = read("tests/fixtures/smollm2_generate.json")?;
    let cpp = read("tests/fixtures/smollm2_llamacpp.json")?;
    std::fs::create_dir_all(&out)?;
    let (Some(cases), Some(theirs)) = (fx["cases"].as_array(), cpp["cases"].as_array()) else {
        anyhow::bail!("the fixtures hold no cases");
    };
    for (i, (case, want)) in cases.iter().zip(theirs).enumerate() {
        let greedy = ids(&want["greedy"]);
        let mut cache = m.new_cache(1)?;
        let mut logits = m.step(&ids(&case["input_ids"]), 1, &mut cache)?;
        for &t in &greedy[..greedy.len().saturating_sub(1)] {
            logits.extend(m.step(&[t], 1, &mut cache)?);
        }
        let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(format!("{out}/{i}.f32"), bytes)?;
    }
    println!("wrote {} files to {out}", cases.len());
    Ok(())
}
