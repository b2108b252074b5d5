//! Llama inference on flat f32 buffers: the function of `Llama::forward`, without a candle op per
//! step (each would cost an allocation and a thread-pool hand-off, which dominate at batch 1).
//! The weights are the model's own tensors, read in place. The KV cache is paged (pages of
//! `KV_PAGE` positions), so a step appends without copying the past; a long prompt goes through
//! in pieces of `PREFILL_CHUNK` tokens.

use candle_core::{Device, Storage, Tensor};
use half::f16;
use rayon::prelude::*;

use super::{Linear, Llama, LlamaConfig, RopeStyle};
use crate::error::{Error, Result};
use crate::kernels::ggml;
use crate::kernels::quant::{matmul_group, QuantMatrix};
use crate::kernels::simd::{self, simd_fn};
use crate::kernels::{kv_attention, KvNumerics, KvPages, KvShape, KvValue, KV_PAGE};
use crate::kernels::{matmul, Op};
use crate::kernels::{rmsnorm_forward, swiglu_forward};

/// The key/value cache of `step`, for `rows` sequences at the same position: per layer, pages of
/// `KV_PAGE` positions (`kernels::kv_attention`), f16 values for the quantized model (llama.cpp's
/// cache) and f32 otherwise. It grows a page at a time, never copying what it holds.
#[derive(Debug, Clone)]
pub struct Cache {
    store: Store,
    rows: usize,
    /// Positions held (the same for every row).
    pub pos: usize,
    /// Values per (row, head, position): head_dim; and kv heads.
    hd: usize,
    nkv: usize,
    /// Per row, the leading positions that hold padding (left-padded prompts of different
    /// lengths): never attended to, and rotary positions count from the first real token.
    pads: Vec<usize>,
}

/// Keys and values of every layer: [layer][page], each page (rows, kv heads, KV_PAGE, hd).
#[derive(Debug, Clone)]
struct Pages<T> {
    k: Vec<Vec<Vec<T>>>,
    v: Vec<Vec<Vec<T>>>,
}

#[derive(Debug, Clone)]
enum Store {
    F32(Pages<f32>),
    F16(Pages<f16>),
}

/// Runs `$body` with `$p` bound to the cache's pages, whatever their value type.
macro_rules! with_pages {
    ($store:expr, $p:ident => $body:expr) => {
        match $store {
            Store::F32($p) => $body,
            Store::F16($p) => $body,
        }
    };
}

impl<T: KvValue> Pages<T> {
    fn new(layers: usize) -> Self {
        Pages {
            k: vec![Vec::new(); layers],
            v: vec![Vec::new(); layers],
        }
    }

    /// Adds pages of `page_len` values until every layer holds `pages` of them.
    fn grow(&mut self, pages: usize, page_len: usize) {
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            while layer.len() < pages {
                layer.push(vec![T::default(); page_len]);
            }
        }
    }

    /// Writes `src` (rows·t, nkv·hd: rows of t positions from `start`) into layer l's keys
    /// (`values` false) or values.
    fn append(&mut self, l: usize, values: bool, src: &[f32], (t, start, nkv, hd): Dims) {
        let pages = if values {
            &mut self.v[l]
        } else {
            &mut self.k[l]
        };
        for (r, row) in src.chunks_exact(nkv * hd).enumerate() {
            let (b, p) = (r / t, start + r % t);
            let page = &mut pages[p / KV_PAGE];
            for (kh, head) in row.chunks_exact(hd).enumerate() {
                let at = ((b * nkv + kh) * KV_PAGE + p % KV_PAGE) * hd;
                T::narrow(head, &mut page[at..at + hd]);
            }
        }
    }

    /// Keeps rows `rows` (of `old` rows) of the positions held, in that order.
    fn select(&mut self, rows: &[usize], (nkv, hd): (usize, usize)) {
        let per_row = nkv * KV_PAGE * hd;
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            for page in layer.iter_mut() {
                let mut out = vec![T::default(); rows.len() * per_row];
                for (dst, &r) in out.chunks_exact_mut(per_row).zip(rows) {
                    dst.copy_from_slice(&page[r * per_row..(r + 1) * per_row]);
                }
                *page = out;
            }
        }
    }
}

/// (t, start, nkv, hd) of an append.
type Dims = (usize, usize, usize, usize);

impl Cache {
    /// An empty cache for `rows` sequences; `f16` values (llama.cpp's cache) or f32.
    pub fn new(cfg: &LlamaConfig, rows: usize, f16: bool) -> Self {
        let layers = cfg.num_hidden_layers;
        Cache {
            store: match f16 {
                true => Store::F16(Pages::new(layers)),
                false => Store::F32(Pages::new(layers)),
            },
            rows,
            pos: 0,
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

    /// Makes room for `need` positions per (row, head).
    fn reserve(&mut self, need: usize) {
        let page_len = self.rows * self.nkv * KV_PAGE * self.hd;
        with_pages!(&mut self.store, p => p.grow(need.div_ceil(KV_PAGE), page_len));
    }

    /// Keeps rows `rows` of the cache, in that order (repeats allowed); an identity selection
    /// copies nothing.
    pub fn select_rows(&mut self, rows: &[usize]) {
        if rows.len() == self.rows && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return;
        }
        let dims = (self.nkv, self.hd);
        with_pages!(&mut self.store, p => p.select(rows, dims));
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

/// Query positions per pass of a prompt (llama.cpp's micro-batch, 512 tokens): a long prompt
/// goes through the model in pieces of this many tokens over all rows, so that its activations
/// stay those of one piece, whatever its length.
pub const PREFILL_CHUNK: usize = 512;

/// Feeds `tokens` ((batch, len) row-major) after the cache's positions; returns the logits of
/// the last position of each row, (batch, vocab).
pub fn step(model: &Llama, tokens: &[u32], batch: usize, cache: &mut Cache) -> Result<Vec<f32>> {
    let t = tokens.len() / batch.max(1);
    if t == 0 || t * batch != tokens.len() || batch != cache.rows {
        return Err(Error::Invalid(format!(
            "step: {} tokens do not form {batch} rows (the cache has {} rows)",
            tokens.len(),
            cache.rows
        )));
    }
    check_room(model, cache, t)?;
    let piece = (PREFILL_CHUNK / batch).max(1);
    let mut c0 = 0;
    loop {
        let n = piece.min(t - c0);
        let ids: Vec<u32> = (0..batch)
            .flat_map(|b| tokens[b * t + c0..b * t + c0 + n].iter().copied())
            .collect();
        let x = layers(
            model,
            &ids,
            &mut [Seg {
                cache: &mut *cache,
                t: n,
            }],
        )?;
        c0 += n;
        if c0 == t {
            let ends: Vec<usize> = (1..=batch).map(|b| b * n).collect();
            return logits(model, &x, &ends);
        }
    }
}

/// Several sequences, each with its own one-row cache, through one forward pass (continuous
/// batching): their tokens share the products; each attends over its own cache. Returns each
/// sequence's next-token logits. Every row is the same bits as when stepped alone.
pub fn step_many(model: &Llama, feeds: &mut [(&[u32], &mut Cache)]) -> Result<Vec<Vec<f32>>> {
    for (tokens, cache) in feeds.iter_mut() {
        if tokens.is_empty() || cache.rows != 1 {
            return Err(Error::Invalid(
                "step_many: each sequence feeds one or more tokens into a one-row cache".into(),
            ));
        }
        check_room(model, cache, tokens.len())?;
    }
    let ids: Vec<u32> = feeds.iter().flat_map(|(t, _)| t.iter().copied()).collect();
    // Each sequence's last row in the pass.
    let ends: Vec<usize> = feeds
        .iter()
        .scan(0, |end, (tokens, _)| {
            *end += tokens.len();
            Some(*end)
        })
        .collect();
    let mut segs: Vec<Seg> = feeds
        .iter_mut()
        .map(|(tokens, cache)| Seg {
            cache,
            t: tokens.len(),
        })
        .collect();
    let x = layers(model, &ids, &mut segs)?;
    let all = logits(model, &x, &ends)?;
    Ok(all
        .chunks_exact(model.cfg.vocab_size)
        .map(<[f32]>::to_vec)
        .collect())
}

/// Refuses `t` more positions past the context; reserves their room.
fn check_room(model: &Llama, cache: &mut Cache, t: usize) -> Result<()> {
    let context = model.cfg.max_position_embeddings;
    if cache.pos + t > context {
        return Err(Error::Invalid(format!(
            "{} positions exceed the model's context of {context}",
            cache.pos + t
        )));
    }
    cache.reserve(cache.pos + t);
    Ok(())
}

/// A cache and the t positions of each of its rows that a pass feeds.
struct Seg<'a> {
    cache: &'a mut Cache,
    t: usize,
}

/// Runs `tokens` (for each segment in turn, (its rows, its t), at positions cache.pos.. of each
/// row, room reserved) through the blocks, appending their keys and values; returns the
/// hidden states (tokens, hidden).
fn layers(model: &Llama, tokens: &[u32], segs: &mut [Seg]) -> Result<Vec<f32>> {
    let cfg = &model.cfg;
    let (c, nh, nkv, hd) = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.n_kv_heads(),
        cfg.head_dim(),
    );
    let (inter, n, eps) = (cfg.intermediate_size, tokens.len(), cfg.rms_norm_eps as f32);
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
    // The quantized model computes as llama.cpp does (see `Llama::quantized`), its attention
    // with or without flash attention (`Llama::flash_attn`).
    let exact = model.quantized;
    let how = match (exact, model.flash_attn) {
        (false, _) => KvNumerics::F32,
        (true, true) => KvNumerics::GgmlFlash,
        (true, false) => KvNumerics::Ggml,
    };
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
        let mut r0 = 0;
        for seg in segs.iter_mut() {
            let (cache, t) = (&mut *seg.cache, seg.t);
            let (batch, start) = (cache.rows, cache.pos);
            let rows = r0..r0 + batch * t;
            r0 = rows.end;
            let q = &mut q[rows.start * nh * hd..rows.end * nh * hd];
            let k = &mut k[rows.start * nkv * hd..rows.end * nkv * hd];
            let v = &v[rows.start * nkv * hd..rows.end * nkv * hd];
            let att = &mut att[rows.start * nh * hd..rows.end * nh * hd];
            // Rotary position: from each row's first real token (padding sits at 0).
            let pads = &cache.pads;
            let pos = |r: usize| (start + r % t).saturating_sub(pads[r / t]);
            rope(q, nh, hd, model.rope, cos, sin, pos, exact);
            rope(k, nkv, hd, model.rope, cos, sin, pos, exact);
            // Append k and v at positions start..start + t of each (row, kv head).
            let dims = (t, start, nkv, hd);
            let shape = KvShape {
                batch,
                t,
                start,
                nh,
                nkv,
                hd,
            };
            with_pages!(&mut cache.store, p => {
                p.append(l, false, k, dims);
                p.append(l, true, v, dims);
                let view = |pages| KvPages { pages, nkv, hd };
                kv_attention(att, q, view(&p.k[l]), view(&p.v[l]), shape, &cache.pads, how);
            });
        }
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
    for seg in segs.iter_mut() {
        seg.cache.pos += seg.t;
    }
    Ok(x)
}

/// The logits (rows, vocab) of the hidden states x at positions `ends[i] - 1`: the last
/// position of each row.
fn logits(model: &Llama, x: &[f32], ends: &[usize]) -> Result<Vec<f32>> {
    let c = model.cfg.hidden_size;
    let eps = model.cfg.rms_norm_eps as f32;
    let batch = ends.len();
    // Only the last position of each row needs logits.
    let last: Vec<f32> = ends
        .iter()
        .flat_map(|&e| x[(e - 1) * c..e * c].iter().copied())
        .collect();
    let mut normed = vec![0f32; batch * c];
    with_f32(&model.norm, |w| match model.quantized {
        true => ggml::rms_norm(&mut normed, &last, w, eps),
        false => rmsnorm_forward(&mut normed, &mut vec![0f32; batch], &last, w, eps, c),
    })?;
    let mut logits = vec![0f32; batch * model.cfg.vocab_size];
    apply(&model.head, &normed, batch, &mut logits)?;
    Ok(logits)
}
