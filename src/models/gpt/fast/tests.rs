use super::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn tiny(bias: bool, activation: &str) -> GptConfig {
    GptConfig {
        vocab_size: 11,
        block_size: 8,
        n_layer: 2,
        n_head: 2,
        n_embd: 16,
        dropout: 0.0,
        bias,
        activation: serde_json::from_value(serde_json::json!(activation)).unwrap(),
        layer_norm_epsilon: 1e-5,
    }
}

/// Random parameters large enough that attention, GELU and LayerNorm are far from linear:
/// weights and biases ~ U(−0.3, 0.3), embeddings ~ U(−0.5, 0.5), LayerNorm gains 1 ± 0.3.
fn randomize(m: &mut FastGpt, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for e in m.params.entries.clone() {
        let (center, half) = match e.name.as_str() {
            n if n.contains("wte") || n.contains("wpe") => (0.0, 0.5),
            n if n.contains("ln_") && n.ends_with("weight") => (1.0, 0.3),
            _ => (0.0, 0.3),
        };
        for p in &mut m.params.data[e.offset..e.offset + e.len] {
            *p = center + rng.gen_range(-half..half);
        }
    }
}

fn batch(v: usize, n: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ids = || {
        (0..n)
            .map(|_| rng.gen_range(0..v as u32))
            .collect::<Vec<_>>()
    };
    (ids(), ids())
}

fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// One forward and backward of a 2-layer, 64-wide model at `precision`: (loss, grads).
fn step_at(precision: Precision) -> (f32, Vec<f32>, FastGpt) {
    let cfg = GptConfig {
        n_embd: 64,
        n_head: 4,
        block_size: 32,
        ..tiny(true, "gelu_new")
    };
    let (b, t) = (3, 32);
    let mut m = FastGpt::new(cfg.clone(), b, t).unwrap();
    m.set_precision(precision);
    randomize(&mut m, 11);
    let (x, y) = batch(cfg.vocab_size, b * t, 5);
    let loss = m.forward(&x, &y, b, t);
    m.backward(1.0);
    (loss, m.grads.clone(), m)
}

/// bf16 matmuls (f32 sums) stay within bf16 rounding of the f32 step: the loss to 1e-2
/// relative, every gradient tensor to 5e-2 in relative L2 norm. Bitwise reproducible.
#[test]
fn bf16_step_tracks_f32_step() {
    let (loss32, g32, m) = step_at(Precision::F32);
    let (loss16, g16, _) = step_at(Precision::Bf16);
    let rel = ((loss16 - loss32) / loss32).abs();
    println!("loss f32 {loss32} bf16 {loss16} (rel {rel:.1e})");
    assert!(rel < 1e-2, "loss f32 {loss32} vs bf16 {loss16}");
    assert_ne!(loss16, loss32, "the bf16 path did not run");
    for e in &m.params.entries {
        let (name, r) = (&e.name, e.offset..e.offset + e.len);
        let (a, b) = (&g32[r.clone()], &g16[r]);
        let rel = crate::testutil::rel_l2(a, b);
        println!("TENSOR OK {name} bf16 vs f32 rel L2 {rel:.1e}");
        assert!(
            rel < 5e-2,
            "{name}: bf16 gradient off by {rel:e} (relative L2)"
        );
    }
    let (again, g_again, _) = step_at(Precision::Bf16);
    assert_eq!(again.to_bits(), loss16.to_bits());
    assert!(g_again
        .iter()
        .zip(&g16)
        .all(|(x, y)| x.to_bits() == y.to_bits()));
}

#[test]
fn precision_reads_and_names_config_spellings() {
    for p in [Precision::F32, Precision::Bf16] {
        let back: Precision = serde_json::from_value(serde_json::json!(p.name())).unwrap();
        assert_eq!(back, p);
    }
    assert!(serde_json::from_value::<Precision>(serde_json::json!("fp16")).is_err());
}

/// Loss and logits against the f64 reference, then, for a sample of entries of every named
/// tensor, the analytic gradient against central differences of the f64 reference. Prints
/// llm.c-style `TENSOR OK` lines. Before the checked (b, t) batch, a full-capacity batch
/// runs so that stale buffer contents would show.
fn check_against_reference(cfg: &GptConfig, b: usize, t: usize, samples: usize) {
    let (cap_b, cap_t) = (b + 1, cfg.block_size);
    let mut m = FastGpt::new(cfg.clone(), cap_b, cap_t).unwrap();
    randomize(&mut m, 7);
    let (x, y) = batch(cfg.vocab_size, cap_b * cap_t, 1);
    m.forward(&x, &y, cap_b, cap_t);
    m.backward(1.0);
    m.zero_grad();

    let (x, y) = batch(cfg.vocab_size, b * t, 2);
    let loss = m.forward(&x, &y, b, t);
    m.backward(1.0);
    let params = to_f64(&m.params.data);
    let (ref_loss, ref_logits) = reference::forward(cfg, &params, &x, &y, b, t);
    assert!(
        (loss as f64 - ref_loss).abs() < 1e-5 * ref_loss.abs(),
        "loss {loss} vs f64 {ref_loss}"
    );
    let logit_diff = m
        .logits()
        .iter()
        .zip(&ref_logits)
        .map(|(&a, &r)| (a as f64 - r).abs())
        .fold(0.0, f64::max);
    assert_eq!(m.logits().len(), ref_logits.len());
    println!("TENSOR OK logits maxdiff {logit_diff:.2e}; loss {loss} vs f64 {ref_loss}");
    assert!(
        logit_diff < 1e-4,
        "logits differ from the f64 reference by {logit_diff}"
    );

    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let h = 1e-5;
    for e in &m.params.entries {
        let (name, off, len) = (&e.name, e.offset, e.len);
        let mut idx: Vec<usize> = (0..samples).map(|_| rng.gen_range(0..len)).collect();
        idx.extend([0, len - 1]);
        let (mut max_err, mut max_g) = (0f64, 0f64);
        for i in idx {
            let mut p = params.clone();
            p[off + i] += h;
            let up = reference::forward(cfg, &p, &x, &y, b, t).0;
            p[off + i] -= 2.0 * h;
            let down = reference::forward(cfg, &p, &x, &y, b, t).0;
            let fd = (up - down) / (2.0 * h);
            let g = m.grads[off + i] as f64;
            let err = (g - fd).abs();
            assert!(
                err <= 1e-3 * fd.abs() + 1e-6,
                "{name}[{i}]: analytic {g:e} vs central difference {fd:e} (cfg {cfg:?})"
            );
            max_err = max_err.max(err);
            max_g = max_g.max(fd.abs());
        }
        println!("TENSOR OK {name} maxdiff {max_err:.2e} (max |grad| {max_g:.2e})");
    }
}

#[test]
fn gradients_match_f64_central_differences() {
    for bias in [true, false] {
        for act in ["gelu_new", "gelu"] {
            check_against_reference(&tiny(bias, act), 2, 5, 8);
        }
    }
    // Widths that are no multiple of the 16-lane loops: C = 12, heads of size 4, V = 7.
    let odd = GptConfig {
        vocab_size: 7,
        n_embd: 12,
        n_head: 3,
        ..tiny(true, "gelu")
    };
    check_against_reference(&odd, 3, 7, 6);
}

/// The parallel kernels split work by rows, columns and (batch, head); none of that may
/// change the result beyond rounding.
#[test]
fn results_do_not_depend_on_thread_count() {
    let cfg = GptConfig {
        n_head: 4,
        block_size: 70,
        ..tiny(true, "gelu_new")
    };
    let (b, t) = (3, 70);
    let (x, y) = batch(cfg.vocab_size, b * t, 4);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut m = FastGpt::new(cfg.clone(), b, t).unwrap();
            randomize(&mut m, 8);
            let loss = m.forward(&x, &y, b, t);
            m.backward(1.0);
            (loss, m.logits().to_vec(), m.grads.clone())
        })
    };
    let (loss_1, logits_1, grads_1) = run(1);
    for threads in [2, 3] {
        let (loss, logits, grads) = run(threads);
        assert!(
            (loss - loss_1).abs() <= 1e-6 * loss_1.abs(),
            "{threads} threads: loss"
        );
        assert!(
            max_abs_diff(&logits, &logits_1) <= 1e-5,
            "{threads} threads: logits"
        );
        let scale = grads_1.iter().fold(0f32, |a, g| a.max(g.abs()));
        let diff = max_abs_diff(&grads, &grads_1);
        assert!(
            diff <= 1e-5 * scale,
            "{threads} threads: gradients differ by {diff}"
        );
    }
}

/// T = 2·ATT_TILE + 2 = 130 spans three query tiles and, for the last rows, three key tiles
/// (64 + 64 + 2): the online softmax rescales the output twice and the backward adds dK and
/// dV over several query tiles. Heads of size 8.
#[test]
fn gradients_match_across_attention_blocks() {
    let t = 2 * kernels::ATT_TILE + 2;
    let cfg = GptConfig {
        block_size: t,
        n_layer: 1,
        ..tiny(true, "gelu_new")
    };
    check_against_reference(&cfg, 1, t, 3);
}

/// T = ATT_TILE + 37 = 101 ends in a partial tile on both the query and the key side, with
/// two sequences and four heads (of size 4) per call, so several (b, h) tasks run their tiles.
#[test]
fn gradients_match_with_a_partial_last_attention_tile() {
    let t = kernels::ATT_TILE + 37;
    let cfg = GptConfig {
        block_size: t,
        n_layer: 1,
        n_head: 4,
        ..tiny(false, "gelu")
    };
    check_against_reference(&cfg, 2, t, 3);
}

#[test]
fn logits_match_f64_reference() {
    for bias in [true, false] {
        for act in ["gelu_new", "gelu"] {
            let cfg = GptConfig {
                n_head: 4,
                ..tiny(bias, act)
            };
            let (b, t) = (3, 8);
            let mut m = FastGpt::new(cfg.clone(), b, t).unwrap();
            randomize(&mut m, 11);
            let (x, y) = batch(cfg.vocab_size, b * t, 12);
            m.forward(&x, &y, b, t);
            let (_, want) = reference::forward(&cfg, &to_f64(&m.params.data), &x, &y, b, t);
            let diff = m
                .logits()
                .iter()
                .zip(&want)
                .map(|(&a, &r)| (a as f64 - r).abs())
                .fold(0.0, f64::max);
            assert!(diff < 1e-4, "bias {bias}, {act}: logits differ by {diff}");
        }
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, crate::testutil::nan_max)
}

#[test]
fn backward_accumulates_scaled_gradients() {
    let cfg = tiny(true, "gelu_new");
    let (b, t) = (2, 8);
    let mut m = FastGpt::new(cfg.clone(), b, t).unwrap();
    randomize(&mut m, 5);
    let (x1, y1) = batch(cfg.vocab_size, b * t, 6);
    let (x2, y2) = batch(cfg.vocab_size, b * t, 7);

    m.forward(&x1, &y1, b, t);
    m.backward(1.0);
    let once = m.grads.clone();
    m.zero_grad();
    m.backward(0.5);
    m.backward(0.5);
    let scale = once.iter().fold(0f32, |a, g| a.max(g.abs()));
    assert!(
        max_abs_diff(&once, &m.grads) <= 1e-6 * scale,
        "two half steps differ from one whole"
    );

    // Two micro-batches with scale 1/2 each give the average of their gradients.
    m.zero_grad();
    m.forward(&x2, &y2, b, t);
    m.backward(1.0);
    let second = m.grads.clone();
    m.zero_grad();
    m.forward(&x1, &y1, b, t);
    m.backward(0.5);
    m.forward(&x2, &y2, b, t);
    m.backward(0.5);
    let mean: Vec<f32> = once
        .iter()
        .zip(&second)
        .map(|(a, b)| 0.5 * (a + b))
        .collect();
    assert!(
        max_abs_diff(&mean, &m.grads) <= 1e-6 * scale,
        "accumulated micro-batches differ from their mean"
    );
    assert!(m.grads.iter().all(|g| g.is_finite()));
}

#[test]
fn every_tensor_receives_a_gradient() {
    let cfg = tiny(true, "gelu");
    let mut m = FastGpt::new(cfg.clone(), 2, 8).unwrap();
    randomize(&mut m, 9);
    let (x, y) = batch(cfg.vocab_size, 16, 10);
    m.forward(&x, &y, 2, 8);
    m.backward(1.0);
    for e in &m.params.entries {
        let (name, g) = (&e.name, m.grad(&e.name).unwrap());
        assert!(g.iter().any(|&v| v != 0.0), "{name} received no gradient");
    }
}

#[test]
fn named_parameters_follow_param_shapes() {
    let cfg = tiny(true, "gelu_new");
    let mut m = FastGpt::new(cfg.clone(), 1, 4).unwrap();
    let names: Vec<_> = m
        .params
        .entries
        .iter()
        .map(|e| (e.name.clone(), e.shape.clone()))
        .collect();
    assert_eq!(names, cfg.param_shapes());
    assert_eq!(m.params.data.len(), cfg.num_params());
    let w: Vec<f32> = (0..16 * 48).map(|i| i as f32).collect();
    m.set_param("transformer.h.1.attn.c_attn.weight", &w)
        .unwrap();
    assert_eq!(
        m.param("transformer.h.1.attn.c_attn.weight").unwrap(),
        &w[..]
    );
    assert!(m
        .set_param("transformer.h.1.attn.c_attn.weight", &w[1..])
        .is_err());
    assert!(m.set_param("lm_head.weight", &w).is_err());
    m.param_mut("transformer.ln_f.bias").unwrap()[3] = 2.0;
    assert_eq!(m.param("transformer.ln_f.bias").unwrap()[3], 2.0);
}

#[test]
fn new_rejects_dropout_and_oversized_buffers() {
    let err = FastGpt::new(
        GptConfig {
            dropout: 0.1,
            ..tiny(true, "gelu_new")
        },
        1,
        8,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("dropout"), "{err}");
    assert!(FastGpt::new(tiny(true, "gelu_new"), 1, 9).is_err());
    assert!(FastGpt::new(tiny(true, "gelu_new"), 0, 8).is_err());
}
