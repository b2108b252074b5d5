//! SmolLM2-135M-Instruct (Llama architecture, GGUF) against Hugging Face transformers: token ids,
//! first-step logits, greedy continuations and beam search, from the fixtures that
//! `scripts/gen_smollm2_fixture.py` wrote. The model comes from `scripts/fetch_models.sh`.

mod common;

use std::sync::OnceLock;

use candle_core::Device;
use decodex::decode::Decoder;
use decodex::models::Llama;
use decodex::tokenizer::Tokenizer;
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The dequantized (f32) model, loaded once for all tests of this binary.
fn model_f32() -> &'static Llama {
    static M: OnceLock<Llama> = OnceLock::new();
    M.get_or_init(|| Llama::from_gguf(&common::smollm2(), true, &Device::Cpu).unwrap())
}

#[test]
fn tokenizer_matches_transformers_on_1000_lines() {
    let tok = Tokenizer::from_gguf(&common::smollm2()).unwrap();
    let fx = fixture("smollm2_tokens.json");
    let cases = fx.as_array().unwrap();
    assert!(cases.len() >= 1000, "fixture has {} lines", cases.len());
    let mut files = std::collections::HashMap::new();
    let mut mismatches = Vec::new();
    for c in cases {
        let file = c["file"].as_str().unwrap().to_string();
        let lines = files.entry(file.clone()).or_insert_with(|| {
            let p = decodex::train::config::resolve_data_path(std::path::Path::new(&file));
            let text = std::fs::read_to_string(&p)
                .unwrap_or_else(|e| panic!("{}: {e} (set DECODEX_DATA)", p.display()));
            text.split('\n').map(String::from).collect::<Vec<_>>()
        });
        let line: String = lines[c["line"].as_u64().unwrap() as usize]
            .chars()
            .take(2000)
            .collect();
        assert_eq!(
            line.chars().count() as u64,
            c["chars"].as_u64().unwrap(),
            "{file}"
        );
        let got = tok.encode(&line).unwrap();
        if got != ids(&c["ids"]) {
            mismatches.push(format!("{file}:{}", c["line"]));
        }
    }
    println!(
        "{} of {} lines identical",
        cases.len() - mismatches.len(),
        cases.len()
    );
    assert!(mismatches.is_empty(), "token ids differ on {mismatches:?}");
}

#[test]
fn first_step_logits_match_transformers() {
    let m = model_f32();
    let fx = fixture("smollm2_generate.json");
    let full = candle_core::safetensors::load(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/smollm2_logits.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let mut worst = 0f32;
    for (k, c) in fx["cases"].as_array().unwrap().iter().enumerate() {
        let input = ids(&c["input_ids"]);
        let mut cache = Decoder::new_cache(m, 1).unwrap();
        let logits = m.step(&input, 1, &mut cache).unwrap();
        for (id, want) in ids(&c["top_ids"])
            .iter()
            .zip(c["top_logits"].as_array().unwrap())
        {
            let d = (logits[*id as usize] - want.as_f64().unwrap() as f32).abs();
            worst = worst.max(d);
        }
        if let Some(t) = full.get(&format!("logits_{k}")) {
            let want = t.to_vec1::<f32>().unwrap();
            let d = want
                .iter()
                .zip(&logits)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            println!("prompt {k}: all {} logits within {d:.2e}", want.len());
            worst = worst.max(d);
        }
    }
    println!("worst first-step logit difference {worst:.2e}");
    assert!(worst < 1e-3, "logits differ by {worst}");
}

#[test]
fn greedy_continuations_match_transformers() {
    let m = model_f32();
    let fx = fixture("smollm2_generate.json");
    let eos = fx["eos_token_id"].as_u64().unwrap() as u32;
    for c in fx["cases"].as_array().unwrap() {
        let want = ids(&c["greedy"]);
        let mut cache = Decoder::new_cache(m, 1).unwrap();
        let mut feed = ids(&c["input_ids"]);
        let mut got = Vec::new();
        while got.len() < 32 {
            let logits = m.step(&feed, 1, &mut cache).unwrap();
            let next = argmax(&logits);
            got.push(next);
            if next == eos {
                break;
            }
            feed = vec![next];
        }
        assert_eq!(got, want, "prompt {:?}", c["prompt"]);
    }
}

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[test]
#[ignore = "timing"]
fn tmp_speed() {
    for deq in [false, true] {
        let m = Llama::from_gguf(&common::smollm2(), deq, &Device::Cpu).unwrap();
        let prompt: Vec<u32> = (0..128).map(|i| 100 + i).collect();
        for _ in 0..2 {
            let mut cache = Decoder::new_cache(&m, 1).unwrap();
            let t = std::time::Instant::now();
            let mut l = m.step(&prompt, 1, &mut cache).unwrap();
            let pp = t.elapsed().as_secs_f64();
            let t = std::time::Instant::now();
            for _ in 0..32 {
                let n = argmax(&l);
                l = m.step(&[n], 1, &mut cache).unwrap();
            }
            let tg = t.elapsed().as_secs_f64();
            println!("deq {deq}: pp {:.1} tok/s, tg {:.1} tok/s", 128.0 / pp, 32.0 / tg);
        }
    }
}
