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

use std::collections::HashMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::models::llama::LlamaConfig;
use crate::train::fast::kernels::{
    attention_backward, attention_forward, cross_entropy_backward, cross_entropy_forward, matmul,
    AttShape, Op,
};
use crate::train::fast::llama_kernels::{
    rmsnorm_backward, rmsnorm_forward, swiglu_backward, swiglu_forward,
};
use crate::train::fast::Precision;

/// The seven projections of a block LoRA can adapt, in PEFT's module names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// The module's name in a Llama block (`q_proj`, …, `down_proj`), as PEFT's
    /// `target_modules` names it.
    pub fn module(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    /// The module's path inside a block (`self_attn.q_proj`, `mlp.up_proj`, …).
    pub fn path(self) -> String {
        let parent = match self {
            Proj::Q | Proj::K | Proj::V | Proj::O => "self_attn",
            _ => "mlp",
        };
        format!("{parent}.{}", self.module())
    }

    /// Parses a module name: `q_proj` or its short form `q` (likewise k, v, o, gate, up, down).
    pub fn parse(s: &str) -> Option<Proj> {
        let s = s.trim();
        let s = s.strip_suffix("_proj").unwrap_or(s);
        Some(match s {
            "q" => Proj::Q,
            "k" => Proj::K,
            "v" => Proj::V,
            "o" => Proj::O,
            "gate" => Proj::Gate,
            "up" => Proj::Up,
            "down" => Proj::Down,
            _ => return None,
        })
    }

    /// (out, in) features of the projection's weight.
    pub fn dims(self, cfg: &LlamaConfig) -> (usize, usize) {
        let (c, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (q, kv) = (
            cfg.num_attention_heads * cfg.head_dim(),
            cfg.n_kv_heads() * cfg.head_dim(),
        );
        match self {
            Proj::Q => (q, c),
            Proj::K | Proj::V => (kv, c),
            Proj::O => (c, q),
            Proj::Gate | Proj::Up => (i, c),
            Proj::Down => (c, i),
        }
    }
}

/// Named tensors in one flat f32 buffer, in a fixed order.
#[derive(Debug, Clone, Default)]
pub struct Flat {
    pub data: Vec<f32>,
    pub entries: Vec<Entry>,
    index: HashMap<String, usize>,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
}

impl Flat {
    /// Lays out `shapes` in order, zero-filled.
    pub fn zeros(shapes: &[(String, Vec<usize>)]) -> Self {
        let mut f = Flat::default();
        let mut off = 0;
        for (name, shape) in shapes {
            let len = shape.iter().product();
            f.index.insert(name.clone(), f.entries.len());
            f.entries.push(Entry {
                name: name.clone(),
                shape: shape.clone(),
                offset: off,
                len,
            });
            off += len;
        }
        f.data = vec![0.0; off];
        f
    }

    pub fn id(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn get(&self, id: usize) -> &[f32] {
        let e = &self.entries[id];
        &self.data[e.offset..e.offset + e.len]
    }

    pub fn get_mut(&mut self, id: usize) -> &mut [f32] {
        let e = &self.entries[id];
        &mut self.data[e.offset..e.offset + e.len]
    }

    /// A zeroed buffer of the same layout (for gradients).
    pub fn zeros_like(&self) -> Vec<f32> {
        vec![0.0; self.data.len()]
    }
}

/// The base model's tensor names, in the order of a Hugging Face state dict.
pub fn base_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (c, v) = (cfg.hidden_size, cfg.vocab_size);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![v, c])];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.input_layernorm.weight"), vec![c]));
        for proj in [Proj::Q, Proj::K, Proj::V, Proj::O] {
            let (o, i) = proj.dims(cfg);
            out.push((format!("{p}.{}.weight", proj.path()), vec![o, i]));
        }
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![c]));
        for proj in [Proj::Gate, Proj::Up, Proj::Down] {
            let (o, i) = proj.dims(cfg);
            out.push((format!("{p}.{}.weight", proj.path()), vec![o, i]));
        }
    }
    out.push(("model.norm.weight".to_string(), vec![c]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![v, c]));
    }
    out
}

/// LoRA's settings, as PEFT's `LoraConfig` names them.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub targets: Vec<Proj>,
}

impl LoraSpec {
    pub fn scale(&self) -> f32 {
        (self.alpha / self.rank as f64) as f32
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::Invalid(
                "LoRA rank must be at least 1 (rank 0 adapts nothing)".into(),
            ));
        }
        if self.targets.is_empty() {
            return Err(Error::Invalid(
                "LoRA needs at least one target module".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Invalid(format!(
                "LoRA dropout {} is outside [0, 1)",
                self.dropout
            )));
        }
        Ok(())
    }
}

/// PEFT's tensor name of adapter matrix `ab` ("A" or "B") of projection `p` in layer `l`.
pub fn lora_name(l: usize, p: Proj, ab: &str) -> String {
    format!(
        "base_model.model.model.layers.{l}.{}.lora_{ab}.weight",
        p.path()
    )
}

/// The adapter tensors' layout: for each layer and target, A (r, in) then B (out, r).
pub fn lora_shapes(cfg: &LlamaConfig, spec: &LoraSpec) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        for &p in &spec.targets {
            let (o, i) = p.dims(cfg);
            out.push((lora_name(l, p, "A"), vec![spec.rank, i]));
            out.push((lora_name(l, p, "B"), vec![o, spec.rank]));
        }
    }
    out
}

/// Fresh adapters as PEFT initialises them: A Kaiming-uniform (a = √5, so U(±1/√in)), B zero,
/// which makes the adapted model start equal to the base.
pub fn init_lora(cfg: &LlamaConfig, spec: &LoraSpec, rng: &mut ChaCha8Rng) -> Flat {
    let mut f = Flat::zeros(&lora_shapes(cfg, spec));
    for e in f.entries.clone() {
        if e.name.ends_with("lora_A.weight") {
            let bound = 1.0 / (e.shape[1] as f32).sqrt();
            for x in &mut f.data[e.offset..e.offset + e.len] {
                *x = rng.gen_range(-bound..bound);
            }
        }
    }
    f
}

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
        let (mut cos, mut sin) = (Vec::with_capacity(n * half), Vec::with_capacity(n * half));
        for p in 0..n {
            for i in 0..half {
                let f = 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / (2 * half) as f64);
                let a = (p as f64 * f) as f32;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
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

    /// The forward over a packed batch: the summed cross-entropy of its targets, and (with
    /// `save`) what `backward` needs. `rng` drives LoRA dropout (None: no dropout, as in eval).
    pub fn forward(
        &self,
        b: &Packed,
        mut rng: Option<&mut ChaCha8Rng>,
        save: bool,
    ) -> (f64, Option<Activations>) {
        let (c, nh, nkv, hd, _) = self.dims();
        let n = b.ids.len();
        let (qw, kvw) = (nh * hd, nkv * hd);
        let (c3, group) = (3 * qw, nh / nkv);
        let eps = self.cfg.rms_norm_eps as f32;
        let embed = self.base.get(self.embed);
        let mut x = vec![0f32; n * c];
        for (row, &id) in x.chunks_exact_mut(c).zip(&b.ids) {
            row.copy_from_slice(&embed[id as usize * c..(id as usize + 1) * c]);
        }
        let mut layers = Vec::new();
        for ids in &self.ids {
            let pr = |p: Proj| ids.proj[proj_index(p)];
            let mut lora: [Option<LoraActs>; 7] = Default::default();
            let mut rstd1 = vec![0f32; n];
            let mut h1 = vec![0f32; n * c];
            rmsnorm_forward(
                &mut h1,
                &mut rstd1,
                &x,
                self.base.get(ids.attn_norm),
                eps,
                c,
            );
            let (mut q, mut k, mut v) =
                (vec![0f32; n * qw], vec![0f32; n * kvw], vec![0f32; n * kvw]);
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
            let x_in = if save { Some(x.clone()) } else { None };
            add(&mut x, &o);
            let x2 = if save { Some(x.clone()) } else { None };
            let mut rstd2 = vec![0f32; n];
            let mut h2 = vec![0f32; n * c];
            rmsnorm_forward(&mut h2, &mut rstd2, &x, self.base.get(ids.mlp_norm), eps, c);
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
            lora[6] = self.linear(&mut o, &act, pr(Proj::Down), Proj::Down, rng.as_deref_mut());
            add(&mut x, &o);
            if save {
                layers.push(LayerActs {
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
                });
            }
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

    /// The backward of `forward` for `scale` × the summed loss: accumulates into `grads` (laid
    /// out as `params()`).
    pub fn backward(&self, b: &Packed, acts: Activations, scale: f32, grads: &mut [f32]) {
        assert_eq!(
            grads.len(),
            self.params().data.len(),
            "gradient buffer size"
        );
        let (c, nh, nkv, hd, inter) = self.dims();
        let n = b.ids.len();
        let (qw, kvw) = (nh * hd, nkv * hd);
        let (c3, group) = (3 * qw, nh / nkv);
        let m = b.targets.len();
        let vocab = self.cfg.vocab_size;
        let full = matches!(self.method, Method::Full);
        let Activations {
            mut layers,
            xt,
            rstd_f,
            ht,
            mut logits,
            lse,
            targets,
        } = acts;
        let mut dx = vec![0f32; n * c];
        let mut scratch_c = vec![0f32; c];
        if m > 0 {
            // logits → dlogits, in place.
            let mut dlogits = vec![0f32; m * vocab];
            cross_entropy_backward(&mut dlogits, &logits, &lse, &targets, scale);
            logits.clear();
            let head = self.base.get(self.head);
            let mut dht = vec![0f32; m * c];
            matmul(
                (m, c, vocab),
                &mut dht,
                false,
                Op::N(&dlogits),
                Op::N(head),
                1.0,
            );
            if full {
                let e = &self.base.entries[self.head];
                let dw = &mut grads[e.offset..e.offset + e.len];
                matmul((vocab, c, m), dw, true, Op::T(&dlogits), Op::N(&ht), 1.0);
            }
            drop(dlogits);
            let mut dxt = vec![0f32; m * c];
            let dnorm = if full {
                let e = &self.base.entries[self.norm];
                &mut grads[e.offset..e.offset + e.len]
            } else {
                &mut scratch_c[..]
            };
            rmsnorm_backward(
                &mut dxt,
                dnorm,
                &dht,
                &xt,
                self.base.get(self.norm),
                &rstd_f,
                c,
            );
            for (row, &(r, _)) in dxt.chunks_exact(c).zip(&b.targets) {
                add(&mut dx[r * c..(r + 1) * c], row);
            }
        }
        let mut tmp = vec![0f32; n * c];
        for (ids, a) in self.ids.iter().zip(layers.iter_mut()).rev() {
            let pr = |p: Proj| ids.proj[proj_index(p)];
            let la = |i: usize| a.lora[i].as_ref();
            // x_out = x2 + down(swiglu(gate(h2), up(h2))), h2 = norm(x2).
            let ni = n * inter;
            let mut dact = vec![0f32; ni];
            self.linear_backward(
                &mut dact,
                false,
                &dx,
                &a.act,
                pr(Proj::Down),
                Proj::Down,
                la(6),
                grads,
            );
            let (mut dgate, mut dup) = (vec![0f32; ni], vec![0f32; ni]);
            swiglu_backward(&mut dgate, &mut dup, &dact, &a.gate, &a.up);
            drop(dact);
            let mut dh = vec![0f32; n * c];
            self.linear_backward(
                &mut dh,
                false,
                &dgate,
                &a.h2,
                pr(Proj::Gate),
                Proj::Gate,
                la(4),
                grads,
            );
            self.linear_backward(
                &mut dh,
                true,
                &dup,
                &a.h2,
                pr(Proj::Up),
                Proj::Up,
                la(5),
                grads,
            );
            drop((dgate, dup));
            let dw = self.norm_grad(ids.mlp_norm, full, grads, &mut scratch_c);
            rmsnorm_backward(
                &mut tmp,
                dw,
                &dh,
                &a.x2,
                self.base.get(ids.mlp_norm),
                &a.rstd2,
                c,
            );
            add(&mut dx, &tmp);
            // x2 = x + o(attention(rope(q(h1)), rope(k(h1)), v(h1))), h1 = norm(x).
            let mut datt = vec![0f32; n * qw];
            self.linear_backward(
                &mut datt,
                false,
                &dx,
                &a.att,
                pr(Proj::O),
                Proj::O,
                la(3),
                grads,
            );
            let mut dqkv = vec![0f32; n * c3];
            for &(s, len) in &b.seqs {
                attention_backward(
                    &mut dqkv[s * c3..(s + len) * c3],
                    &datt[s * qw..(s + len) * qw],
                    &a.qkv[s * c3..(s + len) * c3],
                    &a.att[s * qw..(s + len) * qw],
                    &a.lse[s * nh..(s + len) * nh],
                    AttShape {
                        b: 1,
                        t: len,
                        c: qw,
                        nh,
                    },
                    self.prec,
                );
            }
            drop(datt);
            let (mut dq, mut dk, mut dv) =
                (vec![0f32; n * qw], vec![0f32; n * kvw], vec![0f32; n * kvw]);
            dq.par_chunks_mut(qw)
                .zip(dk.par_chunks_mut(kvw).zip(dv.par_chunks_mut(kvw)))
                .zip(dqkv.par_chunks(c3))
                .for_each(|((dq, (dk, dv)), row)| {
                    dq.copy_from_slice(&row[..qw]);
                    for h in 0..nh {
                        let dst = (h / group) * hd;
                        add(&mut dk[dst..dst + hd], &row[qw + h * hd..qw + (h + 1) * hd]);
                        add(
                            &mut dv[dst..dst + hd],
                            &row[2 * qw + h * hd..2 * qw + (h + 1) * hd],
                        );
                    }
                });
            drop(dqkv);
            rope(&mut dq, nh, hd, &b.seqs, &self.cos, &self.sin, true);
            rope(&mut dk, nkv, hd, &b.seqs, &self.cos, &self.sin, true);
            self.linear_backward(
                &mut dh,
                false,
                &dq,
                &a.h1,
                pr(Proj::Q),
                Proj::Q,
                la(0),
                grads,
            );
            self.linear_backward(
                &mut dh,
                true,
                &dk,
                &a.h1,
                pr(Proj::K),
                Proj::K,
                la(1),
                grads,
            );
            self.linear_backward(
                &mut dh,
                true,
                &dv,
                &a.h1,
                pr(Proj::V),
                Proj::V,
                la(2),
                grads,
            );
            let dw = self.norm_grad(ids.attn_norm, full, grads, &mut scratch_c);
            rmsnorm_backward(
                &mut tmp,
                dw,
                &dh,
                &a.x,
                self.base.get(ids.attn_norm),
                &a.rstd1,
                c,
            );
            add(&mut dx, &tmp);
            // This layer's activations are spent.
            *a = LayerActs::empty();
        }
        if full {
            let e = &self.base.entries[self.embed];
            let de = &mut grads[e.offset..e.offset + e.len];
            for (row, &id) in dx.chunks_exact(c).zip(&b.ids) {
                add(&mut de[id as usize * c..(id as usize + 1) * c], row);
            }
        }
    }

    /// The gradient slot of a norm weight: its place in `grads` (full) or a scratch buffer.
    fn norm_grad<'a>(
        &self,
        id: usize,
        full: bool,
        grads: &'a mut [f32],
        scratch: &'a mut [f32],
    ) -> &'a mut [f32] {
        if full {
            let e = &self.base.entries[id];
            &mut grads[e.offset..e.offset + e.len]
        } else {
            scratch.fill(0.0);
            scratch
        }
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

#[cfg(test)]
mod tests {
    use super::*;
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
                let lo =
                    (a.broadcast_mul(&cos).unwrap() - bb.broadcast_mul(&sin).unwrap()).unwrap();
                let hi =
                    (a.broadcast_mul(&sin).unwrap() + bb.broadcast_mul(&cos).unwrap()).unwrap();
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
}
