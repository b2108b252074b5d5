//! Generation of a GPT checkpoint: the KV cache gives the same logits as full recomputation,
//! greedy decoding is the same with and without it as the window slides past the context, long
//! prompts are cropped from the left, sampling is seeded, the caller can stop generation, and an
//! exported model loads back unchanged.

mod common;

use candle_core::{Device, Tensor};
use decodex::decode::{generate_ids, generate_ids_until, SamplingConfig, StopReason, Strategy};
use decodex::models::gpt::checkpoint;
use decodex::models::gpt::GptConfig;
use decodex::models::Gpt;
use decodex::nn::KvCache;
use decodex::tokenizer::Tokenizer;

fn model(seed: u64) -> (GptConfig, Gpt, Vec<f32>) {
    model_scaled(seed, 10.0) // sharper distributions than the init's
}

fn model_scaled(seed: u64, scale: f32) -> (GptConfig, Gpt, Vec<f32>) {
    let cfg = GptConfig {
        vocab_size: 40,
        block_size: 24,
        n_layer: 2,
        n_head: 4,
        n_embd: 32,
        dropout: 0.0,
        bias: true,
        activation: decodex::models::gpt::Activation::GeluNew,
        layer_norm_epsilon: 1e-5,
    };
    let mut p = decodex::models::gpt::init_params(&cfg, seed);
    p.iter_mut().for_each(|v| *v *= scale);
    let t = decodex::models::gpt::flat_to_tensors(&cfg, &p, &Device::Cpu).unwrap();
    let m = Gpt::from_tensors(t, &cfg, &Device::Cpu).unwrap();
    (cfg, m, p)
}

#[test]
fn cached_logits_match_uncached() {
    // Weights at 3x GPT-2's init scale: logits of order 1-10, like a trained model's.
    let (cfg, m, _) = model_scaled(1, 3.0);
    let dev = Device::Cpu;
    let ids: Vec<u32> = (0..cfg.block_size as u32)
        .map(|i| (i * 7 + 3) % 40)
        .collect();
    let full = m
        .forward(
            &Tensor::from_slice(&ids, (1, ids.len()), &dev).unwrap(),
            None,
            None,
        )
        .unwrap();
    let full = full.get(0).unwrap().to_vec2::<f32>().unwrap();
    let mut cache = KvCache::new(cfg.n_layer);
    // A 5-token prefill, then one token at a time.
    let mut rows = m
        .forward(
            &Tensor::from_slice(&ids[..5], (1, 5), &dev).unwrap(),
            Some(&mut cache),
            None,
        )
        .unwrap()
        .get(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    for i in 5..ids.len() {
        let r = m
            .forward(
                &Tensor::from_slice(&ids[i..i + 1], (1, 1), &dev).unwrap(),
                Some(&mut cache),
                None,
            )
            .unwrap();
        rows.extend(r.get(0).unwrap().to_vec2::<f32>().unwrap());
    }
    let mut worst = 0.0f32;
    let mut scale = 0.0f32;
    assert_eq!(full.len(), rows.len(), "rows");
    assert_eq!(full[0].len(), rows[0].len(), "vocabulary");
    for (a, b) in full.iter().flatten().zip(rows.iter().flatten()) {
        worst = common::nan_max(worst, (a - b).abs());
        scale = scale.max(a.abs());
    }
    println!("max |cached - uncached| = {worst:.3e} (max |logit| {scale:.2})");
    assert!(worst < 1e-4, "cached and uncached logits differ by {worst}");
}

fn char_tokenizer() -> Tokenizer {
    let text: String = (0..40u8)
        .map(|i| (b'a' + (i % 26)) as char)
        .chain("ABCDEFGHIJKLMN".chars())
        .collect();
    let t = Tokenizer::train_char(&text).unwrap();
    assert_eq!(t.vocab_size(), 40);
    t
}

/// Decoding settings of a decodex GPT checkpoint: the window slides past the context.
fn cropping() -> SamplingConfig {
    SamplingConfig {
        crop_context: true,
        ..SamplingConfig::default()
    }
}

fn ids(tok: &Tokenizer, text: &str) -> Vec<u32> {
    tok.encode(text).unwrap()
}

#[test]
fn greedy_is_the_same_with_and_without_cache_across_the_window() {
    let (_, m, _) = model(2);
    let tok = char_tokenizer();
    let prompt = ids(&tok, "abcdefghij");
    // 60 new tokens after a 10-token prompt slide well past the 24-token window.
    let mut cfg = cropping();
    let a = generate_ids(&m, &prompt, &cfg, Strategy::Greedy, 60, |_, _| {}).unwrap();
    cfg.use_cache = false;
    let b = generate_ids(&m, &prompt, &cfg, Strategy::Greedy, 60, |_, _| {}).unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.tokens.len(), 60);
    assert_eq!(a.stopped_by, StopReason::MaxNewTokens);
    // Without the crop, decoding stops when the context is full.
    let c = generate_ids(
        &m,
        &prompt,
        &SamplingConfig::default(),
        Strategy::Greedy,
        60,
        |_, _| {},
    )
    .unwrap();
    assert_eq!(c.stopped_by, StopReason::Context);
    assert_eq!(c.tokens, a.tokens[..14]);
}

#[test]
fn sampling_is_seeded() {
    let (_, m, _) = model(3);
    let tok = char_tokenizer();
    let cfg = SamplingConfig {
        temperature: 0.9,
        top_k: 10,
        top_p: 0.95,
        seed: 5,
        ..cropping()
    };
    let prompt = ids(&tok, "abc");
    let a = generate_ids(&m, &prompt, &cfg, Strategy::Sample, 30, |_, _| {}).unwrap();
    let b = generate_ids(&m, &prompt, &cfg, Strategy::Sample, 30, |_, _| {}).unwrap();
    assert_eq!(a.tokens, b.tokens);
    let other = SamplingConfig { seed: 6, ..cfg };
    let c = generate_ids(&m, &prompt, &other, Strategy::Sample, 30, |_, _| {}).unwrap();
    assert_ne!(a.tokens, c.tokens);
}

#[test]
fn long_prompts_are_cropped_from_the_left() {
    let (_, m, _) = model(4);
    let tok = char_tokenizer();
    let long: String = "abcdefghijklmnopqrstuvwxyz".repeat(3);
    let tail: String = long.chars().skip(long.len() - 24).collect();
    let cfg = cropping();
    let a = generate_ids(&m, &ids(&tok, &long), &cfg, Strategy::Greedy, 5, |_, _| {}).unwrap();
    let b = generate_ids(&m, &ids(&tok, &tail), &cfg, Strategy::Greedy, 5, |_, _| {}).unwrap();
    assert_eq!(a.tokens, b.tokens);
    // Without the crop such a prompt is an error.
    let err = generate_ids(
        &m,
        &ids(&tok, &long),
        &SamplingConfig::default(),
        Strategy::Greedy,
        5,
        |_, _| {},
    );
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("longer than the model's context"));
}

#[test]
fn on_token_can_stop_generation() {
    let (_, m, _) = model(5);
    let tok = char_tokenizer();
    let prompt = ids(&tok, "ab");
    let free = generate_ids(&m, &prompt, &cropping(), Strategy::Greedy, 40, |_, _| {}).unwrap();
    let mut seen = 0;
    let g = generate_ids_until(&m, &prompt, &cropping(), Strategy::Greedy, 40, |_, _| {
        seen += 1;
        seen < 7
    })
    .unwrap();
    assert_eq!(g.tokens, free.tokens[..7]);
    assert_eq!(g.stopped_by, StopReason::Stop);
}

#[test]
fn export_round_trip_and_hf_biases() {
    let (cfg, _, p) = model(6);
    let d = tempfile::tempdir().unwrap();
    checkpoint::save_model(d.path(), &cfg, &p, None, None, true).unwrap();
    char_tokenizer()
        .save(&d.path().join("tokenizer.json"))
        .unwrap();
    let back = checkpoint::load_model(d.path()).unwrap();
    assert_eq!(back.cfg, cfg);
    assert_eq!(back.params, p);
    // A bias-free model is written with zero biases and reads back as a model with biases.
    let nb = GptConfig {
        bias: false,
        ..cfg.clone()
    };
    let pn = decodex::models::gpt::init_params(&nb, 1);
    let e = d.path().join("nobias");
    checkpoint::save_model(&e, &nb, &pn, None, None, true).unwrap();
    char_tokenizer().save(&e.join("tokenizer.json")).unwrap();
    let back = checkpoint::load_model(&e).unwrap();
    assert!(back.cfg.bias);
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(e.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg_json["model_type"], "gpt2");
    assert_eq!(cfg_json["n_positions"], 24);
}
