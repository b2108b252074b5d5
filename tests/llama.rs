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

/// Prompts whose full first-step logits the fixture holds (the rest: the top 64).
const FULL_LOGITS: usize = 2;

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
        let (top_ids, top_logits) = (ids(&c["top_ids"]), c["top_logits"].as_array().unwrap());
        assert_eq!((top_ids.len(), top_logits.len()), (64, 64), "prompt {k}");
        for (id, want) in top_ids.iter().zip(top_logits) {
            let d = (logits[*id as usize] - want.as_f64().unwrap() as f32).abs();
            worst = common::nan_max(worst, d);
        }
        // scripts/gen_smollm2_fixture.py writes every logit of the first two prompts; a missing
        // tensor fails rather than shrinking the check.
        if k < FULL_LOGITS {
            let key = format!("logits_{k}");
            let t = full
                .get(&key)
                .unwrap_or_else(|| panic!("fixture lacks {key}"));
            let want = t.to_vec1::<f32>().unwrap();
            assert_eq!(want.len(), logits.len(), "{key}: vocabulary size");
            let d = want
                .iter()
                .zip(&logits)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, common::nan_max);
            println!("prompt {k}: all {} logits within {d:.2e}", want.len());
            worst = common::nan_max(worst, d);
        }
    }
    assert_eq!(full.len(), FULL_LOGITS, "fixture's full-logit tensors");
    println!("worst first-step logit difference {worst:.2e}");
    // README: first-step logits within 4.2e-5 of transformers'.
    assert!(worst < 1e-4, "logits differ by {worst}");
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

/// HF pads finished beams with the pad id (= EOS here) up to the longest: drop what follows the
/// first EOS.
fn trim_after_eos(mut ids: Vec<u32>, eos: u32) -> Vec<u32> {
    if let Some(p) = ids.iter().position(|&t| t == eos) {
        ids.truncate(p + 1);
    }
    ids
}

#[test]
fn beam_search_matches_transformers() {
    use decodex::decode::{beam_search, BeamConfig, EarlyStopping};
    let m = model_f32();
    let fx = fixture("smollm2_generate.json");
    let eos = fx["eos_token_id"].as_u64().unwrap() as u32;
    let cfg = BeamConfig {
        num_beams: 4,
        num_return_sequences: 2,
        length_penalty: 1.0,
        early_stopping: EarlyStopping::True,
        max_new_tokens: 32,
        eos_ids: vec![eos],
        ..BeamConfig::default()
    };
    let mut worst = 0f32;
    for c in fx["cases"].as_array().unwrap() {
        let got = beam_search(m, &ids(&c["input_ids"]), &cfg).unwrap();
        let want: Vec<Vec<u32>> = c["beam_sequences"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| trim_after_eos(ids(s), eos))
            .collect();
        let scores: Vec<f32> = c["beam_scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got.len(), 2);
        for (k, h) in got.iter().enumerate() {
            assert_eq!(h.tokens, want[k], "prompt {:?} beam {k}", c["prompt"]);
            worst = common::nan_max(worst, (h.score - scores[k]).abs());
        }
    }
    println!("beam scores within {worst:.2e} of transformers");
    // README: beam scores within 1.4e-6 of transformers'.
    assert!(worst < 1e-5, "beam scores differ by {worst}");
}

/// The quantized model (Q4_1) computes as llama.cpp's CPU backend does, bit for bit
/// (`kernels::ggml`, `kernels::quant`), so its greedy continuations are llama.cpp's (top-k 1, default f16
/// KV cache; `scripts/compare_llamacpp.py greedy`): all 32 tokens, or up to EOS, of every prompt.
/// The target is the first 16 tokens on 8 of 10.
#[test]
fn quantized_greedy_agrees_with_llama_cpp() {
    // The fixtures are llama.cpp's without flash attention (llama-cpp-python's default), which
    // `flash_attn = false` reproduces bit for bit: all 10 continuations.
    assert_eq!(greedy_agreement(false), 10);
    // With flash attention (decodex's default, as llama.cpp's), the arithmetic is llama.cpp's
    // `-fa on` (`kernels::kv_attention`'s transcription test), whose f16 accumulator moves the
    // logits by ~1e-3: llama.cpp's own `-fa on` run departs from these fixtures too (on
    // "Le chat est sur la" at the first token, as decodex does). Shown, not asserted.
    println!("with flash attention: {} of 10", greedy_agreement(true));
}

/// How many of the 10 greedy continuations equal llama.cpp's fixture.
fn greedy_agreement(flash_attn: bool) -> usize {
    let mut m = Llama::from_gguf(&common::smollm2(), false, &Device::Cpu).unwrap();
    m.flash_attn = flash_attn;
    let fx = fixture("smollm2_generate.json");
    let cpp = fixture("smollm2_llamacpp.json");
    let eos = fx["eos_token_id"].as_u64().unwrap() as u32;
    let mut agree = 0;
    for (c, want) in fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .zip(cpp["cases"].as_array().unwrap())
    {
        let want = ids(&want["greedy"]);
        let mut cache = Decoder::new_cache(&m, 1).unwrap();
        let mut feed = ids(&c["input_ids"]);
        let mut got = Vec::new();
        while got.len() < 32 {
            let next = argmax(&m.step(&feed, 1, &mut cache).unwrap());
            got.push(next);
            if next == eos {
                break;
            }
            feed = vec![next];
        }
        let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        println!(
            "{:?}: first {same} of {} tokens agree",
            c["prompt"].as_str().unwrap(),
            want.len()
        );
        if got == want {
            agree += 1;
        }
    }
    println!("{agree} of 10 continuations identical to llama.cpp's");
    agree
}

/// Along llama.cpp's greedy continuations (295 steps over the 10 prompts), the quantized
/// model's logits equal llama.cpp's bit for bit at llama.cpp's 8 largest
/// (`scripts/compare_llamacpp.py logits`): same ids in the same order, same f32 values.
#[test]
fn quantized_logits_equal_llama_cpp_bit_for_bit() {
    let mut m = Llama::from_gguf(&common::smollm2(), false, &Device::Cpu).unwrap();
    // llama.cpp's fixtures were made without flash attention.
    m.flash_attn = false;
    let fx = fixture("smollm2_generate.json");
    let cpp = fixture("smollm2_llamacpp.json");
    let top = fixture("smollm2_llamacpp_logits.json");
    let cases = fx["cases"].as_array().unwrap().iter();
    let (mut steps, mut cells) = (0, 0);
    for ((c, greedy), want) in cases
        .zip(cpp["cases"].as_array().unwrap())
        .zip(top["cases"].as_array().unwrap())
    {
        let mut cache = Decoder::new_cache(&m, 1).unwrap();
        let mut feed = ids(&c["input_ids"]);
        let greedy = ids(&greedy["greedy"]);
        let (want_ids, want_logits) = (
            want["ids"].as_array().unwrap(),
            want["logits"].as_array().unwrap(),
        );
        for (s, (wi, wl)) in want_ids.iter().zip(want_logits).enumerate() {
            let logits = m.step(&feed, 1, &mut cache).unwrap();
            let mut order: Vec<u32> = (0..logits.len() as u32).collect();
            order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
            let wi = ids(wi);
            assert_eq!(&order[..wi.len()], &wi[..], "{:?} step {s}", c["prompt"]);
            for (&i, w) in wi.iter().zip(wl.as_array().unwrap()) {
                let w = w.as_f64().unwrap() as f32;
                assert_eq!(
                    logits[i as usize].to_bits(),
                    w.to_bits(),
                    "{:?} step {s} id {i}",
                    c["prompt"]
                );
                cells += 1;
            }
            steps += 1;
            feed = vec![greedy[s]];
        }
    }
    println!("{steps} steps, {cells} logits bit-identical to llama.cpp's");
    assert_eq!(steps, 295);
}

/// A tiny random Llama saved by transformers' `save_pretrained` (rotate-half RoPE, grouped-query
/// attention, untied head; `scripts/gen_llama_tiny_fixture.py`): the safetensors loader, the
/// candle reference forward and the decoding path all give transformers' logits and greedy
/// continuation.
#[test]
fn hf_directory_matches_transformers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_tiny");
    let m = Llama::from_hf_dir(&dir, &Device::Cpu).unwrap();
    let fx = fixture("llama_tiny.json");
    let input = ids(&fx["input_ids"]);
    let want: Vec<f32> = fx["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let x = candle_core::Tensor::from_slice(&input, (1, input.len()), &Device::Cpu).unwrap();
    let reference = m.forward(&x, &mut m.candle_cache()).unwrap();
    let reference = reference
        .get(0)
        .unwrap()
        .get(input.len() - 1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut cache = Decoder::new_cache(&m, 1).unwrap();
    let fast = m.step(&input, 1, &mut cache).unwrap();
    for got in [&reference, &fast] {
        assert_eq!(got.len(), want.len(), "vocabulary");
        let d = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, common::nan_max);
        assert!(d < 1e-4, "logits differ by {d}");
    }
    let mut out = Vec::new();
    let mut logits = fast;
    for _ in 0..12 {
        let next = argmax(&logits);
        out.push(next);
        logits = m.step(&[next], 1, &mut cache).unwrap();
    }
    assert_eq!(out, ids(&fx["greedy"]));
}

/// Prompts of different lengths decoded as one left-padded batch give each prompt's own
/// greedy continuation (padding is masked and positions start at each row's first token).
#[test]
fn batched_prompts_match_one_at_a_time() {
    use decodex::decode::{generate_batch, generate_ids, SamplingConfig, Strategy};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama_tiny");
    let m = Llama::from_hf_dir(&dir, &Device::Cpu).unwrap();
    let prompts = vec![
        vec![5, 17, 33, 8, 61, 42, 7],
        vec![9, 3],
        vec![70, 71, 72, 73],
    ];
    let cfg = SamplingConfig::default();
    let batch = generate_batch(&m, &prompts, &cfg, Strategy::Greedy, 10, 0, |_, _, _| {}).unwrap();
    assert_eq!(batch.len(), prompts.len());
    for (p, b) in prompts.iter().zip(&batch) {
        let one = generate_ids(&m, p, &cfg, Strategy::Greedy, 10, |_, _| {}).unwrap();
        assert_eq!(b.tokens, one.tokens, "prompt {p:?}");
        assert_eq!(b.logprobs.len(), one.logprobs.len(), "prompt {p:?}");
        for (x, y) in b.logprobs.iter().zip(&one.logprobs) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }
}

/// The fine-tuning forward on SmolLM2 (weights through `Llama::hf_tensors`, which un-permutes
/// the GGUF file's q and k rows, and rotary over halves) computes the loss the GGUF model's own
/// forward gives (rotary over adjacent pairs), on two packed sequences.
#[test]
fn finetune_forward_matches_the_gguf_model() {
    use decodex::models::llama::fast::{FtModel, Method, Packed};
    let (pre, base) = decodex::train::finetune::run::load_base(&common::smollm2()).unwrap();
    let cfg = match &pre.network {
        decodex::models::pretrained::Network::Llama(l) => l.cfg.clone(),
        _ => unreachable!(),
    };
    let ft = FtModel::new(cfg, base, Method::Full).unwrap();
    let tok = &pre.tokenizer;
    let seqs = [
        tok.encode("The capital of France is Paris, and the capital of Italy is Rome.")
            .unwrap(),
        tok.encode("def add(a, b):\n    return a + b").unwrap(),
    ];
    let mut packed = Packed::default();
    let mut want = 0f64;
    let m = model_f32();
    for s in &seqs {
        packed.push(s, 3);
        let x = candle_core::Tensor::from_slice(s, (1, s.len()), &Device::Cpu).unwrap();
        let logits = m
            .forward(&x, &mut m.candle_cache())
            .unwrap()
            .get(0)
            .unwrap();
        let lsm = candle_nn::ops::log_softmax(&logits, 1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for i in 3..s.len() {
            want -= lsm[i - 1][s[i] as usize] as f64;
        }
    }
    let (got, _) = ft.forward(&packed, None, false);
    assert!((got - want).abs() < 1e-4 * want, "loss {got} vs {want}");
}

/// Continuous batching: sequences at different positions in one pass (a prompt joining, two
/// decoding) give each the same logits, bit for bit, as stepping it alone; for the quantized
/// model, whose products do not depend on the rows beside them.
#[test]
fn step_many_equals_each_sequence_alone() {
    let model = Llama::from_gguf(&common::smollm2(), false, &Device::Cpu).unwrap();
    let tok = Tokenizer::from_gguf(&common::smollm2()).unwrap();
    let prompts: Vec<Vec<u32>> = [
        "The quick brown fox",
        "Once upon a time, in a land far",
        "Hi",
    ]
    .iter()
    .map(|p| tok.encode(p).unwrap())
    .collect();
    // Alone: each prompt, then two more tokens.
    let mut alone = Vec::new();
    for p in &prompts {
        let mut c = model.new_cache(1).unwrap();
        let mut rows = vec![model.step(p, 1, &mut c).unwrap()];
        for t in [11u32, 42] {
            rows.push(model.step(&[t], 1, &mut c).unwrap());
        }
        alone.push(rows);
    }
    // Together: sequence 0 starts first; 1 and 2 join while 0 decodes, then all decode.
    let mut caches: Vec<_> = (0..3).map(|_| model.new_cache(1).unwrap()).collect();
    let (c0, rest) = caches.split_first_mut().unwrap();
    let (c1, c2) = rest.split_first_mut().unwrap();
    let c2 = &mut c2[0];
    let first = model.step_many(&mut [(&prompts[0][..], &mut *c0)]).unwrap();
    assert_eq!(first[0], alone[0][0]);
    let joined = model
        .step_many(&mut [
            (&[11u32][..], &mut *c0),
            (&prompts[1][..], &mut *c1),
            (&prompts[2][..], &mut *c2),
        ])
        .unwrap();
    assert_eq!(joined[0], alone[0][1]);
    assert_eq!(joined[1], alone[1][0]);
    assert_eq!(joined[2], alone[2][0]);
    let last = model
        .step_many(&mut [
            (&[42u32][..], &mut *c0),
            (&[11u32][..], &mut *c1),
            (&[11u32][..], &mut *c2),
        ])
        .unwrap();
    assert_eq!(last[0], alone[0][2]);
    assert_eq!(last[1], alone[1][1]);
    assert_eq!(last[2], alone[2][1]);
}
