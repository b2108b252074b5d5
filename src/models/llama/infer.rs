//! Llama inference on flat f32 buffers: the function of `Llama::forward`, without a candle op per
//! step (each would cost an allocation and a thread-pool hand-off, which dominate at batch 1).
//! The weights are the model's own tensors, read in place. The KV cache holds, per layer,
//! (row, kv head, position, head_dim) in one buffer that grows by doubling, so a step appends
//! without copying the past.

use candle_core::{Device, Storage, Tensor};
use rayon::prelude::*;

use super::{Linear, Llama, LlamaConfig, RopeStyle};
use crate::error::{Error, Result};
use crate::kernels::ggml;
use crate::kernels::quant::{matmul_group, QuantMatrix};
use crate::kernels::simd::{self, simd_fn};
use crate::kernels::{cached_attention, rmsnorm_forward, swiglu_forward};
use crate::kernels::{matmul, Op};

/// The key/value cache of `step`, for `rows` sequences at the same position.
#[derive(Debug, Clone)]
pub struct Cache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    rows: usize,
    /// Positions held (the same for every row).
    pub pos: usize,
    /// Positions each (row, head) has room for.
    cap: usize,
    /// Values per (row, head, position): head_dim; and kv heads.
    hd: usize,
    nkv: usize,
    /// Per row, the leading positions that hold padding (left-padded prompts of different
    /// lengths): never attended to, and rotary positions count from the first real token.
    pads: Vec<usize>,
}

impl Cache {
    pub fn new(cfg: &LlamaConfig, rows: usize) -> Self {
        Cache {
            k: vec![Vec::new(); cfg.num_hidden_layers],
            v: vec![Vec::new(); cfg.num_hidden_layers],
            rows,
            pos: 0,
            cap: 0,
            hd: cfg.head_dim(),
            nkv: cfg.n_kv_heads(),
            pads: vec![0; rows],
        }
    }

    /// Marks the first `pads[i]` positions of row i as padding; before the first step only.
    pub fn set_padding(&mut self, pads: &[usize]) -> Result<()> {
        if self.pos != 0 || pads.len() != self.rows {
            return Err(Error::Invalid(format!(
                "padding is set before the first step, one count per row ({} rows)",
                self.rows
            )));
        }
        self.pads = pads.to_vec();
        Ok(())
    }

    /// Grows the room per (row, head) to at least `need` positions, keeping what is held.
    fn reserve(&mut self, need: usize) {
        if need <= self.cap {
            return;
        }
        let cap = need.max(2 * self.cap).max(64);
        let (old, hd, heads) = (self.cap, self.hd, self.rows * self.nkv);
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            let mut grown = vec![0f32; heads * cap * hd];
            for h in 0..heads {
                let len = self.pos * hd;
                grown[h * cap * hd..h * cap * hd + len]
                    .copy_from_slice(&buf[h * old * hd..h * old * hd + len]);
            }
            *buf = grown;
        }
        self.cap = cap;
    }

    /// Keeps rows `rows` of the cache, in that order (repeats allowed). Only the positions held
    /// are copied; an identity selection copies nothing.
    pub fn select_rows(&mut self, rows: &[usize]) {
        if rows.len() == self.rows && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return;
        }
        let (cap, hd, nkv) = (self.cap, self.hd, self.nkv);
        let (per_head, used) = (cap * hd, self.pos * hd);
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            if buf.is_empty() {
                continue;
            }
            let mut out = vec![0f32; rows.len() * nkv * per_head];
            for (dst_row, &r) in rows.iter().enumerate() {
                for h in 0..nkv {
                    let (src, dst) = ((r * nkv + h) * per_head, (dst_row * nkv + h) * per_head);
                    out[dst..dst + used].copy_from_slice(&buf[src..src + used]);
                }
            }
            *buf = out;
        }
        self.pads = rows.iter().map(|&r| self.pads[r]).collect();
        self.rows = rows.len();
    }
}

/// Runs `f` on the f32 data of a contiguous CPU tensor, in place.
pub(super) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(Error::Invalid(
            "the Llama decoding path runs on CPU tensors".into(),
        ));
    };
    let data = cpu.as_slice::<f32>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::Invalid("a Llama weight is not contiguous".into()))?;
    Ok(f(&data[start..end]))
}

/// out (m, out_features) = x (m, in_features) @ Wᵀ.
fn apply(lin: &Linear, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
    match lin {
        Linear::Dense(w) => {
            let (rows, cols) = w.dims2()?;
            with_f32(w, |w| {
                if m <= 8 {
                    dense_few_rows(x, m, w, rows, cols, out)
                } else {
                    matmul((m, rows, cols), out, false, Op::N(x), Op::T(w), 1.0)
                }
            })?;
        }
        Linear::Blocks(q) => q.matmul(x, m, out),
        Linear::Quantized(q) => {
            let xt = Tensor::from_slice(x, (m, x.len() / m), &Device::Cpu)?;
            let y = candle_core::Module::forward(q, &xt)?.flatten_all()?;
            out.copy_from_slice(&y.to_vec1::<f32>()?);
        }
    }
    Ok(())
}

simd_fn! {
    /// Rows of W (each `cols` long) dotted with the m rows of x: out[r·m + i] = x_i · w_r.
    fn dense_chunk(out: &mut [f32], w: &[f32], x: &[f32], cols: usize) {
        let m = x.len() / cols;
        for (o, wr) in out.chunks_exact_mut(m).zip(w.chunks_exact(cols)) {
            for (i, o) in o.iter_mut().enumerate() {
                *o = simd::dot(&x[i * cols..(i + 1) * cols], wr);
            }
        }
    }
}

/// out (m, rows) = x (m, cols) @ Wᵀ for a few rows of x (decoding, beams): each row of W is read
/// once, contiguously, for all of them, with no packing of W (a GEMM would pack all of W per
/// call).
fn dense_few_rows(x: &[f32], m: usize, w: &[f32], rows: usize, cols: usize, out: &mut [f32]) {
    const CHUNK: usize = 64;
    let mut by_row = vec![0f32; rows * m];
    by_row
        .par_chunks_mut(CHUNK * m)
        .zip(w.par_chunks(CHUNK * cols))
        .for_each(|(o, w)| dense_chunk(o, w, x, cols));
    for (r, vals) in by_row.chunks_exact(m).enumerate() {
        for (i, &v) in vals.iter().enumerate() {
            out[i * rows + r] = v;
        }
    }
}

/// outs[g] = x @ lins[g]ᵀ for linears sharing their input: one parallel region when all are
/// block-quantized, one product after the other otherwise.
fn apply_group(lins: &[&Linear], x: &[f32], m: usize, outs: &mut [&mut [f32]]) -> Result<()> {
    let blocks: Option<Vec<&QuantMatrix>> = lins
        .iter()
        .map(|l| match l {
            Linear::Blocks(q) => Some(&**q),
            _ => None,
        })
        .collect();
    if let Some(mats) = blocks {
        matmul_group(&mats, x, m, outs);
        return Ok(());
    }
    for (lin, out) in lins.iter().zip(outs.iter_mut()) {
        apply(lin, x, m, out)?;
    }
    Ok(())
}

/// Rotates each head of `x` (rows of `heads` × hd) in place at positions `pos(row)`; `exact`
/// rotates adjacent pairs with llama.cpp's fused multiply-adds.
#[allow(clippy::too_many_arguments)]
fn rope(
    x: &mut [f32],
    heads: usize,
    hd: usize,
    style: RopeStyle,
    cos: &[f32],
    sin: &[f32],
    pos: impl Fn(usize) -> usize,
    exact: bool,
) {
    let half = hd / 2;
    for (r, row) in x.chunks_exact_mut(heads * hd).enumerate() {
        let p = pos(r);
        let (c, s) = (
            &cos[p * half..(p + 1) * half],
            &sin[p * half..(p + 1) * half],
        );
        for head in row.chunks_exact_mut(hd) {
            for i in 0..half {
                let (a, b) = match style {
                    RopeStyle::Halves => (i, i + half),
                    RopeStyle::Adjacent => (2 * i, 2 * i + 1),
                };
                let (x0, x1) = (head[a], head[b]);
                (head[a], head[b]) = if exact {
                    ggml::rotate_pair(x0, x1, c[i], s[i])
                } else {
                    (x0 * c[i] - x1 * s[i], x0 * s[i] + x1 * c[i])
                };
            }
        }
    }
}

/// Feeds `tokens` ((batch, len) row-major) after the cache's positions; returns the logits of
/// the last position of each row, (batch, vocab).
pub fn step(model: &Llama, tokens: &[u32], batch: usize, cache: &mut Cache) -> Result<Vec<f32>> {
    let cfg = &model.cfg;
    let t = tokens.len() / batch.max(1);
    if t == 0 || t * batch != tokens.len() || batch != cache.rows {
        return Err(Error::Invalid(format!(
            "step: {} tokens do not form {batch} rows (the cache has {} rows)",
            tokens.len(),
            cache.rows
        )));
    }
    let start = cache.pos;
    if start + t > cfg.max_position_embeddings {
        return Err(Error::Invalid(format!(
            "{} positions exceed the model's context of {}",
            start + t,
            cfg.max_position_embeddings
        )));
    }
    cache.reserve(start + t);
    let (c, nh, nkv, hd) = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.n_kv_heads(),
        cfg.head_dim(),
    );
    let (inter, n, eps) = (cfg.intermediate_size, batch * t, cfg.rms_norm_eps as f32);
    let mut x = model.embed_rows(tokens)?;
    let (mut h, mut rstd, mut tmp) = (vec![0f32; n * c], vec![0f32; n], vec![0f32; n * c]);
    let (mut q, mut k, mut v) = (
        vec![0f32; n * nh * hd],
        vec![0f32; n * nkv * hd],
        vec![0f32; n * nkv * hd],
    );
    let mut att = vec![0f32; n * nh * hd];
    let (mut g, mut u, mut m) = (
        vec![0f32; n * inter],
        vec![0f32; n * inter],
        vec![0f32; n * inter],
    );
    let (cos, sin) = (&model.cos_table, &model.sin_table);
    let cap = cache.cap;
    // The quantized model computes as llama.cpp does (see `Llama::quantized`).
    let exact = model.quantized;
    let norm = |out: &mut [f32], rstd: &mut [f32], x: &[f32], w: &Tensor| {
        with_f32(w, |w| match exact {
            true => ggml::rms_norm(out, x, w, eps),
            false => rmsnorm_forward(out, rstd, x, w, eps, c),
        })
    };
    for (l, block) in model.blocks.iter().enumerate() {
        norm(&mut h, &mut rstd, &x, &block.attn_norm)?;
        apply_group(
            &[&block.q, &block.k, &block.v],
            &h,
            n,
            &mut [&mut q, &mut k, &mut v],
        )?;
        // Rotary position: from each row's first real token (padding sits at 0).
        let pads = &cache.pads;
        let pos = |r: usize| (start + r % t).saturating_sub(pads[r / t]);
        rope(&mut q, nh, hd, model.rope, cos, sin, pos, exact);
        rope(&mut k, nkv, hd, model.rope, cos, sin, pos, exact);
        if exact {
            // llama.cpp's f16 KV cache, and the query rounded to f16 for the product with it.
            for x in [&mut q, &mut k, &mut v] {
                ggml::round_f16_all(x);
            }
        }
        // Append k and v at positions start..start + t of each (row, kv head).
        for (buf, src) in [(&mut cache.k[l], &k), (&mut cache.v[l], &v)] {
            for r in 0..n {
                let (b, p) = (r / t, start + r % t);
                for kh in 0..nkv {
                    let dst = ((b * nkv + kh) * cap + p) * hd;
                    buf[dst..dst + hd]
                        .copy_from_slice(&src[(r * nkv + kh) * hd..(r * nkv + kh + 1) * hd]);
                }
            }
        }
        let (kl, vl, shape) = (&cache.k[l], &cache.v[l], (nh, nkv, hd, cap));
        cached_attention(&mut att, &q, kl, vl, (t, start), shape, &cache.pads, exact);
        apply(&block.o, &att, n, &mut tmp)?;
        x.iter_mut().zip(&tmp).for_each(|(x, y)| *x += y);
        norm(&mut h, &mut rstd, &x, &block.mlp_norm)?;
        apply_group(&[&block.gate, &block.up], &h, n, &mut [&mut g, &mut u])?;
        match exact {
            true => ggml::swiglu(&mut m, &g, &u),
            false => swiglu_forward(&mut m, &g, &u),
        }
        apply(&block.down, &m, n, &mut tmp)?;
        x.iter_mut().zip(&tmp).for_each(|(x, y)| *x += y);
    }
    cache.pos += t;
    // Only the last position of each row needs logits.
    let last: Vec<f32> = (0..batch)
        .flat_map(|b| x[((b + 1) * t - 1) * c..(b + 1) * t * c].iter().copied())
        .collect();
    let mut normed = vec![0f32; batch * c];
    let mut rs = vec![0f32; batch];
    norm(&mut normed, &mut rs, &last, &model.norm)?;
    let mut logits = vec![0f32; batch * cfg.vocab_size];
    apply(&model.head, &normed, batch, &mut logits)?;
    Ok(logits)
}
