//! The layers of the fast path, each forward beside its backward, over flat row-major f32
//! buffers. Rows are the N = B·T token positions. Row-wise kernels split rows across rayon's
//! pool; reductions over rows (bias and LayerNorm parameter gradients) split columns instead, so
//! that no thread-local partial sums, and no allocation, are needed.

use gemm::Parallelism;
use rayon::prelude::*;

use super::bf16::{self, Causal};
use super::simd::{self, simd_fn};
use super::Precision;

/// Elements one rayon task should at least cover, so that scheduling stays a small cost.
pub(super) const TASK_ELEMS: usize = 8192;

/// Rows per rayon task for rows of `row_len` elements.
pub(super) fn rows_per_task(row_len: usize) -> usize {
    (TASK_ELEMS / row_len.max(1)).max(1)
}

/// Width of the column strip each task owns in a column reduction: the columns split evenly
/// over the threads, in multiples of 16 floats (one 64-byte cache line) to avoid false sharing.
pub(super) fn col_strip(cols: usize) -> usize {
    let per_thread = cols.div_ceil(rayon::current_num_threads().max(1));
    per_thread.div_ceil(16).max(1) * 16
}

/// A raw pointer shared by rayon tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: used only where every task writes a part of the buffer no other task touches.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    /// A method (not field access) so that closures capture the whole `Sync` wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[inline(always)]
fn add_assign(dst: &mut [f32], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

// ------------------------------------------------------------------------------------------------
// Matmul

/// An operand of `matmul`: a row-major buffer holding the matrix, or its transpose.
#[derive(Clone, Copy)]
pub enum Op<'a> {
    /// The matrix (r, c) stored row-major.
    N(&'a [f32]),
    /// The matrix (r, c) given as its transpose (c, r) stored row-major.
    T(&'a [f32]),
}

impl Op<'_> {
    /// The operand as an (rows, cols) strided matrix, checking that the buffer holds it.
    fn strided(self, rows: usize, cols: usize) -> Strided {
        let (s, rs, cs) = match self {
            Op::N(s) => (s, cols, 1),
            Op::T(s) => (s, 1, rows),
        };
        assert!(s.len() >= rows * cols, "matmul operand too small");
        Strided {
            ptr: s.as_ptr(),
            rs,
            cs,
        }
    }
}

/// A strided matrix operand: element (i, j) at ptr[i·rs + j·cs].
#[derive(Clone, Copy)]
struct Strided {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

/// Row-major operand with row stride `rs`.
fn rm(ptr: *const f32, rs: usize) -> Strided {
    Strided { ptr, rs, cs: 1 }
}

/// The transpose of a row-major matrix with row stride `rs`.
fn tr(ptr: *const f32, rs: usize) -> Strided {
    Strided { ptr, rs: 1, cs: rs }
}

/// dst (m, n), row stride `ld`, = [dst +] scale · a (m, k) @ b (k, n).
///
/// # Safety
/// Every element of the three matrices must lie inside live allocations, and dst must not
/// overlap a, b or memory another thread accesses meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    ld: usize,
    accumulate: bool,
    a: Strided,
    b: Strided,
    scale: f32,
    par: Parallelism,
) {
    let i = |x: usize| x as isize;
    // gemm computes dst = alpha·dst + beta·a@b, reading dst only when asked to.
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        i(ld),
        accumulate,
        a.ptr,
        i(a.cs),
        i(a.rs),
        b.ptr,
        i(b.cs),
        i(b.rs),
        1.0,
        scale,
        false,
        false,
        false,
        par,
    )
}

/// The attention tiles' products run on the calling thread: the tasks are the parallelism.
const SERIAL: Parallelism = Parallelism::None;

/// dst (m, n) = [dst +] scale · a (m, k) @ b (k, n) in f32; see `matmul_with`.
pub fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    a: Op,
    b: Op,
    scale: f32,
) {
    matmul_with(Precision::F32, (m, n, k), dst, accumulate, a, b, scale)
}

/// dst (m, n) = [dst +] scale · a (m, k) @ b (k, n), over rayon's pool (gemm splits the work
/// when the pool has more than one thread). Transposed operands are read in place. With
/// `Precision::Bf16` a and b are rounded to bf16 and the products summed in f32 by `bf16::gemm`
/// (AVX512-BF16, or its software emulation on other CPUs).
#[allow(clippy::too_many_arguments)]
pub fn matmul_with(
    prec: Precision,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    a: Op,
    b: Op,
    scale: f32,
) {
    assert!(dst.len() >= m * n, "matmul destination too small");
    let (a, b) = (a.strided(m, k), b.strided(k, n));
    if prec == Precision::Bf16 {
        let mat = |s: Strided| bf16::Mat {
            ptr: s.ptr,
            rs: s.rs,
            cs: s.cs,
        };
        let beta = if accumulate { 1.0 } else { 0.0 };
        // SAFETY: as below.
        return unsafe { bf16::gemm((m, n, k), dst.as_mut_ptr(), n, beta, mat(a), mat(b), scale) };
    }
    let par = match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    };
    // SAFETY: `strided` checked that both operands hold their matrices and the assert above
    // that dst holds (m, n); `dst` is borrowed mutably, so it aliases neither operand.
    unsafe { gemm_raw((m, n, k), dst.as_mut_ptr(), n, accumulate, a, b, scale, par) }
}

/// Backward of out (N, OC) = inp (N, IC) @ w (IC, OC) + bias, given dout: dinp = dout @ wᵀ
/// (overwritten; then multiplied element-wise by `dinp_factor`, the derivative of an
/// activation before this layer, when given), dw += inpᵀ @ dout and dbias += Σ_rows dout. The
/// input and the parameter gradients are computed side by side.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    dinp: &mut [f32],
    dinp_factor: Option<&[f32]>,
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    (ic, oc): (usize, usize),
    prec: Precision,
) {
    let n = inp.len() / ic;
    rayon::join(
        || {
            matmul_with(prec, (n, ic, oc), dinp, false, Op::N(dout), Op::T(w), 1.0);
            if let Some(f) = dinp_factor {
                mul_assign(dinp, f);
            }
        },
        || {
            matmul_with(prec, (ic, oc, n), dw, true, Op::T(inp), Op::N(dout), 1.0);
            if let Some(dbias) = dbias {
                col_sum(dbias, dout);
            }
        },
    );
}

simd_fn! {
    fn col_sum_strip(dst: &mut [f32], src: &[f32], c0: usize, cols: usize) {
        let w = dst.len();
        for row in src.chunks_exact(cols) {
            add_assign(dst, &row[c0..c0 + w]);
        }
    }
}

/// dst (C) += Σ over the rows of src (N, C): the gradient of a bias.
pub fn col_sum(dst: &mut [f32], src: &[f32]) {
    let cols = dst.len();
    let strip = col_strip(cols);
    dst.par_chunks_mut(strip)
        .enumerate()
        .for_each(|(i, d)| col_sum_strip(d, src, i * strip, cols));
}

simd_fn! {
    fn mul_assign_chunk(d: &mut [f32], g: &[f32]) {
        for (d, &g) in d.iter_mut().zip(g) {
            *d *= g;
        }
    }
}

/// d *= g element-wise.
pub fn mul_assign(d: &mut [f32], g: &[f32]) {
    d.par_chunks_mut(TASK_ELEMS)
        .zip(g.par_chunks(TASK_ELEMS))
        .for_each(|(d, g)| mul_assign_chunk(d, g));
}

// ------------------------------------------------------------------------------------------------
// Embeddings

/// out (B, T, C) = wte[idx] + wpe[pos].
pub fn encoder_forward(out: &mut [f32], idx: &[u32], wte: &[f32], wpe: &[f32], t: usize) {
    let c = out.len() / idx.len();
    let rows = rows_per_task(c);
    out.par_chunks_mut(c * rows)
        .enumerate()
        .for_each(|(ci, chunk)| {
            for (j, o) in chunk.chunks_exact_mut(c).enumerate() {
                let r = ci * rows + j;
                let (tok, pos) = (idx[r] as usize, r % t);
                let (e, p) = (&wte[tok * c..(tok + 1) * c], &wpe[pos * c..(pos + 1) * c]);
                for ((o, &e), &p) in o.iter_mut().zip(e).zip(p) {
                    *o = e + p;
                }
            }
        });
}

/// Backward of `encoder_forward`: dwte[idx[r]] += dout[r], dwpe[pos] += Σ_b dout[b, pos].
pub fn encoder_backward(dwte: &mut [f32], dwpe: &mut [f32], dout: &[f32], idx: &[u32], t: usize) {
    let c = dout.len() / idx.len();
    rayon::join(
        || {
            // Tokens repeat, so each task owns a range of vocabulary rows and scans all positions
            // for the tokens in it: no two tasks write the same row.
            let v = dwte.len() / c;
            let vrows = v.div_ceil(4 * rayon::current_num_threads().max(1)).max(1);
            dwte.par_chunks_mut(vrows * c)
                .enumerate()
                .for_each(|(ci, d)| {
                    let lo = ci * vrows;
                    for (r, &tok) in idx.iter().enumerate() {
                        let tok = tok as usize;
                        if (lo..lo + vrows).contains(&tok) {
                            let (i, o) = ((tok - lo) * c, r * c);
                            add_assign(&mut d[i..i + c], &dout[o..o + c]);
                        }
                    }
                });
        },
        || {
            let b = idx.len() / t;
            dwpe[..t * c]
                .par_chunks_mut(c)
                .enumerate()
                .for_each(|(pos, d)| {
                    for bi in 0..b {
                        let o = (bi * t + pos) * c;
                        add_assign(d, &dout[o..o + c]);
                    }
                });
        },
    );
}

// ------------------------------------------------------------------------------------------------
// LayerNorm

/// A LayerNorm's parameters: gain, optional bias, epsilon.
#[derive(Clone, Copy)]
pub struct Norm<'a> {
    pub w: &'a [f32],
    pub b: Option<&'a [f32]>,
    pub eps: f32,
}

/// What the forward of a LayerNorm saves: its output and each row's mean and 1/std.
pub struct NormOut<'a> {
    pub out: &'a mut [f32],
    pub mean: &'a mut [f32],
    pub rstd: &'a mut [f32],
}

/// The rest of a residual connection, completed before a LayerNorm reads the stream: the
/// stream so far and the bias of the projection whose output (without bias) is being added.
#[derive(Clone, Copy)]
pub struct Skip<'a> {
    pub x: &'a [f32],
    pub bias: Option<&'a [f32]>,
}

simd_fn! {
    fn layernorm_rows(o: NormOut, inp: &mut [f32], skip: Option<Skip>, nm: Norm) {
        let c = nm.w.len();
        let rows = o.out.chunks_exact_mut(c).zip(inp.chunks_exact_mut(c));
        let stats = o.mean.iter_mut().zip(o.rstd.iter_mut());
        for (r, ((out, x), (m, s))) in rows.zip(stats).enumerate() {
            if let Some(skip) = skip {
                add_assign(x, &skip.x[r * c..(r + 1) * c]);
                if let Some(bias) = skip.bias {
                    add_assign(x, bias);
                }
            }
            let mu = simd::sum(x) / c as f32;
            let mut acc = [0f32; 16];
            let chunks = x.chunks_exact(16);
            let mut var: f32 = chunks.remainder().iter().map(|&v| (v - mu) * (v - mu)).sum();
            for ch in chunks {
                for (a, &v) in acc.iter_mut().zip(ch) {
                    *a += (v - mu) * (v - mu);
                }
            }
            var = (var + acc.iter().sum::<f32>()) / c as f32;
            let rs = 1.0 / (var + nm.eps).sqrt();
            match nm.b {
                Some(b) => {
                    for (((o, &x), &w), &b) in out.iter_mut().zip(x.iter()).zip(nm.w).zip(b) {
                        *o = (x - mu) * rs * w + b;
                    }
                }
                None => {
                    for ((o, &x), &w) in out.iter_mut().zip(x.iter()).zip(nm.w) {
                        *o = (x - mu) * rs * w;
                    }
                }
            }
            *m = mu;
            *s = rs;
        }
    }
}

/// out (N, C) = (inp − mean) · rstd · w + b per row, biased variance; saves mean and rstd (N).
/// With `skip`, first completes the residual stream in place: inp += skip.x + skip.bias.
pub fn layernorm_forward(o: NormOut, inp: &mut [f32], skip: Option<Skip>, nm: Norm) {
    let c = nm.w.len();
    let rows = rows_per_task(c);
    o.out
        .par_chunks_mut(c * rows)
        .zip(o.mean.par_chunks_mut(rows))
        .zip(o.rstd.par_chunks_mut(rows))
        .zip(inp.par_chunks_mut(c * rows))
        .enumerate()
        .for_each(|(i, (((out, mean), rstd), x))| {
            let skip = skip.map(|s| Skip {
                x: &s.x[i * rows * c..],
                ..s
            });
            layernorm_rows(NormOut { out, mean, rstd }, x, skip, nm)
        });
}

/// What the backward of a LayerNorm reads: its input and the saved statistics.
#[derive(Clone, Copy)]
pub struct NormIn<'a> {
    pub x: &'a [f32],
    pub mean: &'a [f32],
    pub rstd: &'a [f32],
}

simd_fn! {
    fn layernorm_dinp_rows(dinp: &mut [f32], dout: &[f32], s: NormIn, w: &[f32], accumulate: bool) {
        let c = w.len();
        let rows = dinp.chunks_exact_mut(c).zip(dout.chunks_exact(c)).zip(s.x.chunks_exact(c));
        for (((di, d), x), (&mu, &rs)) in rows.zip(s.mean.iter().zip(s.rstd)) {
            // With x̂ = (x − μ)·rstd and g = dout·w: dx = rstd (g − mean(g) − x̂ mean(g x̂)).
            let mut acc_g = [0f32; 16];
            let mut acc_gx = [0f32; 16];
            let (mut sum_g, mut sum_gx) = (0f32, 0f32);
            let (dc, xc, wc) = (d.chunks_exact(16), x.chunks_exact(16), w.chunks_exact(16));
            for ((&d, &x), &w) in dc.remainder().iter().zip(xc.remainder()).zip(wc.remainder()) {
                sum_g += d * w;
                sum_gx += d * w * (x - mu) * rs;
            }
            for ((d, x), w) in dc.zip(xc).zip(wc) {
                for i in 0..16 {
                    let g = d[i] * w[i];
                    acc_g[i] += g;
                    acc_gx[i] += g * (x[i] - mu) * rs;
                }
            }
            let mean_g = (sum_g + acc_g.iter().sum::<f32>()) / c as f32;
            let mean_gx = (sum_gx + acc_gx.iter().sum::<f32>()) / c as f32;
            let it = di.iter_mut().zip(d).zip(x).zip(w);
            if accumulate {
                for (((di, &d), &x), &w) in it {
                    *di += rs * (d * w - mean_g - (x - mu) * rs * mean_gx);
                }
            } else {
                for (((di, &d), &x), &w) in it {
                    *di = rs * (d * w - mean_g - (x - mu) * rs * mean_gx);
                }
            }
        }
    }
}

simd_fn! {
    fn layernorm_param_strip(
        dw: &mut [f32],
        db: Option<&mut [f32]>,
        dout: &[f32],
        s: NormIn,
        c0: usize,
        c: usize,
    ) {
        let w = dw.len();
        let mut db = db;
        let rows = dout.chunks_exact(c).zip(s.x.chunks_exact(c));
        for ((d, x), (&mu, &rs)) in rows.zip(s.mean.iter().zip(s.rstd)) {
            let (d, x) = (&d[c0..c0 + w], &x[c0..c0 + w]);
            for ((dw, &d), &x) in dw.iter_mut().zip(d).zip(x) {
                *dw += d * (x - mu) * rs;
            }
            if let Some(db) = db.as_deref_mut() {
                add_assign(db, d);
            }
        }
    }
}

/// Backward of `layernorm_forward` (without its skip): dinp (N, C) = (or +=, with
/// `accumulate`) the input gradient; dw += Σ dout·x̂, db += Σ dout.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dout: &[f32],
    s: NormIn,
    w: &[f32],
    accumulate: bool,
) {
    let c = w.len();
    let rows = rows_per_task(c);
    rayon::join(
        || {
            dinp.par_chunks_mut(c * rows)
                .zip(dout.par_chunks(c * rows))
                .enumerate()
                .for_each(|(i, (di, d))| {
                    let (r0, r1) = (i * rows, i * rows + d.len() / c);
                    let s = NormIn {
                        x: &s.x[r0 * c..r1 * c],
                        mean: &s.mean[r0..r1],
                        rstd: &s.rstd[r0..r1],
                    };
                    layernorm_dinp_rows(di, d, s, w, accumulate)
                });
        },
        || {
            let strip = col_strip(c);
            match db {
                Some(db) => dw
                    .par_chunks_mut(strip)
                    .zip(db.par_chunks_mut(strip))
                    .enumerate()
                    .for_each(|(i, (dw, db))| {
                        layernorm_param_strip(dw, Some(db), dout, s, i * strip, c)
                    }),
                None => dw
                    .par_chunks_mut(strip)
                    .enumerate()
                    .for_each(|(i, dw)| layernorm_param_strip(dw, None, dout, s, i * strip, c)),
            }
        },
    );
}

// ------------------------------------------------------------------------------------------------
// GELU

simd_fn! {
    fn bias_gelu_rows(
        h: &mut [f32],
        out: &mut [f32],
        bias: Option<&[f32]>,
        oc: usize,
        exact: bool,
    ) {
        for (h, o) in h.chunks_exact_mut(oc).zip(out.chunks_exact_mut(oc)) {
            if let Some(bias) = bias {
                add_assign(h, bias);
            }
            if exact {
                for (o, h) in o.iter_mut().zip(h.iter_mut()) {
                    (*o, *h) = simd::gelu_erf_and_grad(*h);
                }
            } else {
                for (o, h) in o.iter_mut().zip(h.iter_mut()) {
                    (*o, *h) = simd::gelu_tanh_and_grad(*h);
                }
            }
        }
    }
}

/// out (N, OC) = gelu(h + bias) for the c_fc output h, which is replaced by gelu′(h + bias):
/// all the backward needs, so that it is a multiplication.
pub fn bias_gelu_forward(
    h: &mut [f32],
    out: &mut [f32],
    bias: Option<&[f32]>,
    oc: usize,
    exact: bool,
) {
    let chunk = oc * rows_per_task(oc);
    h.par_chunks_mut(chunk)
        .zip(out.par_chunks_mut(chunk))
        .for_each(|(h, o)| bias_gelu_rows(h, o, bias, oc, exact));
}

// ------------------------------------------------------------------------------------------------
// Causal self-attention

/// Side of the square tiles attention works in, FlashAttention style (Dao et al. 2022; the
/// backward as in FlashAttention-2, Dao 2023): query rows i·TILE..(i+1)·TILE meet key rows
/// j·TILE..(j+1)·TILE, j ≤ i, one (TILE, TILE) block of scores at a time, so no (T, T) matrix
/// is ever stored. Two tiles of scratch (32 KiB) live on each task's stack.
pub const ATT_TILE: usize = 64;

/// (B, T, C, nh) of an attention call.
#[derive(Clone, Copy)]
pub struct AttShape {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub nh: usize,
}

/// Keys row `r` of a tile sees when the tile starts at key `k0` and is `n` keys wide: the causal
/// mask keeps keys 0..=r.
#[inline(always)]
fn live_keys(r: usize, k0: usize, n: usize) -> usize {
    (r + 1).saturating_sub(k0).min(n)
}

simd_fn! {
    /// One step of the online softmax (Milakov & Gimelshein 2018) for query rows r0..r0 + m
    /// against keys k0..k0 + n: `p` (m, n) holds scaled scores and is replaced by
    /// exp(s − m_new) (zero where masked), `mx` and `sum` (m) carry each row's running max and
    /// sum of exponentials, and `alpha` (m) receives exp(m_old − m_new), the factor by which the
    /// output accumulated so far must shrink. `first` marks the tile at key 0, where every row
    /// has a live key and nothing has been accumulated.
    fn online_softmax_tile(
        p: &mut [f32],
        mx: &mut [f32],
        sum: &mut [f32],
        alpha: &mut [f32],
        at: (usize, usize, usize),
        first: bool,
    ) {
        let (r0, k0, n) = at;
        for (rr, row) in p.chunks_exact_mut(n).enumerate() {
            let live = live_keys(r0 + rr, k0, n);
            let (row, masked) = row.split_at_mut(live);
            masked.fill(0.0);
            if live == 0 {
                alpha[rr] = 1.0;
                continue;
            }
            let m_old = if first { f32::NEG_INFINITY } else { mx[rr] };
            let m = simd::max(row).max(m_old);
            let mut acc = [0f32; 16];
            let mut chunks = row.chunks_exact_mut(16);
            for ch in &mut chunks {
                for (a, v) in acc.iter_mut().zip(ch.iter_mut()) {
                    *v = simd::exp(*v - m);
                    *a += *v;
                }
            }
            let mut s = acc.iter().sum::<f32>();
            for v in chunks.into_remainder() {
                *v = simd::exp(*v - m);
                s += *v;
            }
            if first {
                (alpha[rr], sum[rr]) = (0.0, s);
            } else {
                let a = simd::exp(m_old - m);
                (alpha[rr], sum[rr]) = (a, sum[rr] * a + s);
            }
            mx[rr] = m;
        }
    }
}

simd_fn! {
    /// Rows r0..r0 + m of the output, `hs` wide with row stride `ld` from `o`: o[r] *= f[r].
    fn scale_rows(o: *mut f32, ld: usize, hs: usize, f: &[f32]) {
        for (rr, &f) in f.iter().enumerate() {
            // SAFETY: the caller passes rows that lie inside its output and that no one else
            // touches meanwhile.
            let row = unsafe { std::slice::from_raw_parts_mut(o.add(rr * ld), hs) };
            for v in row {
                *v *= f;
            }
        }
    }
}

simd_fn! {
    /// The backward's view of one tile, query rows r0..r0 + m against keys k0..k0 + n: `p`
    /// (m, n) holds scaled scores, replaced by the probabilities exp(s − lse) (zero where
    /// masked); `dp` holds dL/dP, replaced by dL/dS = P ⊙ (dP − D), with D = rowsum(dO ⊙ O) = Σ_j
    /// P dP.
    fn softmax_backward_tile(
        p: &mut [f32],
        dp: &mut [f32],
        lse: &[f32],
        d: &[f32],
        at: (usize, usize, usize),
    ) {
        let (r0, k0, n) = at;
        let rows = p.chunks_exact_mut(n).zip(dp.chunks_exact_mut(n));
        for (rr, ((p, dp), (&lse, &d))) in rows.zip(lse.iter().zip(d)).enumerate() {
            let live = live_keys(r0 + rr, k0, n);
            for (p, dp) in p[..live].iter_mut().zip(&mut dp[..live]) {
                *p = simd::exp(*p - lse);
                *dp = *p * (*dp - d);
            }
            p[live..].fill(0.0);
            dp[live..].fill(0.0);
        }
    }
}

/// Adds head h's slice of the c_attn bias (3C) to its q, k and v columns of T rows of qkv,
/// `q` pointing at the head's first q value of the first row.
///
/// # Safety
/// The T rows (stride 3C) of the head's three hs-wide column ranges must be inside live memory
/// that no one else touches meanwhile.
unsafe fn add_head_bias(q: *mut f32, bias: &[f32], (t, c, h, hs): (usize, usize, usize, usize)) {
    for r in 0..t {
        for part in 0..3 {
            let row = std::slice::from_raw_parts_mut(q.add(r * 3 * c + part * c), hs);
            add_assign(row, &bias[part * c + h * hs..part * c + (h + 1) * hs]);
        }
    }
}

/// out (B, T, C) = per head softmax(q kᵀ/√hs, causal) v, heads side by side; saves the
/// log-sum-exp of each row of scores in lse (B, nh, T), all the backward needs to recompute the
/// probabilities. qkv (B, T, 3C) holds [q | k | v] (head h in columns h·hs..(h+1)·hs of each)
/// without the c_attn bias, which is added here, in place, by the task that reads those
/// columns. Parallel over (b, h); each task walks its query tiles and, for each, the key tiles
/// up to the diagonal with an online softmax.
pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &mut [f32],
    bias: Option<&[f32]>,
    s: AttShape,
    prec: Precision,
) {
    let AttShape { b, t, c, nh } = s;
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    assert!(qkv.len() >= b * t * 3 * c && out.len() >= b * t * c && lse.len() >= b * nh * t);
    assert!(bias.is_none_or(|b| b.len() == 3 * c));
    if prec == Precision::Bf16 {
        return attention_forward_bf16(out, lse, qkv, bias, s);
    }
    let (out, qkv) = (SyncPtr(out.as_mut_ptr()), SyncPtr(qkv.as_mut_ptr()));
    lse[..b * nh * t]
        .par_chunks_mut(t)
        .enumerate()
        .for_each(|(bh, lse)| {
            let (bi, h) = (bh / nh, bh % nh);
            let mut p = [0f32; ATT_TILE * ATT_TILE];
            let (mut mx, mut sum, mut alpha) =
                ([0f32; ATT_TILE], [0f32; ATT_TILE], [0f32; ATT_TILE]);
            // SAFETY: q, k, v address rows bi·T..(bi+1)·T, columns h·hs..(h+1)·hs of the three
            // thirds of qkv (asserted large enough above), and o the same rows and columns of out;
            // different (b, h) tasks touch disjoint parts of qkv and of out, both of which stay
            // mutably borrowed by this function. gemm reads p only where it wrote it.
            unsafe {
                let q = qkv.get().add(bi * t * 3 * c + h * hs);
                let o = out.get().add(bi * t * c + h * hs);
                if let Some(bias) = bias {
                    add_head_bias(q, bias, (t, c, h, hs));
                }
                let (k, v) = (q.add(c), q.add(2 * c));
                for r0 in (0..t).step_by(ATT_TILE) {
                    let m = ATT_TILE.min(t - r0);
                    let (qi, oi) = (rm(q.add(r0 * 3 * c), 3 * c), o.add(r0 * c));
                    for k0 in (0..=r0).step_by(ATT_TILE) {
                        let n = ATT_TILE.min(t - k0);
                        let (first, pt) = (k0 == 0, &mut p[..m * n]);
                        // S (m, n) = scale · Q[r0..] @ K[k0..]ᵀ
                        let kj = tr(k.add(k0 * 3 * c), 3 * c);
                        gemm_raw((m, n, hs), pt.as_mut_ptr(), n, false, qi, kj, scale, SERIAL);
                        let (mx, sum, alpha) = (&mut mx[..m], &mut sum[..m], &mut alpha[..m]);
                        online_softmax_tile(pt, mx, sum, alpha, (r0, k0, n), first);
                        if !first {
                            scale_rows(oi, c, hs, alpha);
                        }
                        // O[r0..] = alpha · O[r0..] + P @ V[k0..]
                        let (pt, vj) = (rm(pt.as_ptr(), n), rm(v.add(k0 * 3 * c), 3 * c));
                        gemm_raw((m, hs, n), oi, c, !first, pt, vj, 1.0, SERIAL);
                    }
                    for (rr, (&mx, &s)) in mx[..m].iter().zip(&sum[..m]).enumerate() {
                        (alpha[rr], lse[r0 + rr]) = (1.0 / s, mx + s.ln());
                    }
                    scale_rows(oi, c, hs, &alpha[..m]);
                }
            }
        });
}

/// Backward of `attention_forward`: dqkv (B, T, 3C) (overwritten) from dout (B, T, C), given the
/// forward's input qkv (bias included), output `out` and saved `lse`. Recomputes each tile of
/// probabilities from q, k and lse, FlashAttention-2 style: with D = rowsum(dO ⊙ O),
/// dS = P ⊙ (dO Vᵀ − D), dQ = scale · dS K, dK = scale · dSᵀ Q, dV = Pᵀ dO.
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    s: AttShape,
    prec: Precision,
) {
    let AttShape { b, t, c, nh } = s;
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let n3 = b * t * 3 * c;
    assert!(qkv.len() >= n3 && dqkv.len() >= n3 && lse.len() >= b * nh * t);
    assert!(dout.len() >= b * t * c && out.len() >= b * t * c);
    if prec == Precision::Bf16 {
        return attention_backward_bf16(dqkv, dout, qkv, out, lse, s);
    }
    let dqkv = SyncPtr(dqkv.as_mut_ptr());
    lse[..b * nh * t]
        .par_chunks(t)
        .enumerate()
        .for_each(|(bh, lse)| {
            let (bi, h) = (bh / nh, bh % nh);
            let mut p = [0f32; ATT_TILE * ATT_TILE];
            let mut dp = [0f32; ATT_TILE * ATT_TILE];
            let mut d = [0f32; ATT_TILE];
            // SAFETY: as in `attention_forward`: every pointer addresses rows bi·T..(bi+1)·T and
            // columns h·hs..(h+1)·hs of its third of qkv or dqkv, or of dout or out, inside the
            // asserted lengths; different (b, h) tasks write disjoint parts of dqkv, which stays
            // mutably borrowed by this function.
            unsafe {
                let q = qkv.as_ptr().add(bi * t * 3 * c + h * hs);
                let (k, v) = (q.add(c), q.add(2 * c));
                let dq = dqkv.get().add(bi * t * 3 * c + h * hs);
                let (dk, dv) = (dq.add(c), dq.add(2 * c));
                let (d_o, o) = (bi * t * c + h * hs, bi * t * c + h * hs);
                let (d_o, o) = (dout.as_ptr().add(d_o), out.as_ptr().add(o));
                // Query tiles in order: key tile j is first met by query tile j (the diagonal),
                // which writes its dK and dV; later query tiles add to them.
                for r0 in (0..t).step_by(ATT_TILE) {
                    let m = ATT_TILE.min(t - r0);
                    for (rr, d) in d[..m].iter_mut().enumerate() {
                        let row =
                            |x: *const f32| std::slice::from_raw_parts(x.add((r0 + rr) * c), hs);
                        *d = simd::dot(row(d_o), row(o));
                    }
                    let (qi, doi) = (rm(q.add(r0 * 3 * c), 3 * c), rm(d_o.add(r0 * c), c));
                    for k0 in (0..=r0).step_by(ATT_TILE) {
                        let n = ATT_TILE.min(t - k0);
                        let (pt, dpt) = (&mut p[..m * n], &mut dp[..m * n]);
                        let (kj, vj) = (k.add(k0 * 3 * c), v.add(k0 * 3 * c));
                        // S (m, n) = scale · Q[r0..] @ K[k0..]ᵀ, dP (m, n) = dO[r0..] @ V[k0..]ᵀ
                        let (pp, dpp) = (pt.as_mut_ptr(), dpt.as_mut_ptr());
                        gemm_raw((m, n, hs), pp, n, false, qi, tr(kj, 3 * c), scale, SERIAL);
                        gemm_raw((m, n, hs), dpp, n, false, doi, tr(vj, 3 * c), 1.0, SERIAL);
                        softmax_backward_tile(pt, dpt, &lse[r0..r0 + m], &d[..m], (r0, k0, n));
                        let (ps, ds) = (pt.as_ptr(), dpt.as_ptr());
                        // dQ[r0..] (+)= scale · dS @ K[k0..]
                        let dqi = dq.add(r0 * 3 * c);
                        let kj = rm(kj, 3 * c);
                        gemm_raw((m, hs, n), dqi, 3 * c, k0 > 0, rm(ds, n), kj, scale, SERIAL);
                        // dK[k0..] (+)= scale · dSᵀ @ Q[r0..]; dV[k0..] (+)= Pᵀ @ dO[r0..]
                        let (dkj, dvj, acc) = (dk.add(k0 * 3 * c), dv.add(k0 * 3 * c), k0 < r0);
                        gemm_raw((n, hs, m), dkj, 3 * c, acc, tr(ds, n), qi, scale, SERIAL);
                        gemm_raw((n, hs, m), dvj, 3 * c, acc, tr(ps, n), doi, 1.0, SERIAL);
                    }
                }
            }
        });
}

thread_local! {
    /// The packed operands of one bf16 attention task, grown to the largest head seen.
    static ATT_PACKS: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with `parts` scratch slices of the given lengths (in words) from this thread's
/// attention buffer.
fn with_packs<const P: usize, R>(lens: [usize; P], f: impl FnOnce([&mut [u32]; P]) -> R) -> R {
    let run = |buf: &mut Vec<u32>| {
        let total: usize = lens.iter().sum();
        if buf.len() < total {
            buf.resize(total, 0);
        }
        let mut rest = &mut buf[..total];
        let parts = lens.map(|len| {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
            rest = tail;
            head
        });
        f(parts)
    };
    ATT_PACKS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => run(&mut buf),
        Err(_) => run(&mut Vec::new()),
    })
}

/// A strided matrix as the bf16 GEMM's operand type.
fn bmat(s: Strided) -> bf16::Mat {
    bf16::Mat {
        ptr: s.ptr,
        rs: s.rs,
        cs: s.cs,
    }
}

/// `attention_forward` with bf16 products (f32 sums, f32 softmax): each task packs its head's
/// K and V once, each query tile once, and each tile of probabilities once, so the tiles
/// multiply packed operands only.
fn attention_forward_bf16(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &mut [f32],
    bias: Option<&[f32]>,
    s: AttShape,
) {
    let AttShape { b, t, c, nh } = s;
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let (out, qkv) = (SyncPtr(out.as_mut_ptr()), SyncPtr(qkv.as_mut_ptr()));
    let lens = [
        bf16::b_words(hs, t),
        bf16::b_words(t, hs),
        bf16::a_words(ATT_TILE, hs),
        bf16::a_words(ATT_TILE, ATT_TILE),
    ];
    lse[..b * nh * t]
        .par_chunks_mut(t)
        .enumerate()
        .for_each(|(bh, lse)| {
            let (bi, h) = (bh / nh, bh % nh);
            let mut p = [0f32; ATT_TILE * ATT_TILE];
            let (mut mx, mut sum, mut alpha) =
                ([0f32; ATT_TILE], [0f32; ATT_TILE], [0f32; ATT_TILE]);
            // SAFETY: as in `attention_forward`; the caller checked that the CPU has the bf16
            // instructions, and the packed panels live in this task's scratch until it ends.
            with_packs(lens, |[kt, vb, qa, pa]| unsafe {
                let q = qkv.get().add(bi * t * 3 * c + h * hs);
                let o = out.get().add(bi * t * c + h * hs);
                if let Some(bias) = bias {
                    add_head_bias(q, bias, (t, c, h, hs));
                }
                let (k, v) = (q.add(c), q.add(2 * c));
                // Kᵀ (hs, T) and V (T, hs) as B operands, for all tiles of this head.
                let kt = bf16::pack_b(kt, bmat(tr(k, 3 * c)), hs, t);
                let vb = bf16::pack_b(vb, bmat(rm(v, 3 * c)), t, hs);
                for r0 in (0..t).step_by(ATT_TILE) {
                    let m = ATT_TILE.min(t - r0);
                    let oi = o.add(r0 * c);
                    let qa = bf16::pack_a(qa, bmat(rm(q.add(r0 * 3 * c), 3 * c)), m, hs);
                    for k0 in (0..=r0).step_by(ATT_TILE) {
                        let n = ATT_TILE.min(t - k0);
                        let (first, pt) = (k0 == 0, &mut p[..m * n]);
                        // S (m, n) = scale · Q[r0..] @ K[k0..]ᵀ
                        let kj = kt.skip_lanes(k0);
                        let diag = |mode| if k0 == r0 { mode } else { Causal::Full };
                        bf16::gemm_packed(
                            (m, n, hs),
                            pt.as_mut_ptr(),
                            n,
                            0.0,
                            qa,
                            kj,
                            scale,
                            diag(Causal::Lower),
                        );
                        let (mx, sum, alpha) = (&mut mx[..m], &mut sum[..m], &mut alpha[..m]);
                        online_softmax_tile(pt, mx, sum, alpha, (r0, k0, n), first);
                        if !first {
                            scale_rows(oi, c, hs, alpha);
                        }
                        // O[r0..] = alpha · O[r0..] + P @ V[k0..]
                        let pa = bf16::pack_a(pa, bmat(rm(pt.as_ptr(), n)), m, n);
                        let beta = if first { 0.0 } else { 1.0 };
                        let vj = vb.skip_k(k0);
                        bf16::gemm_packed(
                            (m, hs, n),
                            oi,
                            c,
                            beta,
                            pa,
                            vj,
                            1.0,
                            diag(Causal::DepthUpTo),
                        );
                    }
                    for (rr, (&mx, &s)) in mx[..m].iter().zip(&sum[..m]).enumerate() {
                        (alpha[rr], lse[r0 + rr]) = (1.0 / s, mx + s.ln());
                    }
                    scale_rows(oi, c, hs, &alpha[..m]);
                }
            })
        });
}

/// `attention_backward` with bf16 products (f32 sums), its operands packed as in
/// `attention_forward_bf16`: K, V, Q and dO of the head once per task, Q and dO once per query
/// tile, and each tile of dS and P once per use.
fn attention_backward_bf16(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    s: AttShape,
) {
    let AttShape { b, t, c, nh } = s;
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let dqkv = SyncPtr(dqkv.as_mut_ptr());
    let (bt, tb) = (bf16::b_words(hs, t), bf16::b_words(t, hs));
    let (ah, at) = (
        bf16::a_words(ATT_TILE, hs),
        bf16::a_words(ATT_TILE, ATT_TILE),
    );
    let lens = [bt, bt, tb, tb, tb, ah, ah, at];
    lse[..b * nh * t]
        .par_chunks(t)
        .enumerate()
        .for_each(|(bh, lse)| {
            let (bi, h) = (bh / nh, bh % nh);
            let mut p = [0f32; ATT_TILE * ATT_TILE];
            let mut dp = [0f32; ATT_TILE * ATT_TILE];
            let mut d = [0f32; ATT_TILE];
            // SAFETY: as in `attention_backward`; the caller checked that the CPU has the bf16
            // instructions, and the packed panels live in this task's scratch until it ends.
            with_packs(lens, |[kt, vt, kb, qb, dob, qa, doa, sa]| unsafe {
                let q = qkv.as_ptr().add(bi * t * 3 * c + h * hs);
                let (k, v) = (q.add(c), q.add(2 * c));
                let dq = dqkv.get().add(bi * t * 3 * c + h * hs);
                let (dk, dv) = (dq.add(c), dq.add(2 * c));
                let (d_o, o) = (bi * t * c + h * hs, bi * t * c + h * hs);
                let (d_o, o) = (dout.as_ptr().add(d_o), out.as_ptr().add(o));
                // Kᵀ and Vᵀ (hs, T) for S and dP; K, Q and dO (T, hs) for dQ, dK and dV.
                let kt = bf16::pack_b(kt, bmat(tr(k, 3 * c)), hs, t);
                let vt = bf16::pack_b(vt, bmat(tr(v, 3 * c)), hs, t);
                let kb = bf16::pack_b(kb, bmat(rm(k, 3 * c)), t, hs);
                let qb = bf16::pack_b(qb, bmat(rm(q, 3 * c)), t, hs);
                let dob = bf16::pack_b(dob, bmat(rm(d_o, c)), t, hs);
                for r0 in (0..t).step_by(ATT_TILE) {
                    let m = ATT_TILE.min(t - r0);
                    for (rr, d) in d[..m].iter_mut().enumerate() {
                        let row =
                            |x: *const f32| std::slice::from_raw_parts(x.add((r0 + rr) * c), hs);
                        *d = simd::dot(row(d_o), row(o));
                    }
                    let qa = bf16::pack_a(qa, bmat(rm(q.add(r0 * 3 * c), 3 * c)), m, hs);
                    let doa = bf16::pack_a(doa, bmat(rm(d_o.add(r0 * c), c)), m, hs);
                    for k0 in (0..=r0).step_by(ATT_TILE) {
                        let n = ATT_TILE.min(t - k0);
                        let (pt, dpt) = (&mut p[..m * n], &mut dp[..m * n]);
                        // S (m, n) = scale · Q[r0..] @ K[k0..]ᵀ, dP (m, n) = dO[r0..] @ V[k0..]ᵀ
                        let (pp, dpp) = (pt.as_mut_ptr(), dpt.as_mut_ptr());
                        let diag = |mode| if k0 == r0 { mode } else { Causal::Full };
                        let (kj, vj) = (kt.skip_lanes(k0), vt.skip_lanes(k0));
                        bf16::gemm_packed(
                            (m, n, hs),
                            pp,
                            n,
                            0.0,
                            qa,
                            kj,
                            scale,
                            diag(Causal::Lower),
                        );
                        bf16::gemm_packed(
                            (m, n, hs),
                            dpp,
                            n,
                            0.0,
                            doa,
                            vj,
                            1.0,
                            diag(Causal::Lower),
                        );
                        softmax_backward_tile(pt, dpt, &lse[r0..r0 + m], &d[..m], (r0, k0, n));
                        let (ps, ds) = (pt.as_ptr(), dpt.as_ptr());
                        // dQ[r0..] (+)= scale · dS @ K[k0..]
                        let dqi = dq.add(r0 * 3 * c);
                        let beta = if k0 > 0 { 1.0 } else { 0.0 };
                        let sa_ = bf16::pack_a(sa, bmat(rm(ds, n)), m, n);
                        let kj = kb.skip_k(k0);
                        bf16::gemm_packed(
                            (m, hs, n),
                            dqi,
                            3 * c,
                            beta,
                            sa_,
                            kj,
                            scale,
                            diag(Causal::DepthUpTo),
                        );
                        // dK[k0..] (+)= scale · dSᵀ @ Q[r0..]; dV[k0..] (+)= Pᵀ @ dO[r0..]
                        let (dkj, dvj) = (dk.add(k0 * 3 * c), dv.add(k0 * 3 * c));
                        let beta = if k0 < r0 { 1.0 } else { 0.0 };
                        let sa_ = bf16::pack_a(sa, bmat(tr(ds, n)), n, m);
                        let qi = qb.skip_k(r0);
                        bf16::gemm_packed(
                            (n, hs, m),
                            dkj,
                            3 * c,
                            beta,
                            sa_,
                            qi,
                            scale,
                            diag(Causal::DepthFrom),
                        );
                        let sa_ = bf16::pack_a(sa, bmat(tr(ps, n)), n, m);
                        let doi = dob.skip_k(r0);
                        bf16::gemm_packed(
                            (n, hs, m),
                            dvj,
                            3 * c,
                            beta,
                            sa_,
                            doi,
                            1.0,
                            diag(Causal::DepthFrom),
                        );
                    }
                }
            })
        });
}

// ------------------------------------------------------------------------------------------------
// Cross-entropy

simd_fn! {
    fn cross_entropy_rows(logits: &[f32], lse: &mut [f32], targets: &[u32], v: usize) -> f64 {
        let mut loss = 0f64;
        for ((row, lse), &tg) in logits.chunks_exact(v).zip(lse.iter_mut()).zip(targets) {
            let m = simd::max(row);
            let mut acc = [0f32; 16];
            let chunks = row.chunks_exact(16);
            let mut s: f32 = chunks.remainder().iter().map(|&x| simd::exp(x - m)).sum();
            for ch in chunks {
                for (a, &x) in acc.iter_mut().zip(ch) {
                    *a += simd::exp(x - m);
                }
            }
            s += acc.iter().sum::<f32>();
            *lse = m + s.ln();
            loss += (*lse - row[tg as usize]) as f64;
        }
        loss
    }
}

/// Mean over rows of −log softmax(logits)[target], logits (N, V); saves the log-sum-exp of each
/// row (N) for the backward.
pub fn cross_entropy_forward(logits: &[f32], lse: &mut [f32], targets: &[u32], v: usize) -> f32 {
    let rows = rows_per_task(v);
    let total: f64 = logits
        .par_chunks(v * rows)
        .zip(lse.par_chunks_mut(rows))
        .zip(targets.par_chunks(rows))
        .map(|((l, s), tg)| cross_entropy_rows(l, s, tg, v))
        .sum();
    (total / targets.len() as f64) as f32
}

simd_fn! {
    fn cross_entropy_backward_rows(
        dlogits: &mut [f32],
        logits: &[f32],
        lse: &[f32],
        targets: &[u32],
        s: f32,
    ) {
        let v = logits.len() / lse.len();
        let rows = dlogits.chunks_exact_mut(v).zip(logits.chunks_exact(v));
        for ((d, row), (&lse, &tg)) in rows.zip(lse.iter().zip(targets)) {
            for (d, &x) in d.iter_mut().zip(row) {
                *d = s * simd::exp(x - lse);
            }
            d[tg as usize] -= s;
        }
    }
}

/// dlogits (N, V) = s · (softmax(logits) − onehot(target)): the gradient of s · the summed loss.
pub fn cross_entropy_backward(
    dlogits: &mut [f32],
    logits: &[f32],
    lse: &[f32],
    targets: &[u32],
    s: f32,
) {
    let v = logits.len() / lse.len();
    let rows = rows_per_task(v);
    dlogits
        .par_chunks_mut(v * rows)
        .zip(logits.par_chunks(v * rows))
        .zip(lse.par_chunks(rows).zip(targets.par_chunks(rows)))
        .for_each(|((d, l), (ls, tg))| cross_entropy_backward_rows(d, l, ls, tg, s));
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::fill;

    fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
        let diff: f64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| ((x - y) as f64).powi(2))
            .sum();
        let norm: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum();
        (diff / norm.max(1e-30)).sqrt()
    }

    /// The bf16 attention (packed operands) against the f32 one: outputs, log-sum-exps and
    /// input gradients within bf16 rounding, on full and partial tiles, with and without bias.
    #[test]
    fn bf16_attention_tracks_f32() {
        for (b, t, c, nh, with_bias) in [
            (2, 100, 64, 2, true),
            (1, 256, 128, 2, false),
            (1, 7, 48, 3, true),
        ] {
            let s = AttShape { b, t, c, nh };
            let qkv0 = fill(b * t * 3 * c, 1);
            let bias = with_bias.then(|| fill(3 * c, 2));
            let dout = fill(b * t * c, 3);
            let run = |prec: Precision| {
                let mut qkv = qkv0.clone();
                let mut out = vec![0f32; b * t * c];
                let mut lse = vec![0f32; b * nh * t];
                attention_forward(&mut out, &mut lse, &mut qkv, bias.as_deref(), s, prec);
                let mut dqkv = vec![f32::NAN; b * t * 3 * c];
                attention_backward(&mut dqkv, &dout, &qkv, &out, &lse, s, prec);
                (out, lse, dqkv)
            };
            let (o32, l32, d32) = run(Precision::F32);
            let (o16, l16, d16) = run(Precision::Bf16);
            let (eo, el, ed) = (rel_l2(&o32, &o16), rel_l2(&l32, &l16), rel_l2(&d32, &d16));
            println!("b{b} t{t} c{c} nh{nh}: out {eo:.1e} lse {el:.1e} dqkv {ed:.1e}");
            assert!(eo < 1e-2 && el < 1e-2 && ed < 2e-2, "{eo} {el} {ed}");
            assert!(eo > 0.0, "the bf16 path did not run");
            assert!(d16.iter().all(|x| x.is_finite()));
        }
    }
}
