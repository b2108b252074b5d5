use std::collections::HashMap;

use super::*;
use crate::nn::params::Entry;
use candle_core::{Device, Tensor, Var, D};
use rand::SeedableRng;

fn tiny() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 50,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 64,
        tie_word_embeddings: true,
        bos_token_id: None,
        eos_token_id: None,
    }
}

fn random_flat(shapes: &[(String, Vec<usize>)], seed: u64) -> Flat {
    let mut f = Flat::zeros(shapes);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for e in f.entries.clone() {
        let norm = e.shape.len() == 1;
        for x in &mut f.data[e.offset..e.offset + e.len] {
            *x = if norm {
                1.0 + rng.gen_range(-0.2..0.2)
            } else {
                rng.gen_range(-0.3..0.3)
            };
        }
    }
    f
}

fn batch() -> Packed {
    let mut b = Packed::default();
    b.push(&[3, 17, 4, 49, 0, 22, 8], 3);
    b.push(&[5, 9, 31, 2, 40], 1);
    b.push(&[11, 12], 1);
    b
}

/// The same function in candle ops with autograd: (summed loss, gradient of every Var).
fn reference(
    cfg: &LlamaConfig,
    base: &Flat,
    lora: Option<(&LoraSpec, &Flat)>,
    b: &Packed,
) -> (f64, HashMap<String, Vec<f32>>) {
    let dev = Device::Cpu;
    let var = |f: &Flat, e: &Entry| {
        Var::from_slice(f.get(f.id(&e.name).unwrap()), e.shape.as_slice(), &dev).unwrap()
    };
    let base_vars: HashMap<String, Var> = base
        .entries
        .iter()
        .map(|e| (e.name.clone(), var(base, e)))
        .collect();
    let lora_vars: HashMap<String, Var> = lora
        .map(|(_, f)| {
            f.entries
                .iter()
                .map(|e| (e.name.clone(), var(f, e)))
                .collect()
        })
        .unwrap_or_default();
    let w = |n: &str| base_vars[n].as_tensor().clone();
    let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.n_kv_heads(), cfg.head_dim());
    let eps = cfg.rms_norm_eps;
    let rms = |x: &Tensor, g: &Tensor| -> Tensor {
        let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        x.broadcast_div(&(ms + eps).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(g)
            .unwrap()
    };
    let lin = |x: &Tensor, l: usize, p: Proj| -> Tensor {
        let mut y = x
            .matmul(
                &w(&format!("model.layers.{l}.{}.weight", p.path()))
                    .t()
                    .unwrap(),
            )
            .unwrap();
        if let Some((spec, _)) = lora {
            if spec.targets.contains(&p) {
                let a = lora_vars[&lora_name(l, p, "A")].as_tensor();
                let bm = lora_vars[&lora_name(l, p, "B")].as_tensor();
                let d = x
                    .matmul(&a.t().unwrap())
                    .unwrap()
                    .matmul(&bm.t().unwrap())
                    .unwrap();
                y = (y + (d * spec.scale() as f64).unwrap()).unwrap();
            }
        }
        y
    };
    let half = hd / 2;
    let mut total = Tensor::zeros((), candle_core::DType::F32, &dev).unwrap();
    for &(s, len) in &b.seqs {
        let ids = Tensor::from_slice(&b.ids[s..s + len], len, &dev).unwrap();
        let mut x = w("model.embed_tokens.weight")
            .index_select(&ids, 0)
            .unwrap();
        let ang: Vec<f32> = (0..len)
            .flat_map(|p| {
                (0..half).map(move |i| {
                    p as f32 * (1.0 / 10_000f64.powf(2.0 * i as f64 / hd as f64)) as f32
                })
            })
            .collect();
        let ang = Tensor::from_vec(ang, (len, half), &dev).unwrap();
        let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
        let rot = |t: &Tensor, heads: usize| -> Tensor {
            let t = t
                .reshape((len, heads, hd))
                .unwrap()
                .transpose(0, 1)
                .unwrap();
            let (a, bb) = (
                t.narrow(2, 0, half).unwrap(),
                t.narrow(2, half, half).unwrap(),
            );
            let lo = (a.broadcast_mul(&cos).unwrap() - bb.broadcast_mul(&sin).unwrap()).unwrap();
            let hi = (a.broadcast_mul(&sin).unwrap() + bb.broadcast_mul(&cos).unwrap()).unwrap();
            Tensor::cat(&[lo, hi], 2).unwrap()
        };
        let mask: Vec<f32> = (0..len)
            .flat_map(|i| (0..len).map(move |j| if j > i { -1e9 } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (len, len), &dev).unwrap();
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let h = rms(&x, &w(&format!("{p}.input_layernorm.weight")));
            let q = rot(&lin(&h, l, Proj::Q), nh);
            let k = rot(&lin(&h, l, Proj::K), nkv);
            let v = lin(&h, l, Proj::V)
                .reshape((len, nkv, hd))
                .unwrap()
                .transpose(0, 1)
                .unwrap();
            let rep = |t: Tensor| -> Tensor {
                let g = nh / nkv;
                t.unsqueeze(1)
                    .unwrap()
                    .broadcast_as((nkv, g, len, hd))
                    .unwrap()
                    .reshape((nh, len, hd))
                    .unwrap()
            };
            let (k, v) = (rep(k), rep(v));
            let sc = (q.matmul(&k.t().unwrap()).unwrap() / (hd as f64).sqrt())
                .unwrap()
                .broadcast_add(&mask)
                .unwrap();
            let pr = candle_nn::ops::softmax(&sc, D::Minus1).unwrap();
            let y = pr
                .matmul(&v)
                .unwrap()
                .transpose(0, 1)
                .unwrap()
                .reshape((len, nh * hd))
                .unwrap();
            x = (x + lin(&y, l, Proj::O)).unwrap();
            let h = rms(&x, &w(&format!("{p}.post_attention_layernorm.weight")));
            let g = candle_nn::ops::silu(&lin(&h, l, Proj::Gate)).unwrap();
            let m = (g * lin(&h, l, Proj::Up)).unwrap();
            x = (x + lin(&m, l, Proj::Down)).unwrap();
        }
        let rows: Vec<u32> = b
            .targets
            .iter()
            .filter(|&&(r, _)| r >= s && r < s + len)
            .map(|&(r, _)| (r - s) as u32)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let tg: Vec<u32> = b
            .targets
            .iter()
            .filter(|&&(r, _)| r >= s && r < s + len)
            .map(|&(_, t)| t)
            .collect();
        let xt = x
            .index_select(&Tensor::from_vec(rows, tg.len(), &dev).unwrap(), 0)
            .unwrap();
        let logits = rms(&xt, &w("model.norm.weight"))
            .matmul(&w("model.embed_tokens.weight").t().unwrap())
            .unwrap();
        let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let picked = lsm
            .gather(
                &Tensor::from_vec(tg.clone(), (tg.len(), 1), &dev).unwrap(),
                1,
            )
            .unwrap();
        total = (total - picked.sum_all().unwrap()).unwrap();
    }
    let grads = total.backward().unwrap();
    let vars = if lora.is_some() {
        &lora_vars
    } else {
        &base_vars
    };
    let out = vars
        .iter()
        .map(|(n, v)| {
            let g = grads
                .get(v)
                .map(|g| g.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            (n.clone(), g.unwrap_or_else(|| vec![0.0; v.elem_count()]))
        })
        .collect();
    (total.to_scalar::<f32>().unwrap() as f64, out)
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, crate::testutil::nan_max)
        / scale
}

fn check(model: &FtModel, lora: Option<(&LoraSpec, &Flat)>) {
    let b = batch();
    let (loss, acts) = model.forward(&b, None, true);
    let mut grads = model.params().zeros_like();
    model.backward(&b, acts.unwrap(), 1.0, &mut grads);
    let (ref_loss, ref_grads) = reference(&model.cfg, &model.base, lora, &b);
    assert!(
        (loss - ref_loss).abs() < 1e-4 * ref_loss.abs(),
        "loss {loss} vs {ref_loss}"
    );
    let p = model.params();
    for e in &p.entries {
        let g = &grads[e.offset..e.offset + e.len];
        let d = max_rel(g, &ref_grads[&e.name]);
        assert!(d < 1e-3, "{}: gradient differs by {d}", e.name);
    }
}

/// Full fine-tuning: the loss and the gradient of every base tensor equal candle autograd's
/// over the same function written in plain ops (GQA, packed sequences, tied head).
#[test]
fn full_gradients_match_autograd() {
    let cfg = tiny();
    let base = random_flat(&base_shapes(&cfg), 1);
    let model = FtModel::new(cfg, base, Method::Full).unwrap();
    check(&model, None);
}

/// LoRA on all seven projections (B non-zero, so every path carries gradient): adapter
/// gradients equal autograd's.
#[test]
fn lora_gradients_match_autograd() {
    let cfg = tiny();
    let base = random_flat(&base_shapes(&cfg), 1);
    let spec = LoraSpec {
        rank: 3,
        alpha: 6.0,
        dropout: 0.0,
        targets: Proj::ALL.to_vec(),
    };
    let params = random_flat(&lora_shapes(&cfg, &spec), 2);
    let model = FtModel::new(
        cfg,
        base,
        Method::Lora {
            spec: spec.clone(),
            params: params.clone(),
        },
    )
    .unwrap();
    check(&model, Some((&spec, &params)));
}
