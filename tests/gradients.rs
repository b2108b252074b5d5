//! Gradient correctness, llm.c style: decodex's logits, loss and every parameter gradient
//! against a fixture written by PyTorch / Hugging Face `GPT2LMHeadModel`
//! (`scripts/gen_gpt_fixture.py`), for both training paths (candle autograd and the fast CPU
//! path); AdamW steps against PyTorch's losses; and a finite-difference check in f64.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use decodex::models::gpt::fast::FastGpt;
use decodex::models::gpt::GptConfig;
use decodex::models::Gpt;
use decodex::train::optim::{decay_ranges, AdamW};

struct Fixture {
    cfg: GptConfig,
    b: usize,
    t: usize,
    tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
}

fn load_fixture(stem: &str) -> Fixture {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{stem}.json"))).unwrap())
            .unwrap();
    let b = json["batch_size"].as_u64().unwrap() as usize;
    let t = json["seq_len"].as_u64().unwrap() as usize;
    let mut cfg_json = json.as_object().unwrap().clone();
    cfg_json.remove("batch_size");
    cfg_json.remove("seq_len");
    let cfg: GptConfig = serde_json::from_value(serde_json::Value::Object(cfg_json)).unwrap();
    let bytes = std::fs::read(dir.join(format!("{stem}.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let vals: Vec<f64> = match view.dtype() {
            safetensors::Dtype::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            safetensors::Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            other => panic!("unexpected dtype {other:?} for {name}"),
        };
        tensors.insert(name.to_string(), (view.shape().to_vec(), vals));
    }
    Fixture { cfg, b, t, tensors }
}

impl Fixture {
    fn get(&self, name: &str) -> &[f64] {
        &self
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture lacks {name}"))
            .1
    }
    fn ids(&self, name: &str) -> Vec<u32> {
        self.get(name).iter().map(|&v| v as u32).collect()
    }
    fn flat_params(&self) -> Vec<f32> {
        self.cfg
            .param_shapes()
            .iter()
            .flat_map(|(n, _)| self.get(n).iter().map(|&v| v as f32))
            .collect()
    }
}

/// max |a - b| / max |b|: the error relative to the tensor's scale. Prints one line per tensor.
fn check(label: &str, got: &[f32], want: &[f64], tol: f64) -> bool {
    assert_eq!(got.len(), want.len(), "{label}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-12);
    let diff = got.iter().zip(want).fold(0.0f64, |m, (&a, &b)| {
        common::nan_max(m, (a as f64 - b).abs())
    });
    let rel = diff / scale;
    let ok = rel <= tol;
    println!(
        "{} {label:<40} maxdiff {diff:.3e} rel {rel:.3e}",
        if ok { "TENSOR OK " } else { "TENSOR BAD" }
    );
    ok
}

/// What one training path computes on the fixture batch: logits, loss and named gradients.
struct Computed {
    logits: Vec<f32>,
    loss: f32,
    grads: Vec<(String, Vec<f32>)>,
}

fn candle_grads(fx: &Fixture) -> Computed {
    let dev = Device::Cpu;
    let params = fx.flat_params();
    let tensors = decodex::models::gpt::flat_to_tensors(&fx.cfg, &params, &dev).unwrap();
    let vars: HashMap<String, Var> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), Var::from_tensor(t).unwrap()))
        .collect();
    let model = Gpt::from_tensors(
        vars.iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect(),
        &fx.cfg,
        &dev,
    )
    .unwrap();
    let x = Tensor::from_vec(fx.ids("inputs"), (fx.b, fx.t), &dev).unwrap();
    let y = Tensor::from_vec(fx.ids("targets"), (fx.b, fx.t), &dev).unwrap();
    let logits = model.forward(&x, None, None).unwrap();
    let v = fx.cfg.vocab_size;
    let loss = decodex::nn::cross_entropy(
        &logits.reshape((fx.b * fx.t, v)).unwrap(),
        &y.flatten_all().unwrap(),
    )
    .unwrap();
    let grads = loss.backward().unwrap();
    let named = fx
        .cfg
        .param_shapes()
        .into_iter()
        .map(|(n, _)| {
            let g = grads
                .get(vars[&n].as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {n}"));
            (n, g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect();
    Computed {
        logits: logits.flatten_all().unwrap().to_vec1().unwrap(),
        loss: loss.to_scalar().unwrap(),
        grads: named,
    }
}

fn fast_grads(fx: &Fixture) -> Computed {
    let mut m = FastGpt::new(fx.cfg.clone(), fx.b, fx.t).unwrap();
    m.params.data.copy_from_slice(&fx.flat_params());
    m.zero_grad();
    let loss = m.forward(&fx.ids("inputs"), &fx.ids("targets"), fx.b, fx.t);
    let logits = m.logits()[..fx.b * fx.t * fx.cfg.vocab_size].to_vec();
    m.backward(1.0);
    let mut off = 0;
    let named = fx
        .cfg
        .param_shapes()
        .into_iter()
        .map(|(n, s)| {
            let len: usize = s.iter().product();
            let g = m.grads[off..off + len].to_vec();
            off += len;
            (n, g)
        })
        .collect();
    Computed {
        logits,
        loss,
        grads: named,
    }
}

fn parity(stem: &str, path: &str, f: fn(&Fixture) -> Computed) {
    let fx = load_fixture(stem);
    println!("--- {stem}: {path} path vs PyTorch");
    let Computed {
        logits,
        loss,
        grads,
    } = f(&fx);
    let mut ok = check("logits", &logits, fx.get("logits"), 1e-4);
    ok &= check("loss", &[loss], fx.get("loss"), 1e-4);
    for (name, g) in &grads {
        ok &= check(
            &format!("grad.{name}"),
            g,
            fx.get(&format!("grad.{name}")),
            1e-4,
        );
    }
    assert!(
        ok,
        "{stem}: {path} path differs from PyTorch beyond 1e-4 (see TENSOR BAD lines)"
    );
}

#[test]
fn candle_path_matches_pytorch_gelu_tanh() {
    parity("gpt2_tiny", "candle", candle_grads);
}

#[test]
fn candle_path_matches_pytorch_gelu_erf() {
    parity("gpt2_tiny_erf", "candle", candle_grads);
}

#[test]
fn fast_path_matches_pytorch_gelu_tanh() {
    parity("gpt2_tiny", "fast", fast_grads);
}

#[test]
fn fast_path_matches_pytorch_gelu_erf() {
    parity("gpt2_tiny_erf", "fast", fast_grads);
}

/// Three AdamW steps on the fixture batch reproduce PyTorch's losses
/// (lr 1e-3, betas 0.9/0.99, weight decay 0.1 on matrices only).
#[test]
fn adamw_steps_match_pytorch() {
    let fx = load_fixture("gpt2_tiny");
    let mut m = FastGpt::new(fx.cfg.clone(), fx.b, fx.t).unwrap();
    m.params.data.copy_from_slice(&fx.flat_params());
    let mut opt = AdamW::new(
        m.params.data.len(),
        0.9,
        0.99,
        1e-8,
        0.1,
        decay_ranges(&fx.cfg),
    );
    let (x, y) = (fx.ids("inputs"), fx.ids("targets"));
    let mut losses = Vec::new();
    for _ in 0..3 {
        m.zero_grad();
        losses.push(m.forward(&x, &y, fx.b, fx.t));
        m.backward(1.0);
        let FastGpt { params, grads, .. } = &mut m;
        opt.update(&mut params.data, grads, 1e-3);
    }
    assert!(check("adamw losses", &losses, fx.get("adamw_losses"), 1e-4));
}

/// Central differences in f64 agree with candle's autograd gradients for a sample of entries of
/// every parameter tensor of a 2-layer model.
#[test]
fn finite_differences_agree_in_f64() {
    let cfg = GptConfig {
        vocab_size: 13,
        block_size: 8,
        n_layer: 2,
        n_head: 2,
        n_embd: 8,
        dropout: 0.0,
        bias: true,
        activation: decodex::models::gpt::Activation::GeluNew,
        layer_norm_epsilon: 1e-5,
    };
    let dev = Device::Cpu;
    // Larger-than-default init so every path carries signal.
    let mut params = decodex::models::gpt::init_params(&cfg, 7);
    params
        .iter_mut()
        .enumerate()
        .for_each(|(i, p)| *p = *p * 10.0 + 0.01 * ((i % 7) as f32 - 3.0));
    let p64: Vec<f64> = params.iter().map(|&v| v as f64).collect();
    let (b, t) = (2, 6);
    let x: Vec<u32> = (0..b * t).map(|i| ((i * 5 + 3) % 13) as u32).collect();
    let y: Vec<u32> = (0..b * t).map(|i| ((i * 7 + 1) % 13) as u32).collect();
    let xt = Tensor::from_vec(x, (b, t), &dev).unwrap();
    let yt = Tensor::from_vec(y, (b, t), &dev).unwrap();
    type Graph = (HashMap<String, Var>, candle_core::backprop::GradStore);
    let loss_of = |flat: &[f64]| -> (f64, Graph) {
        let mut map = HashMap::new();
        let mut off = 0;
        for (n, s) in cfg.param_shapes() {
            let len: usize = s.iter().product();
            map.insert(
                n,
                Var::from_tensor(&Tensor::from_slice(&flat[off..off + len], s, &dev).unwrap())
                    .unwrap(),
            );
            off += len;
        }
        let model = Gpt::from_tensors(
            map.iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect(),
            &cfg,
            &dev,
        )
        .unwrap();
        let loss = model.loss(&xt, &yt, None).unwrap();
        assert_eq!(loss.dtype(), DType::F64);
        let val = loss.to_scalar::<f64>().unwrap();
        let grads = loss.backward().unwrap();
        (val, (map, grads))
    };
    let (_, (vars, grads)) = loss_of(&p64);
    let eps = 1e-6;
    let mut off = 0;
    let mut worst = 0.0f64;
    for (name, shape) in cfg.param_shapes() {
        let len: usize = shape.iter().product();
        let g = grads
            .get(vars[&name].as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let scale = g.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-8);
        let mut maxdiff = 0.0f64;
        for k in (0..len).step_by((len / 5).max(1)) {
            let mut plus = p64.clone();
            plus[off + k] += eps;
            let mut minus = p64.clone();
            minus[off + k] -= eps;
            let fd = (loss_of(&plus).0 - loss_of(&minus).0) / (2.0 * eps);
            maxdiff = common::nan_max(maxdiff, (fd - g[k]).abs());
        }
        let rel = maxdiff / scale;
        worst = common::nan_max(worst, rel);
        println!(
            "{} fd {name:<36} maxdiff {maxdiff:.3e} rel {rel:.3e}",
            if rel < 1e-6 {
                "TENSOR OK "
            } else {
                "TENSOR BAD"
            }
        );
        off += len;
    }
    assert!(
        worst < 1e-6,
        "finite differences disagree with autograd (worst relative error {worst:.3e})"
    );
}
