//! The Llama forward and backward for fine-tuning, written out by hand over flat f32 buffers
//! (llm.c style): the function of `models::llama` (Hugging Face's `LlamaForCausalLM`) with
//! optional LoRA adapters (Hu et al. 2021, as PEFT's `LoraLayer`: y = x Wᵀ + (α/r) · B A
//! dropout(x)) on any of the seven projections.
//!
//! A batch is several sequences packed end to end into one (N, C) buffer: every linear layer runs
//! over all N rows at once, attention and rotary positions restart at each sequence, so no
//! padding is computed and no sequence sees another (block-diagonal causal attention). The output
//! layer runs only at the rows whose next token is a target (the completion), and the loss is the
//! sum over those targets times a caller-given scale (1 / targets in the optimizer batch).
//!
//! What is trained: everything (`Method::Full`, gradients for every base tensor) or only the
//! adapters (`Method::Lora`): then the base weights are borrowed immutably, the backward
//! computes input gradients only through them (never their weight gradients), and nothing of
//! theirs enters the optimizer.
//!
//! Weights are in Hugging Face's layout (q and k rows as `transformers` stores them, rotary
//! embedding over halves), whatever file they came from (`Llama::hf_tensors`).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::lora::{base_shapes, lora_name, lora_shapes, LoraSpec, Proj};
use super::LlamaConfig;
use crate::error::{Error, Result};
use crate::kernels::{
    attention_backward, attention_forward, cross_entropy_backward, cross_entropy_forward, matmul,
    AttShape, Op,
};
use crate::kernels::{rmsnorm_backward, rmsnorm_forward, swiglu_backward, swiglu_forward};
use crate::kernels::{rope_tables, Precision, RopeAngles};
use crate::nn::params::Flat;

/// Sequences packed end to end: `ids` (N), the (start, len) of each sequence, and the loss
/// targets as (row, next token id) pairs, rows in increasing order.
#[derive(Debug, Clone, Default)]
pub struct Packed {
    pub ids: Vec<u32>,
    pub seqs: Vec<(usize, usize)>,
    pub targets: Vec<(usize, u32)>,
}

impl Packed {
    /// Appends a sequence whose tokens from `first_target` on are targets (predicted from the
    /// token before each).
    pub fn push(&mut self, tokens: &[u32], first_target: usize) {
        let start = self.ids.len();
        self.ids.extend_from_slice(tokens);
        self.seqs.push((start, tokens.len()));
        for (i, &t) in tokens.iter().enumerate().skip(first_target.max(1)) {
            self.targets.push((start + i - 1, t));
        }
    }
}

/// What is trained.
#[derive(Debug, Clone)]
pub enum Method {
    Full,
    Lora { spec: LoraSpec, params: Flat },
}

/// A Llama under fine-tuning: base weights, adapters (with LoRA), the rotary tables.
pub struct FtModel {
    pub cfg: LlamaConfig,
    pub base: Flat,
    pub method: Method,
    ids: Vec<LayerIds>,
    embed: usize,
    norm: usize,
    head: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
    pub prec: Precision,
}

/// Indices into `base` (and, per projection, into the adapters) of one block.
#[derive(Debug, Clone)]
struct LayerIds {
    attn_norm: usize,
    mlp_norm: usize,
    /// Per `Proj::ALL`: the base weight, and the (A, B) adapter ids when adapted.
    proj: [(usize, Option<(usize, usize)>); 7],
}

/// The activations of one block the backward needs.
struct LayerActs {
    x: Vec<f32>,
    rstd1: Vec<f32>,
    h1: Vec<f32>,
    /// (N, 3·nh·hd): rotated q, and k and v repeated per query head, as `attention_forward`
    /// reads them.
    qkv: Vec<f32>,
    att: Vec<f32>,
    lse: Vec<f32>,
    x2: Vec<f32>,
    rstd2: Vec<f32>,
    h2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
    /// Per projection with an adapter: its (dropped-out input when dropout > 0, x Aᵀ).
    lora: [Option<LoraActs>; 7],
}

struct LoraActs {
    /// Dropout's factor per input element (0 or 1/(1 − p)); None without dropout.
    mask: Option<Vec<f32>>,
    xa: Vec<f32>,
}

/// The forward's saved state for `backward`.
pub struct Activations {
    layers: Vec<LayerActs>,
    /// Final RMSNorm at the target rows: its input, rstd, output; and the logits.
    xt: Vec<f32>,
    rstd_f: Vec<f32>,
    ht: Vec<f32>,
    logits: Vec<f32>,
    lse: Vec<f32>,
    targets: Vec<u32>,
}

/// Gradients of a step: of the adapters (LoRA) or of every base tensor (full), laid out as the
/// parameters they belong to.
pub struct Grads(pub Vec<f32>);

fn proj_index(p: Proj) -> usize {
    Proj::ALL.iter().position(|&q| q == p).expect("one of ALL")
}

impl FtModel {
    /// A model over `base` (laid out as `base_shapes(cfg)`). Checks every tensor is present
    /// with its shape.
    pub fn new(cfg: LlamaConfig, base: Flat, method: Method) -> Result<Self> {
        let need = |f: &Flat, name: &str, shape: &[usize]| -> Result<usize> {
            let id = f
                .id(name)
                .ok_or_else(|| Error::Invalid(format!("tensor {name} is missing")))?;
            if f.entries[id].shape != shape {
                return Err(Error::Invalid(format!(
                    "tensor {name} has shape {:?}, expected {shape:?}",
                    f.entries[id].shape
                )));
            }
            Ok(id)
        };
        for (name, shape) in base_shapes(&cfg) {
            need(&base, &name, &shape)?;
        }
        if let Method::Lora { spec, params } = &method {
            spec.validate()?;
            for (name, shape) in lora_shapes(&cfg, spec) {
                need(params, &name, &shape)?;
            }
        }
        let mut ids = Vec::new();
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let b = |n: &str| base.id(&format!("{p}.{n}.weight")).expect("checked above");
            let proj = Proj::ALL.map(|pr| {
                let lora = match &method {
                    Method::Lora { spec, params } if spec.targets.contains(&pr) => Some((
                        params.id(&lora_name(l, pr, "A")).expect("checked"),
                        params.id(&lora_name(l, pr, "B")).expect("checked"),
                    )),
                    _ => None,
                };
                (b(&pr.path()), lora)
            });
            ids.push(LayerIds {
                attn_norm: b("input_layernorm"),
                mlp_norm: b("post_attention_layernorm"),
                proj,
            });
        }
        let embed = base.id("model.embed_tokens.weight").expect("checked");
        let head = base.id("lm_head.weight").unwrap_or(embed);
        let norm = base.id("model.norm.weight").expect("checked");
        let half = cfg.head_dim() / 2;
        let n = cfg.max_position_embeddings;
        let (cos, sin) = rope_tables(n, 2 * half, cfg.rope_theta, RopeAngles::F64);
        Ok(Self {
            cfg,
            base,
            method,
            ids,
            embed,
            norm,
            head,
            cos,
            sin,
            prec: Precision::F32,
        })
    }

    /// The trained parameters (the adapters, or every base tensor).
    pub fn params(&self) -> &Flat {
        match &self.method {
            Method::Full => &self.base,
            Method::Lora { params, .. } => params,
        }
    }

    pub fn params_mut(&mut self) -> &mut Flat {
        match &mut self.method {
            Method::Full => &mut self.base,
            Method::Lora { params, .. } => params,
        }
    }

    fn lora(&self) -> Option<(&LoraSpec, &Flat)> {
        match &self.method {
            Method::Lora { spec, params } => Some((spec, params)),
            Method::Full => None,
        }
    }

    /// y (N, out) = x (N, in) Wᵀ [+ s · (drop(x) Aᵀ) Bᵀ]; returns the adapter's activations.
    fn linear(
        &self,
        y: &mut [f32],
        x: &[f32],
        (w, lora): (usize, Option<(usize, usize)>),
        p: Proj,
        rng: Option<&mut ChaCha8Rng>,
    ) -> Option<LoraActs> {
        let (o, i) = p.dims(&self.cfg);
        let n = x.len() / i;
        matmul((n, o, i), y, false, Op::N(x), Op::T(self.base.get(w)), 1.0);
        let (spec, params) = self.lora()?;
        let (a, b) = lora?;
        let r = spec.rank;
        let mask = match rng {
            Some(rng) if spec.dropout > 0.0 => {
                let keep = 1.0 / (1.0 - spec.dropout);
                Some(
                    (0..x.len())
                        .map(|_| {
                            if rng.gen::<f32>() < spec.dropout {
                                0.0
                            } else {
                                keep
                            }
                        })
                        .collect::<Vec<f32>>(),
                )
            }
            _ => None,
        };
        let dropped: Option<Vec<f32>> = mask
            .as_ref()
            .map(|m| x.iter().zip(m).map(|(&v, &k)| v * k).collect());
        let xin = dropped.as_deref().unwrap_or(x);
        let mut xa = vec![0f32; n * r];
        matmul(
            (n, r, i),
            &mut xa,
            false,
            Op::N(xin),
            Op::T(params.get(a)),
            1.0,
        );
        matmul(
            (n, o, r),
            y,
            true,
            Op::N(&xa),
            Op::T(params.get(b)),
            spec.scale(),
        );
        Some(LoraActs { mask, xa })
    }

    /// Backward of `linear` given dy (N, out): dx (N, in) is overwritten (or accumulated into);
    /// the weight's gradient (full) or the adapter's (LoRA) is accumulated into `grads`.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        dx: &mut [f32],
        accumulate: bool,
        dy: &[f32],
        x: &[f32],
        (w, lora): (usize, Option<(usize, usize)>),
        p: Proj,
        acts: Option<&LoraActs>,
        grads: &mut [f32],
    ) {
        let (o, i) = p.dims(&self.cfg);
        let n = x.len() / i;
        matmul(
            (n, i, o),
            dx,
            accumulate,
            Op::N(dy),
            Op::N(self.base.get(w)),
            1.0,
        );
        match &self.method {
            Method::Full => {
                let e = &self.base.entries[w];
                let dw = &mut grads[e.offset..e.offset + e.len];
                matmul((o, i, n), dw, true, Op::T(dy), Op::N(x), 1.0);
            }
            Method::Lora { spec, params } => {
                let (Some((a, b)), Some(acts)) = (lora, acts) else {
                    return;
                };
                let (r, s) = (spec.rank, spec.scale());
                let (ea, eb) = (&params.entries[a], &params.entries[b]);
                // dB += s · dyᵀ (x Aᵀ); d(x Aᵀ) = s · dy B; dA += d(x Aᵀ)ᵀ x; dx += d(x Aᵀ) A.
                let db = &mut grads[eb.offset..eb.offset + eb.len];
                matmul((o, r, n), db, true, Op::T(dy), Op::N(&acts.xa), s);
                let mut dxa = vec![0f32; n * r];
                matmul(
                    (n, r, o),
                    &mut dxa,
                    false,
                    Op::N(dy),
                    Op::N(params.get(b)),
                    s,
                );
                let dropped: Option<Vec<f32>> = acts
                    .mask
                    .as_ref()
                    .map(|m| x.iter().zip(m).map(|(&v, &k)| v * k).collect());
                let xin = dropped.as_deref().unwrap_or(x);
                let da = &mut grads[ea.offset..ea.offset + ea.len];
                matmul((r, i, n), da, true, Op::T(&dxa), Op::N(xin), 1.0);
                match &acts.mask {
                    None => matmul((n, i, r), dx, true, Op::N(&dxa), Op::N(params.get(a)), 1.0),
                    Some(mask) => {
                        let mut dxin = vec![0f32; n * i];
                        let a = params.get(a);
                        matmul((n, i, r), &mut dxin, false, Op::N(&dxa), Op::N(a), 1.0);
                        for ((g, &d), &k) in dx.iter_mut().zip(&dxin).zip(mask) {
                            *g += d * k;
                        }
                    }
                }
            }
        }
    }
}

/// Rotates each head of `x` (rows of `heads` × hd, Hugging Face's halves layout) by the
/// position of its row within its sequence; `inverse` rotates back (the backward of a
/// rotation is its transpose).
#[allow(clippy::too_many_arguments)]
fn rope(
    x: &mut [f32],
    heads: usize,
    hd: usize,
    seqs: &[(usize, usize)],
    cos: &[f32],
    sin: &[f32],
    inverse: bool,
) {
    let half = hd / 2;
    let width = heads * hd;
    let sign = if inverse { -1.0 } else { 1.0 };
    for &(start, len) in seqs {
        x[start * width..(start + len) * width]
            .par_chunks_mut(width)
            .enumerate()
            .for_each(|(p, row)| {
                let (c, s) = (
                    &cos[p * half..(p + 1) * half],
                    &sin[p * half..(p + 1) * half],
                );
                for head in row.chunks_exact_mut(hd) {
                    let (lo, hi) = head.split_at_mut(half);
                    for i in 0..half {
                        let (x0, x1, si) = (lo[i], hi[i], sign * s[i]);
                        lo[i] = x0 * c[i] - x1 * si;
                        hi[i] = x0 * si + x1 * c[i];
                    }
                }
            });
    }
}

impl FtModel {
    fn dims(&self) -> (usize, usize, usize, usize, usize) {
        let c = &self.cfg;
        (
            c.hidden_size,
            c.num_attention_heads,
            c.n_kv_heads(),
            c.head_dim(),
            c.intermediate_size,
        )
    }

    /// Checks a batch against the model: ids in the vocabulary, sequences inside the context.
    pub fn check(&self, b: &Packed) -> Result<()> {
        if let Some(&id) = b.ids.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            return Err(Error::UnknownTokenId {
                id,
                vocab_size: self.cfg.vocab_size,
            });
        }
        if let Some(&(_, len)) = b
            .seqs
            .iter()
            .find(|&&(_, l)| l > self.cfg.max_position_embeddings)
        {
            return Err(Error::Invalid(format!(
                "a sequence of {len} tokens exceeds the model's context of {}",
                self.cfg.max_position_embeddings
            )));
        }
        Ok(())
    }

    /// One decoder block over the packed rows: `x` += attention(RMSNorm(x)), then `x` +=
    /// MLP(RMSNorm(x)); with `save`, what the block's backward needs.
    fn block_forward(
        &self,
        ids: &LayerIds,
        x: &mut [f32],
        b: &Packed,
        mut rng: Option<&mut ChaCha8Rng>,
        save: bool,
    ) -> Option<LayerActs> {
        let (c, nh, nkv, hd, _) = self.dims();
        let n = b.ids.len();
        let (qw, kvw) = (nh * hd, nkv * hd);
        let (c3, group) = (3 * qw, nh / nkv);
        let eps = self.cfg.rms_norm_eps as f32;
        let pr = |p: Proj| ids.proj[proj_index(p)];
        let mut lora: [Option<LoraActs>; 7] = Default::default();
        let mut rstd1 = vec![0f32; n];
        let mut h1 = vec![0f32; n * c];
        rmsnorm_forward(&mut h1, &mut rstd1, x, self.base.get(ids.attn_norm), eps, c);
        let (mut q, mut k, mut v) = (vec![0f32; n * qw], vec![0f32; n * kvw], vec![0f32; n * kvw]);
        lora[0] = self.linear(&mut q, &h1, pr(Proj::Q), Proj::Q, rng.as_deref_mut());
        lora[1] = self.linear(&mut k, &h1, pr(Proj::K), Proj::K, rng.as_deref_mut());
        lora[2] = self.linear(&mut v, &h1, pr(Proj::V), Proj::V, rng.as_deref_mut());
        rope(&mut q, nh, hd, &b.seqs, &self.cos, &self.sin, false);
        rope(&mut k, nkv, hd, &b.seqs, &self.cos, &self.sin, false);
        let mut qkv = vec![0f32; n * c3];
        qkv.par_chunks_mut(c3).enumerate().for_each(|(r, row)| {
            row[..qw].copy_from_slice(&q[r * qw..(r + 1) * qw]);
            for h in 0..nh {
                let src = r * kvw + (h / group) * hd;
                row[qw + h * hd..qw + (h + 1) * hd].copy_from_slice(&k[src..src + hd]);
                row[2 * qw + h * hd..2 * qw + (h + 1) * hd].copy_from_slice(&v[src..src + hd]);
            }
        });
        drop((q, k, v));
        let mut att = vec![0f32; n * qw];
        let mut lse = vec![0f32; n * nh];
        for &(s, len) in &b.seqs {
            attention_forward(
                &mut att[s * qw..(s + len) * qw],
                &mut lse[s * nh..(s + len) * nh],
                &mut qkv[s * c3..(s + len) * c3],
                None,
                AttShape {
                    b: 1,
                    t: len,
                    c: qw,
                    nh,
                },
                self.prec,
            );
        }
        let mut o = vec![0f32; n * c];
        lora[3] = self.linear(&mut o, &att, pr(Proj::O), Proj::O, rng.as_deref_mut());
        let x_in = if save { Some(x.to_vec()) } else { None };
        add(x, &o);
        let x2 = if save { Some(x.to_vec()) } else { None };
        let mut rstd2 = vec![0f32; n];
        let mut h2 = vec![0f32; n * c];
        rmsnorm_forward(&mut h2, &mut rstd2, x, self.base.get(ids.mlp_norm), eps, c);
        let ni = n * self.cfg.intermediate_size;
        let (mut gate, mut up, mut act) = (vec![0f32; ni], vec![0f32; ni], vec![0f32; ni]);
        lora[4] = self.linear(
            &mut gate,
            &h2,
            pr(Proj::Gate),
            Proj::Gate,
            rng.as_deref_mut(),
        );
        lora[5] = self.linear(&mut up, &h2, pr(Proj::Up), Proj::Up, rng.as_deref_mut());
        swiglu_forward(&mut act, &gate, &up);
        lora[6] = self.linear(&mut o, &act, pr(Proj::Down), Proj::Down, rng);
        add(x, &o);
        save.then(|| LayerActs {
            x: x_in.expect("saved"),
            rstd1,
            h1,
            qkv,
            att,
            lse,
            x2: x2.expect("saved"),
            rstd2,
            h2,
            gate,
            up,
            act,
            lora,
        })
    }

    /// The forward over a packed batch: the summed cross-entropy of its targets, and (with
    /// `save`) what `backward` needs. `rng` drives LoRA dropout (None: no dropout, as in eval).
    pub fn forward(
        &self,
        b: &Packed,
        mut rng: Option<&mut ChaCha8Rng>,
        save: bool,
    ) -> (f64, Option<Activations>) {
        let (c, n) = (self.cfg.hidden_size, b.ids.len());
        let eps = self.cfg.rms_norm_eps as f32;
        let embed = self.base.get(self.embed);
        let mut x = vec![0f32; n * c];
        for (row, &id) in x.chunks_exact_mut(c).zip(&b.ids) {
            row.copy_from_slice(&embed[id as usize * c..(id as usize + 1) * c]);
        }
        let mut layers = Vec::new();
        for ids in &self.ids {
            let acts = self.block_forward(ids, &mut x, b, rng.as_deref_mut(), save);
            layers.extend(acts);
        }
        // The output layer at the target rows only.
        let m = b.targets.len();
        let vocab = self.cfg.vocab_size;
        let mut xt = vec![0f32; m * c];
        for (row, &(r, _)) in xt.chunks_exact_mut(c).zip(&b.targets) {
            row.copy_from_slice(&x[r * c..(r + 1) * c]);
        }
        drop(x);
        let (mut rstd_f, mut ht) = (vec![0f32; m], vec![0f32; m * c]);
        rmsnorm_forward(&mut ht, &mut rstd_f, &xt, self.base.get(self.norm), eps, c);
        let targets: Vec<u32> = b.targets.iter().map(|&(_, t)| t).collect();
        let mut logits = vec![0f32; m * vocab];
        let mut lse = vec![0f32; m];
        let mut loss = 0.0;
        if m > 0 {
            let head = self.base.get(self.head);
            matmul(
                (m, vocab, c),
                &mut logits,
                false,
                Op::N(&ht),
                Op::T(head),
                1.0,
            );
            loss = cross_entropy_forward(&logits, &mut lse, &targets, vocab) as f64 * m as f64;
        }
        let acts = save.then_some(Activations {
            layers,
            xt,
            rstd_f,
            ht,
            logits,
            lse,
            targets,
        });
        (loss, acts)
    }
}

impl LayerActs {
    fn empty() -> Self {
        LayerActs {
            x: Vec::new(),
            rstd1: Vec::new(),
            h1: Vec::new(),
            qkv: Vec::new(),
            att: Vec::new(),
            lse: Vec::new(),
            x2: Vec::new(),
            rstd2: Vec::new(),
            h2: Vec::new(),
            gate: Vec::new(),
            up: Vec::new(),
            act: Vec::new(),
            lora: Default::default(),
        }
    }
}

fn add(dst: &mut [f32], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

mod backward;
#[cfg(test)]
mod tests;
