//! A plain f64 forward of GPT-2, written from the model's definition with scalar loops and
//! parameters looked up by their Hugging Face names, independent of the fast kernels. Tests
//! check the fast path's logits, loss and (through central differences) gradients against it.

use std::collections::HashMap;

use crate::models::gpt::GptConfig;
use crate::testutil::erf_f64;

fn gelu(x: f64, exact: bool) -> f64 {
    if exact {
        0.5 * x * (1.0 + erf_f64(x / 2f64.sqrt()))
    } else {
        0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
    }
}

/// LayerNorm of each row of x (N, C), biased variance.
fn layernorm(x: &[f64], w: &[f64], b: Option<&[f64]>, c: usize, eps: f64) -> Vec<f64> {
    let mut out = vec![0.0; x.len()];
    for (o, row) in out.chunks_mut(c).zip(x.chunks(c)) {
        let mean = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / c as f64;
        for j in 0..c {
            o[j] = (row[j] - mean) / (var + eps).sqrt() * w[j] + b.map_or(0.0, |b| b[j]);
        }
    }
    out
}

/// x (N, IC) @ w (IC, OC) + b.
fn linear(x: &[f64], w: &[f64], b: Option<&[f64]>, ic: usize, oc: usize) -> Vec<f64> {
    let n = x.len() / ic;
    let mut out = vec![0.0; n * oc];
    for r in 0..n {
        for o in 0..oc {
            let mut s = b.map_or(0.0, |b| b[o]);
            for i in 0..ic {
                s += x[r * ic + i] * w[i * oc + o];
            }
            out[r * oc + o] = s;
        }
    }
    out
}

/// (mean loss, logits (B, T, V)) of the model with flat parameters `params` (laid out as in
/// `cfg.param_shapes()`, converted to f64).
pub fn forward(
    cfg: &GptConfig,
    params: &[f64],
    inputs: &[u32],
    targets: &[u32],
    b: usize,
    t: usize,
) -> (f64, Vec<f64>) {
    let mut named: HashMap<String, &[f64]> = HashMap::new();
    let mut off = 0;
    for (name, shape) in cfg.param_shapes() {
        let len: usize = shape.iter().product();
        named.insert(name, &params[off..off + len]);
        off += len;
    }
    assert_eq!(off, params.len());
    let get = |name: String| named[&name];
    let opt = |name: String| named.get(&name).copied();
    let (c, v, nh) = (cfg.n_embd, cfg.vocab_size, cfg.n_head);
    let hs = c / nh;
    let eps = cfg.layer_norm_epsilon;
    let exact = cfg.activation == crate::models::gpt::Activation::Gelu;
    let n = b * t;

    let (wte, wpe) = (
        get("transformer.wte.weight".into()),
        get("transformer.wpe.weight".into()),
    );
    let mut x = vec![0.0; n * c];
    for r in 0..n {
        for j in 0..c {
            x[r * c + j] = wte[inputs[r] as usize * c + j] + wpe[(r % t) * c + j];
        }
    }
    for l in 0..cfg.n_layer {
        let p = |s: &str| format!("transformer.h.{l}.{s}");
        let h = layernorm(&x, get(p("ln_1.weight")), opt(p("ln_1.bias")), c, eps);
        let qkv = linear(
            &h,
            get(p("attn.c_attn.weight")),
            opt(p("attn.c_attn.bias")),
            c,
            3 * c,
        );
        let mut y = vec![0.0; n * c];
        for bi in 0..b {
            for hd in 0..nh {
                let at = |r: usize, part: usize, d: usize| {
                    qkv[(bi * t + r) * 3 * c + part * c + hd * hs + d]
                };
                for i in 0..t {
                    let scores: Vec<f64> = (0..=i)
                        .map(|j| {
                            (0..hs).map(|d| at(i, 0, d) * at(j, 1, d)).sum::<f64>()
                                / (hs as f64).sqrt()
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..hs {
                        y[(bi * t + i) * c + hd * hs + d] =
                            (0..=i).map(|j| e[j] / z * at(j, 2, d)).sum();
                    }
                }
            }
        }
        let a = linear(
            &y,
            get(p("attn.c_proj.weight")),
            opt(p("attn.c_proj.bias")),
            c,
            c,
        );
        x.iter_mut().zip(&a).for_each(|(x, a)| *x += a);
        let h = layernorm(&x, get(p("ln_2.weight")), opt(p("ln_2.bias")), c, eps);
        let mut f = linear(
            &h,
            get(p("mlp.c_fc.weight")),
            opt(p("mlp.c_fc.bias")),
            c,
            4 * c,
        );
        f.iter_mut().for_each(|v| *v = gelu(*v, exact));
        let m = linear(
            &f,
            get(p("mlp.c_proj.weight")),
            opt(p("mlp.c_proj.bias")),
            4 * c,
            c,
        );
        x.iter_mut().zip(&m).for_each(|(x, m)| *x += m);
    }
    let h = layernorm(
        &x,
        get("transformer.ln_f.weight".into()),
        opt("transformer.ln_f.bias".into()),
        c,
        eps,
    );
    let mut logits = vec![0.0; n * v];
    let mut loss = 0.0;
    for r in 0..n {
        for k in 0..v {
            logits[r * v + k] = (0..c).map(|j| h[r * c + j] * wte[k * c + j]).sum();
        }
        let row = &logits[r * v..(r + 1) * v];
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|z| (z - m).exp()).sum::<f64>().ln();
        loss += lse - row[targets[r] as usize];
    }
    (loss / n as f64, logits)
}
