//! Attention of new query positions over a key/value cache: the prompt and decoding steps of the
//! pretrained decoders (`models::llama::infer`), grouped-query and causal, in three named
//! numerics:
//!
//! - `KvNumerics::F32`: f32 throughout, in tiles with an online softmax (FlashAttention, Dao et
//!   al. 2022): query blocks against key tiles, each key tile read once per query block;
//! - `KvNumerics::GgmlFlash`: llama.cpp's CPU flash attention (`-fa on`,
//!   `ggml_compute_forward_flash_attn_ext_f16` in ggml-cpu/ops.cpp) op for op: its tiled path for
//!   64 query rows or more (f32 queries, keys and values widened from f16, products as its
//!   `simd_gemm` sums them, one online-softmax update per 64-key tile), its one-row path below
//!   that (an f16 query, per-key updates of an f16 accumulator), and its split of the keys over
//!   the threads for one decoding row against 512 cached positions or more;
//! - `KvNumerics::Ggml`: llama.cpp without flash attention (`-fa off`): F16 products, ggml's
//!   softmax, weights rounded to f16 (`kernels::ggml`).
//!
//! The cache is paged: a layer's keys (or values) are pages of `KV_PAGE` positions, each
//! (rows, kv heads, KV_PAGE, head_dim), f32 or f16 (`KvValue`), so that it grows a page at a time
//! without copying what it holds.

use half::f16;
use rayon::prelude::*;

use super::ggml::{self, F16Dot};
use super::simd::{self, simd_fn};
use super::SyncPtr;

/// Positions per page of a cache.
pub const KV_PAGE: usize = 256;
/// Keys per tile of the tiled kernels, and the fewest query rows llama.cpp's tiled flash
/// attention takes (its `GGML_FA_TILE_KV` and `GGML_FA_TILE_Q`).
pub const KV_TILE: usize = 64;
const FA_TILE_Q: usize = 64;
/// Query positions per block of the tiled kernel (all heads of a kv-head group ride along).
const Q_BLOCK: usize = 32;
/// Cached positions from which llama.cpp splits one decoding row's keys over the threads.
const SPLIT_KV_MIN: usize = 512;

/// Which arithmetic the attention follows (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvNumerics {
    F32,
    GgmlFlash,
    Ggml,
}

/// A value type of the cache.
pub trait KvValue: Copy + Default + Send + Sync + 'static {
    /// dst = src as f32.
    fn widen(src: &[Self], dst: &mut [f32]);
    /// dst = src rounded to this type (to nearest even).
    fn narrow(src: &[f32], dst: &mut [Self]);
}

impl KvValue for f32 {
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
    fn narrow(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl KvValue for f16 {
    fn widen(src: &[f16], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if super::isa::Isa::current() >= super::isa::Isa::Avx2 {
            // SAFETY: the AVX2 tier requires F16C (`Isa::detected`).
            return unsafe { x86::widen(src, dst) };
        }
        dst.iter_mut().zip(src).for_each(|(d, s)| *d = s.to_f32());
    }
    fn narrow(src: &[f32], dst: &mut [f16]) {
        #[cfg(target_arch = "x86_64")]
        if super::isa::Isa::current() >= super::isa::Isa::Avx2 {
            // SAFETY: as above.
            return unsafe { x86::narrow(src, dst) };
        }
        dst.iter_mut()
            .zip(src)
            .for_each(|(d, s)| *d = f16::from_f32(*s));
    }
}

/// One layer's keys or values: `pages[p]` holds positions p·KV_PAGE.. as (rows, nkv, KV_PAGE,
/// hd).
#[derive(Clone, Copy)]
pub struct KvPages<'a, T> {
    pub pages: &'a [Vec<T>],
    pub nkv: usize,
    pub hd: usize,
}

impl<T: KvValue> KvPages<'_, T> {
    /// Values of positions pos..pos + n of (row b, kv head kh); the span stays in one page.
    fn span(&self, b: usize, kh: usize, pos: usize, n: usize) -> &[T] {
        let (page, off) = (pos / KV_PAGE, pos % KV_PAGE);
        debug_assert!(off + n <= KV_PAGE);
        let at = ((b * self.nkv + kh) * KV_PAGE + off) * self.hd;
        &self.pages[page][at..at + n * self.hd]
    }

    /// Positions lo..hi of (b, kh) widened into `dst` ((hi − lo) × hd).
    fn widen_range(&self, b: usize, kh: usize, (lo, hi): (usize, usize), dst: &mut [f32]) {
        let mut p = lo;
        while p < hi {
            let n = (KV_PAGE - p % KV_PAGE).min(hi - p);
            let d = &mut dst[(p - lo) * self.hd..(p - lo + n) * self.hd];
            T::widen(self.span(b, kh, p, n), d);
            p += n;
        }
    }
}

/// (batch, t, start, nh, nkv, hd) of a call: `t` new positions start..start + t of each of
/// `batch` rows, nh query heads over nkv kv heads of hd values.
#[derive(Debug, Clone, Copy)]
pub struct KvShape {
    pub batch: usize,
    pub t: usize,
    pub start: usize,
    pub nh: usize,
    pub nkv: usize,
    pub hd: usize,
}

impl KvShape {
    /// Keys lo..=hi that the query at position p of row b sees: from the row's first real
    /// token (left padding is never attended to; a padding query sees itself only).
    fn keys(&self, pads: &[usize], b: usize, p: usize) -> (usize, usize) {
        (if p < pads[b] { p } else { pads[b] }, p)
    }
}

/// out (batch·t, nh·hd) = causal attention of q (batch·t, nh·hd) over the cached keys and
/// values, which already hold the new positions. `how` picks the arithmetic.
#[allow(clippy::too_many_arguments)]
pub fn kv_attention<T: KvValue>(
    out: &mut [f32],
    q: &[f32],
    k: KvPages<T>,
    v: KvPages<T>,
    s: KvShape,
    pads: &[usize],
    how: KvNumerics,
) {
    assert!(out.len() == s.batch * s.t * s.nh * s.hd && q.len() == out.len());
    match how {
        KvNumerics::Ggml => unflashed(out, q, k, v, s, pads),
        KvNumerics::GgmlFlash if s.batch * s.t < FA_TILE_Q => {
            let n_kv = padded_kv_len(s.start + s.t);
            if s.batch * s.t == 1 && n_kv >= SPLIT_KV_MIN {
                split_keys(out, q, k, v, s, n_kv);
            } else {
                by_rows(out, q, k, v, s, pads);
            }
        }
        _ => tiled(out, q, k, v, s, pads, how == KvNumerics::GgmlFlash),
    }
}

/// The key count llama.cpp's attention sees when `used` positions are cached: its KV cache view
/// is padded to 256 cells (`llama_kv_cache::get_n_kv`); the padding is masked.
fn padded_kv_len(used: usize) -> usize {
    used.div_ceil(256).max(1) * 256
}

thread_local! {
    /// Scratch of the attention tasks, kept between calls.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on a scratch buffer of `n` floats (holding whatever the last task left).
fn with_scratch<R>(n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with_borrow_mut(|buf| {
        if buf.len() < n {
            buf.resize(n, 0.0);
        }
        f(&mut buf[..n])
    })
}

/// The tiled kernel: one task per (row, kv head, block of Q_BLOCK positions), whose query rows
/// are the block's positions × the heads of the group. `exact`: llama.cpp's tiled flash
/// attention (f32 queries, products summed as `simd_gemm` sums them, ggml's expf and its
/// softmax sums per 64-key tile, the running max's rescale by libm's expf).
fn tiled<T: KvValue>(
    out: &mut [f32],
    q: &[f32],
    k: KvPages<T>,
    v: KvPages<T>,
    s: KvShape,
    pads: &[usize],
    exact: bool,
) {
    let (group, hd) = (s.nh / s.nkv, s.hd);
    let hdp = hd.div_ceil(16) * 16;
    let blocks = s.t.div_ceil(Q_BLOCK);
    let tasks = s.batch * s.nkv * blocks;
    let scale = 1.0 / (hd as f32).sqrt();
    let dst = SyncPtr(out.as_mut_ptr());
    let task = |idx: usize| {
        let (b, kh, blk) = (idx / (s.nkv * blocks), idx / blocks % s.nkv, idx % blocks);
        let i0 = blk * Q_BLOCK;
        let npos = Q_BLOCK.min(s.t - i0);
        // Query rows: (position, head in group); padded to a multiple of 4 for the products.
        let rows = npos * group;
        let rows4 = rows.div_ceil(4) * 4;
        let sizes = [
            rows4 * hdp,     // qs
            hdp * KV_TILE,   // kt: the key tile transposed, (hdp, KV_TILE)
            KV_TILE * hdp,   // vt: the value tile, (KV_TILE, hdp)
            KV_TILE * hd,    // wide: one tile widened
            rows4 * KV_TILE, // p: scores, then weights
            rows4 * hdp,     // acc
            3 * rows4,       // running max, sum, live key range
        ];
        with_scratch(sizes.iter().sum(), |buf| {
            let (qs, rest) = buf.split_at_mut(sizes[0]);
            let (kt, rest) = rest.split_at_mut(sizes[1]);
            let (vt, rest) = rest.split_at_mut(sizes[2]);
            let (wide, rest) = rest.split_at_mut(sizes[3]);
            let (p, rest) = rest.split_at_mut(sizes[4]);
            let (acc, rest) = rest.split_at_mut(sizes[5]);
            let (mx, rest) = rest.split_at_mut(rows4);
            let (sum, _) = rest.split_at_mut(rows4);
            let mut live = vec![(1usize, 0usize); rows4];
            qs.fill(0.0);
            acc.fill(0.0);
            sum.fill(0.0);
            for r in 0..rows {
                let (i, g) = (i0 + r / group, r % group);
                let h = kh * group + g;
                let src = ((b * s.t + i) * s.nh + h) * hd;
                qs[r * hdp..r * hdp + hd].copy_from_slice(&q[src..src + hd]);
                live[r] = s.keys(pads, b, s.start + i);
            }
            mx.fill(f32::NEG_INFINITY);
            let lo = live[..rows].iter().map(|l| l.0).min().unwrap_or(0);
            let hi = live[..rows].iter().map(|l| l.1).max().unwrap_or(0);
            let mut j0 = lo / KV_TILE * KV_TILE;
            while j0 <= hi {
                let n = KV_TILE.min(hi + 1 - j0);
                // Keys j0..j0 + n widened, transposed into kt; values into vt (the rest 0).
                k.widen_range(b, kh, (j0, j0 + n), &mut wide[..n * hd]);
                kt.fill(0.0);
                transpose_keys(&wide[..n * hd], hd, kt);
                v.widen_range(b, kh, (j0, j0 + n), &mut wide[..n * hd]);
                vt.fill(0.0);
                for (j, val) in wide[..n * hd].chunks_exact(hd).enumerate() {
                    vt[j * hdp..j * hdp + hd].copy_from_slice(val);
                }
                // p (rows, KV_TILE) = qs (rows, hdp) @ kt (hdp, KV_TILE), from zero.
                p.fill(0.0);
                gemm_acc(p, qs, kt, (rows4, hdp, KV_TILE));
                let at = (j0, scale, exact);
                online_softmax(p, acc, mx, sum, &live[..rows], hdp, at);
                // acc (rows, hdp) += p (rows, KV_TILE) @ vt (KV_TILE, hdp).
                gemm_acc(acc, p, vt, (rows4, KV_TILE, hdp));
                j0 += KV_TILE;
            }
            for r in 0..rows {
                let (i, g) = (i0 + r / group, r % group);
                let h = kh * group + g;
                let inv = if sum[r] == 0.0 { 0.0 } else { 1.0 / sum[r] };
                // SAFETY: each (row, position, head) of out belongs to one task.
                let o = unsafe {
                    let at = ((b * s.t + i) * s.nh + h) * hd;
                    std::slice::from_raw_parts_mut(dst.get().add(at), hd)
                };
                for (o, &a) in o.iter_mut().zip(&acc[r * hdp..r * hdp + hd]) {
                    *o = a * inv;
                }
            }
        });
    };
    run_tasks(tasks, task);
}

/// c (m, n) += a (m, k) @ b (k, n), row-major, m a multiple of 4 and n of 16: each element an
/// FMA chain over k in order from its value in c, as ggml's `simd_gemm` sums it (so the bits
/// do not depend on the vector width or the blocking).
fn gemm_acc(c: &mut [f32], a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize)) {
    assert!(c.len() >= m * n && a.len() >= m * k && b.len() >= k * n && n.is_multiple_of(16));
    #[cfg(target_arch = "x86_64")]
    if super::isa::Isa::current() >= super::isa::Isa::Avx2 {
        // SAFETY: the CPU has AVX2 and FMA; the slices hold the shapes (asserted).
        return unsafe { x86::gemm_acc(c, a, b, (m, k, n)) };
    }
    for (crow, arow) in c.chunks_exact_mut(n).zip(a.chunks_exact(k)).take(m) {
        for (j, c) in crow.iter_mut().enumerate() {
            for (kk, &x) in arow.iter().enumerate() {
                *c = x.mul_add(b[kk * n + j], *c);
            }
        }
    }
}

/// One key tile's online-softmax update for each query row: `p` (rows, KV_TILE) holds the raw
/// products of the keys j0..j0 + KV_TILE and becomes the weights exp(s − m) (0 where masked);
/// `acc` rows and `sum` shrink by exp(m_old − m) where the running max `mx` grows. `live[r]`:
/// the keys row r sees. `exact`: `ggml_compute_forward_flash_attn_ext_tiled`'s steps.
fn online_softmax(
    p: &mut [f32],
    acc: &mut [f32],
    mx: &mut [f32],
    sum: &mut [f32],
    live: &[(usize, usize)],
    hdp: usize,
    (j0, scale, exact): (usize, f32, bool),
) {
    for (r, &(lo, hi)) in live.iter().enumerate() {
        let row = &mut p[r * KV_TILE..(r + 1) * KV_TILE];
        let (a, b) = (lo.max(j0), (hi + 1).min(j0 + KV_TILE));
        if a >= b {
            // No key of this tile: llama.cpp skips the row (its weights are zero).
            row.fill(0.0);
            continue;
        }
        scale_live(row, scale, a - j0, b - j0);
        let m_old = mx[r];
        let m = simd::max(row).max(m_old);
        if m > m_old {
            // libm's expf, as ggml calls `expf` here.
            let f = (m_old - m).exp();
            scale_row(&mut acc[r * hdp..(r + 1) * hdp], f);
            sum[r] *= f;
        }
        mx[r] = m;
        if exact {
            // ggml_vec_soft_max_f32: ggml's expf, each 16-lane chunk reduced in f32, summed in
            // f64, added to the f32 sum.
            ggml::exp_shifted(row, m);
            let tile: f64 = row
                .chunks_exact(16)
                .map(|c| ggml::reduce16(c.try_into().unwrap()) as f64)
                .sum();
            sum[r] = (sum[r] as f64 + tile) as f32;
        } else {
            sum[r] += exp_masked(row, m, a - j0, b - j0);
        }
    }
}

simd_fn! {
    /// row = row · scale for the live keys a..b of a tile, −∞ elsewhere.
    fn scale_live(row: &mut [f32], scale: f32, a: usize, b: usize) {
        row[..a].fill(f32::NEG_INFINITY);
        row[b..].fill(f32::NEG_INFINITY);
        for x in row[a..b].iter_mut() {
            *x *= scale;
        }
    }
}

/// kt (hd, KV_TILE) = the keys (n, hd) transposed: kt[d·KV_TILE + j] = keys[j·hd + d].
fn transpose_keys(keys: &[f32], hd: usize, kt: &mut [f32]) {
    let n = keys.len() / hd;
    assert!(n <= KV_TILE && kt.len() >= hd * KV_TILE);
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if hd.is_multiple_of(8) && super::isa::Isa::current() >= super::isa::Isa::Avx2 {
        // SAFETY: the CPU has AVX2; 8-key groups of 8 dimensions lie inside both (asserted).
        unsafe { x86::transpose_keys(keys, hd, kt) };
        done = n / 8 * 8;
    }
    for (j, key) in keys.chunks_exact(hd).enumerate().skip(done) {
        for (d, &x) in key.iter().enumerate() {
            kt[d * KV_TILE + j] = x;
        }
    }
}

simd_fn! {
    /// row = exp(row − m) for the live keys a..b of a tile, 0 elsewhere; returns the sum.
    fn exp_masked(row: &mut [f32], m: f32, a: usize, b: usize) -> f32 {
        row[..a].fill(0.0);
        row[b..].fill(0.0);
        for x in row[a..b].iter_mut() {
            *x = simd::exp(*x - m);
        }
        simd::sum(row)
    }
}

simd_fn! {
    /// x *= f.
    fn scale_row(x: &mut [f32], f: f32) {
        for x in x.iter_mut() {
            *x *= f;
        }
    }
}

/// Keys per block of the one-row flash attention: widened once for the heads of a group.
const ROW_BLOCK: usize = KV_PAGE;

/// llama.cpp's one-row flash attention (`ggml_compute_forward_flash_attn_ext_f16_one_chunk`)
/// for each query row: fewer than 64 rows in all. One task per (row, position, kv head).
fn by_rows<T: KvValue>(
    out: &mut [f32],
    q: &[f32],
    k: KvPages<T>,
    v: KvPages<T>,
    s: KvShape,
    pads: &[usize],
) {
    let (group, hd) = (s.nh / s.nkv, s.hd);
    let tasks = s.batch * s.t * s.nkv;
    let dst = SyncPtr(out.as_mut_ptr());
    let task = |idx: usize| {
        let (row, kh) = (idx / s.nkv, idx % s.nkv);
        let (b, i) = (row / s.t, row % s.t);
        let keys = s.keys(pads, b, s.start + i);
        let at = (row * s.nh + kh * group) * hd;
        let mut acc = vec![0f32; group * hd];
        let mut st = vec![RowState::new(); group];
        one_row(
            &mut st,
            &mut acc,
            &q[at..at + group * hd],
            (k, v, b, kh),
            keys,
        );
        for (g, st) in st.iter().enumerate() {
            // SAFETY: each (row, head) of out belongs to one task.
            let o = unsafe { std::slice::from_raw_parts_mut(dst.get().add(at + g * hd), hd) };
            st.finish(&acc[g * hd..(g + 1) * hd], o);
        }
    };
    run_tasks(tasks, task);
}

/// The running state of the one-row flash attention over the keys seen so far: max and sum
/// (the accumulator, f16 values held widened, is kept beside it).
#[derive(Clone, Copy)]
struct RowState {
    m: f32,
    s: f32,
}

impl RowState {
    fn new() -> Self {
        RowState {
            m: f32::NEG_INFINITY,
            s: 0.0,
        }
    }

    /// out = acc / s (0 where no key was seen).
    fn finish(&self, acc: &[f32], out: &mut [f32]) {
        let inv = if self.s == 0.0 { 0.0 } else { 1.0 / self.s };
        for (o, &a) in out.iter_mut().zip(acc) {
            *o = a * inv;
        }
    }
}

/// `ggml_compute_forward_flash_attn_ext_f16_one_chunk` for the queries `q` (the heads of one kv
/// head's group, hd each) over keys lo..hi (inclusive) of (row b, kv head kh), advancing `st`
/// and `acc` (group × hd): each query rounded to f16, each product `ggml_vec_dot_f16`'s, then
/// key after key: a new max rescales the f16 accumulator by libm's expf(m_old − m), else the
/// key weighs w = expf(s − m); acc = f16(v·w + acc); sum = sum·ms + w (as GCC contracts it).
/// Keys go in blocks, each widened once for the whole group.
fn one_row<T: KvValue>(
    st: &mut [RowState],
    acc: &mut [f32],
    q: &[f32],
    (k, v, b, kh): (KvPages<T>, KvPages<T>, usize, usize),
    (lo, hi): (usize, usize),
) {
    let (group, hd) = (st.len(), q.len() / st.len());
    let scale = 1.0 / (hd as f32).sqrt();
    let n_max = ROW_BLOCK.min(hi + 1 - lo);
    with_scratch(2 * n_max * hd + 2 * group * n_max + group * hd, |buf| {
        let (keys, rest) = buf.split_at_mut(n_max * hd);
        let (vals, rest) = rest.split_at_mut(n_max * hd);
        let (w, rest) = rest.split_at_mut(group * n_max);
        let (ms, qh) = rest.split_at_mut(group * n_max);
        qh.copy_from_slice(q);
        ggml::round_f16_all(qh);
        let mut j0 = lo;
        while j0 <= hi {
            let n = ROW_BLOCK.min(hi + 1 - j0);
            let (keys, vals) = (&mut keys[..n * hd], &mut vals[..n * hd]);
            k.widen_range(b, kh, (j0, j0 + n), keys);
            v.widen_range(b, kh, (j0, j0 + n), vals);
            for (g, st) in st.iter_mut().enumerate() {
                let (w, ms) = (&mut w[g * n..(g + 1) * n], &mut ms[g * n..(g + 1) * n]);
                ggml::dots_f16(F16Dot::Vec, keys, &qh[g * hd..(g + 1) * hd], w);
                for (w, ms) in w.iter_mut().zip(ms.iter_mut()) {
                    let x = *w * scale;
                    if x > st.m {
                        (*ms, *w) = ((st.m - x).exp(), 1.0);
                        st.m = x;
                    } else {
                        (*ms, *w) = (1.0, (x - st.m).exp());
                    }
                    st.s = st.s.mul_add(*ms, *w);
                }
            }
            mix_f16_rows(acc, vals, &w[..group * n], &ms[..group * n], hd);
            j0 += n;
        }
    });
}

/// acc (heads × hd) over the value rows `vals` (n × hd), key after key: for each head g, where
/// ms[g][j] ≠ 1, acc_g = f16(acc_g · ms) (`ggml_vec_scale_f16`; a factor of 1 changes nothing),
/// then acc_g = f16(fma(v_j, w[g][j], acc_g)) (`ggml_vec_mad_f16`).
fn mix_f16_rows(acc: &mut [f32], vals: &[f32], w: &[f32], ms: &[f32], hd: usize) {
    #[cfg(target_arch = "x86_64")]
    if super::isa::Isa::current() >= super::isa::Isa::Avx2 && hd.is_multiple_of(32) {
        // SAFETY: the AVX2 tier requires FMA and F16C.
        return unsafe { x86::mix_f16_rows(acc, vals, w, ms, hd) };
    }
    let n = vals.len() / hd;
    for (g, acc) in acc.chunks_exact_mut(hd).enumerate() {
        for (j, v) in vals.chunks_exact(hd).enumerate() {
            let f = ms[g * n + j];
            if f != 1.0 {
                acc.iter_mut().for_each(|a| *a = ggml::round_f16(*a * f));
            }
            let wj = w[g * n + j];
            for (a, &x) in acc.iter_mut().zip(v) {
                *a = ggml::round_f16(x.mul_add(wj, *a));
            }
        }
    }
}

/// One decoding row against `n_kv` (padded) cache positions, as llama.cpp splits it: the keys in
/// one chunk per thread, `one_row` over each chunk for every head, then the chunks' partial
/// results merged in order (`ggml_flash_attn_ext_reduce_partials`).
fn split_keys<T: KvValue>(
    out: &mut [f32],
    q: &[f32],
    k: KvPages<T>,
    v: KvPages<T>,
    s: KvShape,
    n_kv: usize,
) {
    let (group, hd, nh) = (s.nh / s.nkv, s.hd, s.nh);
    let p = s.start; // the one new position; it sees keys 0..=p
    let nth = rayon::current_num_threads().max(1);
    let chunk = n_kv.div_ceil(nth);
    // Per chunk and head: m, s, acc.
    let width = 2 + hd;
    let mut partials = vec![0f32; nth * nh * width];
    partials
        .par_chunks_mut(nh * width)
        .enumerate()
        .for_each(|(c, part)| {
            let (lo, hi) = (c * chunk, ((c + 1) * chunk).min(p + 1));
            let mut acc = vec![0f32; group * hd];
            for kh in 0..s.nkv {
                let mut st = vec![RowState::new(); group];
                acc.fill(0.0);
                if lo < hi {
                    let qg = &q[kh * group * hd..(kh + 1) * group * hd];
                    one_row(&mut st, &mut acc, qg, (k, v, 0, kh), (lo, hi - 1));
                }
                for (g, st) in st.iter().enumerate() {
                    let h = kh * group + g;
                    let dst = &mut part[h * width..(h + 1) * width];
                    (dst[0], dst[1]) = (st.m, st.s);
                    dst[2..].copy_from_slice(&acc[g * hd..(g + 1) * hd]);
                }
            }
        });
    for (h, o) in out.chunks_exact_mut(hd).enumerate() {
        let mut st = RowState::new();
        let mut acc = vec![0f32; hd];
        for c in 0..nth {
            let part = &partials[(c * nh + h) * width..(c * nh + h + 1) * width];
            let (mc, sc) = (part[0], part[1]);
            if sc == 0.0 {
                continue;
            }
            let mn = st.m.max(mc);
            let (f_old, f_new) = ((st.m - mn).exp(), (mc - mn).exp());
            for (a, &x) in acc.iter_mut().zip(&part[2..]) {
                *a = a.mul_add(f_old, x * f_new);
            }
            st.s = st.s.mul_add(f_old, sc * f_new);
            st.m = mn;
        }
        st.finish(&acc, o);
    }
}

/// llama.cpp without flash attention, one (row, head) per task: the scores of each query its
/// F16 products (query rounded to f16; `ggml_vec_dot_f16` for one query row, tinyBLAS for
/// several), ggml's softmax, then the F16 product of the weights (rounded to f16) and the
/// values.
fn unflashed<T: KvValue>(
    out: &mut [f32],
    q: &[f32],
    k: KvPages<T>,
    v: KvPages<T>,
    s: KvShape,
    pads: &[usize],
) {
    let (group, hd) = (s.nh / s.nkv, s.hd);
    let scale = 1.0 / (hd as f32).sqrt();
    // ggml's kernels differ between one query row (decoding) and several (a prompt).
    let kind = if s.t == 1 { F16Dot::Vec } else { F16Dot::Tiny };
    let end = s.start + s.t;
    let dst = SyncPtr(out.as_mut_ptr());
    let task = |idx: usize| {
        let (b, h) = (idx / s.nh, idx % s.nh);
        let kh = h / group;
        // The first key any of the new queries sees.
        let lo0 = s.start.min(pads[b]);
        let n = end - lo0;
        with_scratch(2 * n * hd + n + hd, |buf| {
            let (keys, rest) = buf.split_at_mut(n * hd);
            let (vals, rest) = rest.split_at_mut(n * hd);
            let (sc, qh) = rest.split_at_mut(n);
            k.widen_range(b, kh, (lo0, end), keys);
            v.widen_range(b, kh, (lo0, end), vals);
            for i in 0..s.t {
                let (lo, hi) = s.keys(pads, b, s.start + i);
                let at = ((b * s.t + i) * s.nh + h) * hd;
                qh.copy_from_slice(&q[at..at + hd]);
                ggml::round_f16_all(qh);
                let (ks, vs) = (
                    &keys[(lo - lo0) * hd..(hi + 1 - lo0) * hd],
                    &vals[(lo - lo0) * hd..(hi + 1 - lo0) * hd],
                );
                let w = &mut sc[..hi + 1 - lo];
                ggml::dots_f16(kind, ks, qh, w);
                ggml::soft_max(w, lo, scale);
                // SAFETY: each (row, position, head) of out belongs to one task.
                let o = unsafe { std::slice::from_raw_parts_mut(dst.get().add(at), hd) };
                ggml::mix_f16(kind, o, w, vs, lo);
            }
        });
    };
    run_tasks(s.batch * s.nh, task);
}

/// Runs task(0..tasks) on the pool, or on this thread when there is one task (a decoding
/// step's attention is often too small to be worth waking the pool).
fn run_tasks(tasks: usize, task: impl Fn(usize) + Send + Sync) {
    if tasks == 1 {
        task(0);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn widen(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len()) / 8 * 8;
        for i in (0..n).step_by(8) {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        for (d, s) in dst[n..].iter_mut().zip(&src[n..]) {
            *d = s.to_f32();
        }
    }

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn narrow(src: &[f32], dst: &mut [f16]) {
        let n = src.len().min(dst.len()) / 8 * 8;
        for i in (0..n).step_by(8) {
            let x = _mm256_loadu_ps(src.as_ptr().add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x);
            _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
        }
        for (d, s) in dst[n..].iter_mut().zip(&src[n..]) {
            *d = f16::from_f32(*s);
        }
    }

    /// `super::transpose_keys` for the whole groups of 8 keys, 8 × 8 blocks at a time.
    #[target_feature(enable = "avx2")]
    pub unsafe fn transpose_keys(keys: &[f32], hd: usize, kt: &mut [f32]) {
        let n = keys.len() / hd;
        for j in (0..n / 8 * 8).step_by(8) {
            for d in (0..hd).step_by(8) {
                let rows =
                    std::array::from_fn(|l| _mm256_loadu_ps(keys.as_ptr().add((j + l) * hd + d)));
                for (t, v) in crate::kernels::sgemm::x86::transpose8(rows)
                    .into_iter()
                    .enumerate()
                {
                    _mm256_storeu_ps(kt.as_mut_ptr().add((d + t) * super::KV_TILE + j), v);
                }
            }
        }
    }

    /// `super::gemm_acc`: tiles of 6 rows × 16 columns (12 accumulators, as BLIS's Haswell
    /// kernel), each loaded from c, fed k FMAs in order, stored back.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn gemm_acc(c: &mut [f32], a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize)) {
        let (cp, ap, bp) = (c.as_mut_ptr(), a.as_ptr(), b.as_ptr());
        let mut i = 0;
        while i < m {
            let mr = 6.min(m - i);
            for j in (0..n).step_by(16) {
                let (c, a, b) = (cp.add(i * n + j), ap.add(i * k), bp.add(j));
                match mr {
                    6 => tile::<6>(c, a, b, (k, n)),
                    5 => tile::<5>(c, a, b, (k, n)),
                    4 => tile::<4>(c, a, b, (k, n)),
                    3 => tile::<3>(c, a, b, (k, n)),
                    2 => tile::<2>(c, a, b, (k, n)),
                    _ => tile::<1>(c, a, b, (k, n)),
                }
            }
            i += mr;
        }
    }

    /// c (M, 16) += a (M, k) @ b (k, 16); rows of a k apart, of b and c n apart.
    #[inline(always)]
    unsafe fn tile<const M: usize>(
        c: *mut f32,
        a: *const f32,
        b: *const f32,
        (k, n): (usize, usize),
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        for (r, acc) in acc.iter_mut().enumerate() {
            acc[0] = _mm256_loadu_ps(c.add(r * n));
            acc[1] = _mm256_loadu_ps(c.add(r * n + 8));
        }
        for kk in 0..k {
            let b0 = _mm256_loadu_ps(b.add(kk * n));
            let b1 = _mm256_loadu_ps(b.add(kk * n + 8));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a.add(r * k + kk));
                acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(c.add(r * n), acc[0]);
            _mm256_storeu_ps(c.add(r * n + 8), acc[1]);
        }
    }

    /// `super::mix_f16_rows`, 32 values of d at a time for up to 3 heads, so that 12
    /// independent rounding chains hide each other's latency.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn mix_f16_rows(acc: &mut [f32], vals: &[f32], w: &[f32], ms: &[f32], hd: usize) {
        let (heads, n) = (acc.len() / hd, vals.len() / hd);
        let round = |x: __m256| _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x));
        for g0 in (0..heads).step_by(3) {
            let gs = 3.min(heads - g0);
            for d0 in (0..hd).step_by(32) {
                let mut a = [[_mm256_setzero_ps(); 4]; 3];
                for (g, a) in a.iter_mut().enumerate().take(gs) {
                    for (i, a) in a.iter_mut().enumerate() {
                        *a = _mm256_loadu_ps(acc.as_ptr().add((g0 + g) * hd + d0 + 8 * i));
                    }
                }
                for j in 0..n {
                    let vp = vals.as_ptr().add(j * hd + d0);
                    let vj = [0, 1, 2, 3].map(|i| _mm256_loadu_ps(vp.add(8 * i)));
                    for (g, a) in a.iter_mut().enumerate().take(gs) {
                        let f = *ms.get_unchecked((g0 + g) * n + j);
                        if f != 1.0 {
                            let fv = _mm256_set1_ps(f);
                            for a in a.iter_mut() {
                                *a = round(_mm256_mul_ps(*a, fv));
                            }
                        }
                        let wv = _mm256_set1_ps(*w.get_unchecked((g0 + g) * n + j));
                        for (a, &x) in a.iter_mut().zip(&vj) {
                            *a = round(_mm256_fmadd_ps(x, wv, *a));
                        }
                    }
                }
                for (g, a) in a.iter().enumerate().take(gs) {
                    for (i, a) in a.iter().enumerate() {
                        _mm256_storeu_ps(acc.as_mut_ptr().add((g0 + g) * hd + d0 + 8 * i), *a);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
