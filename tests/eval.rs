//! Perplexity: windows cover every token once, one window equals the model's own loss, and any
//! decoder scores the same through the step-by-step default of `Decoder::sum_nll`.

use std::path::Path;

use candle_core::{Device, Tensor};
use decodex::models::gpt::GptConfig;
use decodex::models::{Cache, Decoder, Gpt};
use decodex::tokenizer::Tokenizer;

#[test]
fn perplexity_windows_and_values() {
    let cfg = GptConfig {
        vocab_size: 26,
        block_size: 8,
        n_layer: 1,
        n_head: 2,
        n_embd: 16,
        dropout: 0.0,
        bias: true,
        activation: decodex::models::gpt::Activation::GeluNew,
        layer_norm_epsilon: 1e-5,
    };
    let dev = Device::Cpu;
    let p = decodex::models::gpt::init_params(&cfg, 3)
        .iter()
        .map(|v| v * 20.0)
        .collect::<Vec<_>>();
    let m = Gpt::from_tensors(
        decodex::models::gpt::flat_to_tensors(&cfg, &p, &dev).unwrap(),
        &cfg,
        &dev,
    )
    .unwrap();
    let tok = Tokenizer::train_char("abcdefghijklmnopqrstuvwxyz").unwrap();
    // Exactly one window of 9 tokens: equals the loss of x = first 8, y = last 8.
    let text = "thequickb";
    let r = decodex::eval::perplexity(&m, &tok, text, Path::new("t"), 4).unwrap();
    let ids = tok.encode(text).unwrap();
    let x = Tensor::from_slice(&ids[..8], (1, 8), &dev).unwrap();
    let y = Tensor::from_slice(&ids[1..], (1, 8), &dev).unwrap();
    let direct = m.loss(&x, &y, None).unwrap().to_scalar::<f32>().unwrap() as f64;
    assert_eq!(r.predicted, 8);
    assert!((r.loss - direct).abs() < 1e-6, "{} vs {direct}", r.loss);
    assert!((r.perplexity - direct.exp()).abs() < 1e-6 * direct.exp());
    assert!((r.bits_per_byte - direct * 8.0 / std::f64::consts::LN_2 / 9.0).abs() < 1e-9);
    // 30 tokens: every token but the first is predicted exactly once, over windows of stride 8.
    let text = "thequickbrownfoxjumpsoverthela";
    let r = decodex::eval::perplexity(&m, &tok, text, Path::new("t"), 2).unwrap();
    assert_eq!(r.tokens, 30);
    assert_eq!(r.predicted, 29);
    // The same model scored position by position through `step` (what a Llama gets).
    let stepwise = decodex::eval::perplexity(&Stepwise(&m), &tok, text, Path::new("t"), 2).unwrap();
    assert_eq!(stepwise.predicted, 29);
    assert!(
        (stepwise.loss - r.loss).abs() < 1e-5,
        "{} vs {}",
        stepwise.loss,
        r.loss
    );
}

/// A GPT that scores through the trait's default `sum_nll` (one `step` per position).
struct Stepwise<'a>(&'a Gpt);

impl Decoder for Stepwise<'_> {
    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
    fn context_len(&self) -> usize {
        self.0.context_len()
    }
    fn new_cache(&self, batch: usize) -> decodex::Result<Cache> {
        self.0.new_cache(batch)
    }
    fn step(&self, tokens: &[u32], batch: usize, cache: &mut Cache) -> decodex::Result<Vec<f32>> {
        self.0.step(tokens, batch, cache)
    }
    fn select_rows(&self, cache: &mut Cache, rows: &[usize]) -> decodex::Result<()> {
        self.0.select_rows(cache, rows)
    }
}
