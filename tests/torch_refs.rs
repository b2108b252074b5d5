//! decodex against PyTorch, llm.c style (one line per tensor): rnn-seq2seq's GRU and LSTM cells
//! and the label-smoothed cross-entropy, from the fixtures that `scripts/gen_torch_refs.py`
//! writes under tests/fixtures/torch_refs/ (float64 references from float32 inputs).
//!
//! - rnn-seq2seq: the encoder is PyTorch's bidirectional `nn.GRU` / `nn.LSTM` over a packed batch,
//!   the decoder `nn.GRUCell` / `nn.LSTMCell`; for every cell × attention, the logits and the
//!   gradient of Σ logits·R (R fixed, random) for every parameter, on both training paths.
//! - Label-smoothed cross-entropy: `F.cross_entropy(label_smoothing=ε, ignore_index=-100)` for
//!   ε 0, 0.1, 0.3, with padding rows and with large logits: the value, the unsmoothed NLL and
//!   the gradient, for the fused op (training's) and the composed one.

mod common;

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use decodex::models::rnn_seq2seq::{AttentionKind, RnnConfig, RnnSeq2Seq};
use decodex::nn::loss::smoothed_cross_entropy;
use decodex::nn::loss::smoothed_loss;
use decodex::nn::params::Params;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

/// rnn-seq2seq logits: max |decodex − PyTorch| (abs; the logits are of order 1–3).
/// Measured 2.6e-7 (x86-64 AVX2).
const RNN_LOGITS_TOL: f64 = 2e-6;
/// rnn-seq2seq gradients: max |diff| / max |PyTorch| per tensor. Measured ≤ 9.1e-7.
const RNN_GRAD_TOL: f64 = 5e-6;
/// Luong's `attention.memory.bias` gradient, exactly zero (see `check_dead_bias`): max |decodex|.
/// Measured ≤ 3.4e-8.
const DEAD_BIAS_TOL: f64 = 1e-6;
/// Cross-entropy value and NLL: |diff| / max(1, |PyTorch|). Measured ≤ 9e-8 (fused), ≤ 1.1e-7
/// (composed).
const CE_VALUE_TOL: f64 = 1e-6;
/// Cross-entropy gradient: max |diff| / max |PyTorch| at most one float32 rounding of the
/// largest logit, ε_f32·max(1, max |x|). The softmax moves by p·δx when the logits move by δx,
/// so this is the error of the exact gradient at logits perturbed by one ulp, what a
/// backward-stable float32 kernel may make: 7.5e-7 for the ordinary cases (max |x| ≈ 6;
/// measured ≤ 2.3e-7), 9.6e-6 for logits up to 81 (measured 3.5e-6 fused, 4.4e-7 composed: the
/// fused backward rounds lse = max + ln Σ to one float32 before exp(x − lse)).
fn ce_grad_tol(logits: &Tensor) -> f64 {
    let max = flat::<f32>(logits)
        .iter()
        .fold(1f64, |m, &v| m.max(v.abs() as f64));
    f32::EPSILON as f64 * max
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/torch_refs")
}

fn json(name: &str) -> Value {
    let path = dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/gen_torch_refs.py)", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap();
    let gen = &v["generator"];
    for key in ["script", "python", "torch"] {
        assert!(gen[key].is_string(), "{name}: generator lacks {key}");
    }
    v
}

fn key<'a>(v: &'a Value, k: &str) -> &'a Value {
    v.get(k).unwrap_or_else(|| panic!("fixture lacks {k}"))
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

fn u32s(v: &Value) -> Vec<u32> {
    f64s(v).iter().map(|&x| x as u32).collect()
}

fn flat<T: candle_core::WithDType>(t: &Tensor) -> Vec<T> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Max |got − want| and the reference's max |·|; one llm.c-style line; whether the error is
/// within `tol` (relative to the scale when `relative`, absolute otherwise).
fn check(label: &str, got: &[f32], want: &[f64], tol: f64, relative: bool) -> bool {
    assert_eq!(got.len(), want.len(), "{label}: length");
    assert!(!want.is_empty(), "{label}: empty reference");
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{label}: the reference is all zeros");
    let diff = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (&a, &b)| common::nan_max(m, (a as f64 - b).abs()));
    let err = if relative { diff / scale } else { diff };
    let ok = err <= tol;
    println!(
        "{} {label:<44} max|diff| {diff:.2e} (max|ref| {scale:.2e}, {} {err:.2e})",
        if ok { "TENSOR OK " } else { "TENSOR BAD" },
        if relative { "rel" } else { "abs" },
    );
    ok
}

/// The model of one fixture case, from its tensors, with its parameters as `Var`s.
fn rnn_model(
    case: &Value,
    tensors: &HashMap<String, Tensor>,
    cfg: &RnnConfig,
) -> (RnnSeq2Seq, Params) {
    let name = key(case, "name").as_str().unwrap();
    let prefix = format!("{name}/param.");
    let params: HashMap<String, Tensor> = tensors
        .iter()
        .filter_map(|(k, t)| k.strip_prefix(&prefix).map(|n| (n.to_string(), t.clone())))
        .collect();
    let mut p = Params::load(params.clone(), &Device::Cpu, true);
    let m = RnnSeq2Seq::new(cfg, &mut p).unwrap();
    // Every fixture tensor is one of the model's parameters and every parameter is in the
    // fixture: a renamed or unused tensor fails here rather than loading as a no-op.
    let listed: BTreeSet<String> = key(case, "params")
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[0].as_str().unwrap().to_string())
        .collect();
    let used: BTreeSet<String> = p.names.iter().cloned().collect();
    let stored: BTreeSet<String> = params.keys().cloned().collect();
    assert_eq!(
        used, listed,
        "{name}: decodex's parameters vs the fixture's list"
    );
    assert_eq!(stored, listed, "{name}: the fixture's tensors vs its list");
    assert_eq!(p.vars.len(), listed.len(), "{name}: trainable parameters");
    (m, p)
}

/// One case on one training path: logits and every parameter gradient against PyTorch.
fn rnn_parity(
    case: &Value,
    tensors: &HashMap<String, Tensor>,
    path: &str,
    teacher_forcing: f64,
) -> bool {
    let name = key(case, "name").as_str().unwrap();
    let get = |k: &str| {
        tensors
            .get(&format!("{name}/{k}"))
            .unwrap_or_else(|| panic!("fixture lacks {name}/{k}"))
    };
    let mut cfg: RnnConfig = serde_json::from_value(key(case, "config").clone()).unwrap();
    cfg.teacher_forcing = teacher_forcing;
    let (m, p) = rnn_model(case, tensors, &cfg);
    let src: Vec<Vec<u32>> = key(case, "src")
        .as_array()
        .unwrap()
        .iter()
        .map(u32s)
        .collect();
    let tgt: Vec<Vec<u32>> = key(case, "tgt_in")
        .as_array()
        .unwrap()
        .iter()
        .map(u32s)
        .collect();
    let (b, t) = (tgt.len(), tgt[0].len());
    let tgt_in = Tensor::from_vec(tgt.concat(), (b, t), &Device::Cpu).unwrap();
    let rng = RefCell::new(ChaCha8Rng::seed_from_u64(0));
    let logits = m
        .forward(&src, &tgt_in, (teacher_forcing < 1.0).then_some(&rng))
        .unwrap();
    let want = get("logits");
    assert_eq!(logits.dims(), want.dims(), "{name}: logits shape");
    println!("--- {name}: {path} path vs PyTorch");
    let mut ok = check("logits", &flat(&logits), &flat(want), RNN_LOGITS_TOL, false);
    let loss = (&logits * get("probe")).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let luong = cfg.attention != AttentionKind::Bahdanau;
    for (n, var) in &p.vars {
        let g = flat(
            grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient for {n}")),
        );
        let want: Vec<f64> = flat(get(&format!("grad.{n}")));
        if luong && n == "attention.memory.bias" {
            ok &= check_dead_bias(&format!("grad.{n}"), &g, &want);
        } else {
            ok &= check(&format!("grad.{n}"), &g, &want, RNN_GRAD_TOL, true);
        }
    }
    ok
}

/// Luong's keys W_h h_j + b score as s_t·(W_h h_j) + s_t·b: the bias adds the same number to
/// every source position, which the softmax cancels, so its exact gradient is zero (PyTorch's
/// is ~1e-16). decodex's must be zero up to float32 noise.
fn check_dead_bias(label: &str, got: &[f32], want: &[f64]) -> bool {
    assert_eq!(got.len(), want.len(), "{label}: length");
    let reference = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    assert!(
        reference < 1e-12,
        "{label}: PyTorch's gradient is {reference:.2e}, no longer structurally zero"
    );
    let ours = got
        .iter()
        .fold(0f64, |m, v| common::nan_max(m, v.abs() as f64));
    let ok = ours <= DEAD_BIAS_TOL;
    println!(
        "{} {label:<44} max|decodex| {ours:.2e} (exactly 0 in exact arithmetic; PyTorch {reference:.2e})",
        if ok { "TENSOR OK " } else { "TENSOR BAD" },
    );
    ok
}

fn rnn_cases() -> (Vec<Value>, HashMap<String, Tensor>) {
    let meta = json("rnn_seq2seq.json");
    let cases = key(&meta, "cases").as_array().unwrap().clone();
    // Both cells with all three attentions.
    let kinds: BTreeSet<(String, String)> = cases
        .iter()
        .map(|c| {
            let cfg = key(c, "config");
            (cfg["cell"].to_string(), cfg["attention"].to_string())
        })
        .collect();
    assert_eq!(kinds.len(), 6, "fixture cases: {kinds:?}");
    let tensors =
        candle_core::safetensors::load(dir().join("rnn_seq2seq.safetensors"), &Device::Cpu)
            .unwrap();
    (cases, tensors)
}

/// The batched decoder path (every input known: evaluation, and training with teacher forcing
/// 1) gives PyTorch's logits and gradients for the GRU and the LSTM under every attention.
#[test]
fn rnn_seq2seq_matches_pytorch_cells() {
    let (cases, tensors) = rnn_cases();
    let mut ok = true;
    for case in &cases {
        ok &= rnn_parity(case, &tensors, "batched", 1.0);
    }
    assert!(
        ok,
        "rnn-seq2seq differs from PyTorch (see TENSOR BAD lines)"
    );
}

/// The per-step decoder path (teacher forcing below 1, here so close to 1 that every draw feeds
/// the reference) gives the same logits and gradients.
#[test]
fn rnn_seq2seq_per_step_path_matches_pytorch_cells() {
    let (cases, tensors) = rnn_cases();
    let mut ok = true;
    for case in &cases {
        ok &= rnn_parity(case, &tensors, "per-step", 1.0 - 1e-9);
    }
    assert!(
        ok,
        "rnn-seq2seq's per-step path differs from PyTorch (see TENSOR BAD lines)"
    );
}

/// One cross-entropy case: logits `Var`, targets, weights, ε, and PyTorch's loss, NLL, gradient.
struct CeCase {
    name: String,
    x: Var,
    targets: Vec<u32>,
    weights: Vec<f32>,
    eps: f64,
    loss: f64,
    nll: f64,
    grad: Vec<f64>,
}

fn ce_cases() -> Vec<CeCase> {
    let meta = json("smoothed_ce.json");
    let cases: Vec<CeCase> = key(&meta, "cases")
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let (n, v) = (
                key(c, "n").as_u64().unwrap() as usize,
                key(c, "v").as_u64().unwrap() as usize,
            );
            let logits: Vec<f32> = f64s(key(c, "logits")).iter().map(|&x| x as f32).collect();
            let grad = f64s(key(c, "grad"));
            assert_eq!((logits.len(), grad.len()), (n * v, n * v));
            CeCase {
                name: key(c, "name").as_str().unwrap().to_string(),
                x: Var::from_vec(logits, (n, v), &Device::Cpu).unwrap(),
                targets: u32s(key(c, "targets")),
                weights: f64s(key(c, "weights")).iter().map(|&w| w as f32).collect(),
                eps: key(c, "eps").as_f64().unwrap(),
                loss: key(c, "loss").as_f64().unwrap(),
                nll: key(c, "nll").as_f64().unwrap(),
                grad,
            }
        })
        .collect();
    // ε 0, 0.1 and 0.3, and padding rows in some case.
    let eps: BTreeSet<String> = cases.iter().map(|c| c.eps.to_string()).collect();
    assert!(
        ["0", "0.1", "0.3"].iter().all(|e| eps.contains(*e)),
        "fixture ε: {eps:?}"
    );
    assert!(
        cases.iter().any(|c| c.weights.contains(&0.0)),
        "no padding case"
    );
    cases
}

fn scalar_check(label: &str, got: f64, want: f64) -> bool {
    let diff = (got - want).abs();
    let err = diff / want.abs().max(1.0);
    let ok = err <= CE_VALUE_TOL;
    println!(
        "{} {label:<44} {got:.7} vs {want:.7}: |diff| {diff:.2e}",
        if ok { "VALUE OK  " } else { "VALUE BAD " }
    );
    ok
}

/// The fused label-smoothed cross-entropy (training's loss) is PyTorch's `F.cross_entropy` with
/// `label_smoothing` and padding as `ignore_index`, mean over the real tokens: value, NLL and
/// gradient.
#[test]
fn fused_smoothed_cross_entropy_matches_pytorch() {
    let mut ok = true;
    for c in ce_cases() {
        let (loss, nll) =
            smoothed_cross_entropy(c.x.as_tensor(), &c.targets, &c.weights, c.eps).unwrap();
        ok &= check_ce_case(&c, &loss, nll);
    }
    assert!(ok, "the fused loss differs from PyTorch (see BAD lines)");
}

/// One case's loss (a scalar tensor), unsmoothed NLL and gradient with respect to the logits
/// against PyTorch's; prints a line each.
fn check_ce_case(c: &CeCase, loss: &Tensor, nll: f64) -> bool {
    let got = loss
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let mut ok = scalar_check(&format!("{} loss", c.name), got, c.loss);
    ok &= scalar_check(&format!("{} nll", c.name), nll, c.nll);
    let g = loss.backward().unwrap();
    let g = g.get(c.x.as_tensor()).expect("the loss has a gradient");
    ok &= check(
        &format!("{} grad", c.name),
        &flat(g),
        &c.grad,
        ce_grad_tol(c.x.as_tensor()),
        true,
    );
    ok
}

/// The composed version (transformer-seq2seq's `smoothed_loss`, candle autograd) agrees too.
#[test]
fn composed_smoothed_loss_matches_pytorch() {
    let mut ok = true;
    for c in ce_cases() {
        let dev = Device::Cpu;
        let t = Tensor::new(c.targets.as_slice(), &dev).unwrap();
        let w = Tensor::new(c.weights.as_slice(), &dev).unwrap();
        let (loss, nll) = smoothed_loss(c.x.as_tensor(), &t, &w, c.eps).unwrap();
        let nll = nll
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        ok &= check_ce_case(&c, &loss, nll);
    }
    assert!(ok, "the composed loss differs from PyTorch (see BAD lines)");
}
