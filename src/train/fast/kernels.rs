//! The layers of the fast path, each forward beside its backward, over flat row-major f32
//! buffers. Rows are the B*T token positions; row-wise kernels split rows across rayon's pool,
//! reductions over rows (bias and LayerNorm parameter gradients) split columns instead so that
//! no thread-local partial sums (and no allocation) are needed.

use gemm::Parallelism;
use rayon::prelude::*;

use super::simd::{self, simd_fn};

/// Elements one rayon task should at least cover, so that scheduling stays a small cost.
const TASK_ELEMS: usize = 8192;

/// Rows per rayon task for rows of `row_len` elements.
fn rows_per_task(row_len: usize) -> usize {
    (TASK_ELEMS / row_len.max(1)).max(1)
}

/// Width of the column strip each task owns in a column reduction: the columns split evenly
/// over the threads, in multiples of 16 floats (one 64-byte cache line) to avoid false sharing.
fn col_strip(cols: usize) -> usize {
    let per_thread = cols.div_ceil(rayon::current_num_threads().max(1));
    per_thread.div_ceil(16).max(1) * 16
}

/// gemm's parallelism for the big matmuls: rayon's current pool when it has more than 1 thread.
fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
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
    /// (pointer, row stride, column stride) of an (rows, cols) operand.
    fn strides(self, rows: usize, cols: usize) -> (*const f32, isize, isize) {
        match self {
            Op::N(s) => {
                assert!(s.len() >= rows * cols, "matmul operand too small");
                (s.as_ptr(), cols as isize, 1)
            }
            Op::T(s) => {
                assert!(s.len() >= rows * cols, "matmul operand too small");
                (s.as_ptr(), 1, rows as isize)
            }
        }
    }
}

/// dst (m, n) = [dst +] scale · a (m, k) @ b (k, n), with gemm over rayon's pool. Transposed
/// operands are read in place through their strides.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: Op,
    b: Op,
    scale: f32,
) {
    assert!(dst.len() >= m * n, "matmul destination too small");
    let (ap, a_rs, a_cs) = a.strides(m, k);
    let (bp, b_rs, b_cs) = b.strides(k, n);
    let threads = rayon::current_num_threads();
    let mode = std::env::var("DX_SPLIT").unwrap_or_default();
    if threads > 1 && mode == "rows" {
        let chunk = m.div_ceil(threads);
        let (ap, bp) = (SyncPtr(ap as *mut f32), SyncPtr(bp as *mut f32));
        dst[..m * n]
            .par_chunks_mut(chunk * n)
            .enumerate()
            .for_each(|(i, d)| {
                let rows = d.len() / n;
                // SAFETY: as below, for rows i·chunk.. of a and of dst.
                unsafe {
                    let a = Strided {
                        ptr: ap.get().add(i * chunk * a_rs as usize),
                        rs: a_rs as usize,
                        cs: a_cs as usize,
                    };
                    let b = Strided {
                        ptr: bp.get(),
                        rs: b_rs as usize,
                        cs: b_cs as usize,
                    };
                    small_gemm(rows, n, k, d.as_mut_ptr(), n, accumulate, a, b, scale);
                }
            });
        return;
    }
    // SAFETY: the asserts above keep every access of the (m, k), (k, n) and (m, n) matrices
    // inside the slices; `dst` is borrowed mutably so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            ap,
            a_cs,
            a_rs,
            bp,
            b_cs,
            b_rs,
            1.0,
            scale,
            false,
            false,
            false,
            if mode == "none" {
                Parallelism::None
            } else {
                parallelism()
            },
        )
    }
}

/// out (N, OC) = inp (N, IC) @ w (IC, OC) + bias, w in GPT-2's Conv1D (in, out) layout.
pub fn linear_forward(
    out: &mut [f32],
    inp: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    ic: usize,
    oc: usize,
) {
    let rows = inp.len() / ic;
    if let Some(bias) = bias {
        broadcast_rows(out, bias);
    }
    matmul(rows, oc, ic, out, bias.is_some(), Op::N(inp), Op::N(w), 1.0);
}

/// Backward of `linear_forward` given dout (N, OC): dinp (N, IC) = dout @ wᵀ (overwritten),
/// dw += inpᵀ @ dout, dbias += Σ_rows dout.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    w: &[f32],
    ic: usize,
    oc: usize,
) {
    let rows = inp.len() / ic;
    matmul(rows, ic, oc, dinp, false, Op::N(dout), Op::T(w), 1.0);
    matmul(ic, oc, rows, dw, true, Op::T(inp), Op::N(dout), 1.0);
    if let Some(dbias) = dbias {
        col_sum(dbias, dout);
    }
}

// ------------------------------------------------------------------------------------------------
// Element-wise helpers

/// Every row of `out` (N, C) set to `row` (C).
pub fn broadcast_rows(out: &mut [f32], row: &[f32]) {
    let c = row.len();
    out.par_chunks_mut(c * rows_per_task(c)).for_each(|chunk| {
        for r in chunk.chunks_exact_mut(c) {
            r.copy_from_slice(row);
        }
    });
}

simd_fn! {
    fn add_rows(out: &mut [f32], x: &[f32], bias: &[f32]) {
        let c = bias.len();
        for (o, xr) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
            for ((o, &x), &b) in o.iter_mut().zip(xr).zip(bias) {
                *o = x + b;
            }
        }
    }
}

/// out (N, C) = x (N, C) + bias (C) broadcast over rows (a copy of x without a bias): the
/// residual stream before a projection accumulates onto it.
pub fn residual_with_bias(out: &mut [f32], x: &[f32], bias: Option<&[f32]>, c: usize) {
    match bias {
        None => out.copy_from_slice(x),
        Some(bias) => {
            let chunk = c * rows_per_task(c);
            out.par_chunks_mut(chunk)
                .zip(x.par_chunks(chunk))
                .for_each(|(o, x)| add_rows(o, x, bias));
        }
    }
}

simd_fn! {
    fn col_sum_strip(dst: &mut [f32], src: &[f32], c0: usize, cols: usize) {
        let w = dst.len();
        for row in src.chunks_exact(cols) {
            for (d, &s) in dst.iter_mut().zip(&row[c0..c0 + w]) {
                *d += s;
            }
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

// ------------------------------------------------------------------------------------------------
// Embeddings

/// out (B, T, C) = wte[idx] + wpe[pos].
pub fn encoder_forward(out: &mut [f32], idx: &[u32], wte: &[f32], wpe: &[f32], t: usize, c: usize) {
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
pub fn encoder_backward(
    dwte: &mut [f32],
    dwpe: &mut [f32],
    dout: &[f32],
    idx: &[u32],
    t: usize,
    c: usize,
) {
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
                            add_assign(
                                &mut d[(tok - lo) * c..(tok - lo + 1) * c],
                                &dout[r * c..(r + 1) * c],
                            );
                        }
                    }
                });
        },
        || {
            let b = dout.len() / (t * c);
            dwpe[..t * c]
                .par_chunks_mut(c)
                .enumerate()
                .for_each(|(pos, d)| {
                    for bi in 0..b {
                        add_assign(d, &dout[(bi * t + pos) * c..(bi * t + pos + 1) * c]);
                    }
                });
        },
    );
}

#[inline(always)]
fn add_assign(dst: &mut [f32], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
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

/// A strided matrix operand of the per-head matmuls: element (i, j) at ptr[i·rs + j·cs].
#[derive(Clone, Copy)]
struct Strided {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

/// Row-major (rs, 1) operand.
fn rm(ptr: *const f32, rs: usize) -> Strided {
    Strided { ptr, rs, cs: 1 }
}

/// Transposed operand: the matrix whose transpose is row-major with row stride `rs`.
fn tr(ptr: *const f32, rs: usize) -> Strided {
    Strided { ptr, rs: 1, cs: rs }
}

/// dst (m, n), row stride `ld`, = [dst +] scale · a (m, k) @ b (k, n), single-threaded (the
/// callers run one per rayon task).
///
/// # Safety
/// Every element of the three matrices must be inside one live allocation, and dst must not
/// overlap a, b or memory another thread accesses.
#[allow(clippy::too_many_arguments)]
unsafe fn small_gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    ld: usize,
    accumulate: bool,
    a: Strided,
    b: Strided,
    scale: f32,
) {
    let i = |x: usize| x as isize;
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
        Parallelism::None,
    )
}

// ------------------------------------------------------------------------------------------------
// LayerNorm

simd_fn! {
    fn layernorm_rows(out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], inp: &[f32], w: &[f32], b: Option<&[f32]>, eps: f32) {
        let c = w.len();
        let rows = out.chunks_exact_mut(c).zip(inp.chunks_exact(c)).zip(mean.iter_mut().zip(rstd.iter_mut()));
        for ((o, x), (m, s)) in rows {
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
            let rs = 1.0 / (var + eps).sqrt();
            match b {
                Some(b) => {
                    for (((o, &x), &w), &b) in o.iter_mut().zip(x).zip(w).zip(b) {
                        *o = (x - mu) * rs * w + b;
                    }
                }
                None => {
                    for ((o, &x), &w) in o.iter_mut().zip(x).zip(w) {
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
pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    eps: f32,
) {
    let c = w.len();
    let rows = rows_per_task(c);
    out.par_chunks_mut(c * rows)
        .zip(mean.par_chunks_mut(rows))
        .zip(rstd.par_chunks_mut(rows))
        .zip(inp.par_chunks(c * rows))
        .for_each(|(((o, m), s), x)| layernorm_rows(o, m, s, x, w, b, eps));
}

simd_fn! {
    fn layernorm_dinp_rows(dinp: &mut [f32], dout: &[f32], inp: &[f32], mean: &[f32], rstd: &[f32], w: &[f32], accumulate: bool) {
        let c = w.len();
        let rows = dinp.chunks_exact_mut(c).zip(dout.chunks_exact(c)).zip(inp.chunks_exact(c)).zip(mean.iter().zip(rstd));
        for (((di, d), x), (&mu, &rs)) in rows {
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
    fn layernorm_param_strip(dw: &mut [f32], db: Option<&mut [f32]>, dout: &[f32], inp: &[f32], mean: &[f32], rstd: &[f32], c0: usize, c: usize) {
        let w = dw.len();
        let mut db = db;
        for ((d, x), (&mu, &rs)) in dout.chunks_exact(c).zip(inp.chunks_exact(c)).zip(mean.iter().zip(rstd)) {
            let (d, x) = (&d[c0..c0 + w], &x[c0..c0 + w]);
            for ((dw, &d), &x) in dw.iter_mut().zip(d).zip(x) {
                *dw += d * (x - mu) * rs;
            }
            if let Some(db) = db.as_deref_mut() {
                for (db, &d) in db.iter_mut().zip(d) {
                    *db += d;
                }
            }
        }
    }
}

/// Backward of `layernorm_forward`: dinp (N, C) = (or +=, with `accumulate`) the input
/// gradient; dw += Σ dout·x̂, db += Σ dout.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    mean: &[f32],
    rstd: &[f32],
    w: &[f32],
    accumulate: bool,
) {
    let c = w.len();
    let rows = rows_per_task(c);
    let (row_pass, param_pass) = (
        || {
            dinp.par_chunks_mut(c * rows)
                .zip(dout.par_chunks(c * rows))
                .zip(inp.par_chunks(c * rows))
                .zip(mean.par_chunks(rows).zip(rstd.par_chunks(rows)))
                .for_each(|(((di, d), x), (m, s))| {
                    layernorm_dinp_rows(di, d, x, m, s, w, accumulate)
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
                        layernorm_param_strip(dw, Some(db), dout, inp, mean, rstd, i * strip, c)
                    }),
                None => dw.par_chunks_mut(strip).enumerate().for_each(|(i, dw)| {
                    layernorm_param_strip(dw, None, dout, inp, mean, rstd, i * strip, c)
                }),
            }
        },
    );
    rayon::join(row_pass, param_pass);
}

// ------------------------------------------------------------------------------------------------
// GELU

simd_fn! {
    fn bias_gelu_rows(pre: &mut [f32], out: &mut [f32], bias: Option<&[f32]>, oc: usize, exact: bool) {
        for (p, o) in pre.chunks_exact_mut(oc).zip(out.chunks_exact_mut(oc)) {
            if let Some(bias) = bias {
                for (p, &b) in p.iter_mut().zip(bias) {
                    *p += b;
                }
            }
            if exact {
                for (o, &x) in o.iter_mut().zip(p.iter()) {
                    *o = simd::gelu_erf(x);
                }
            } else {
                for (o, &x) in o.iter_mut().zip(p.iter()) {
                    *o = simd::gelu_tanh(x);
                }
            }
        }
    }
}

/// pre (N, OC) += bias (in place, kept for the backward); out = gelu(pre).
pub fn bias_gelu_forward(
    pre: &mut [f32],
    out: &mut [f32],
    bias: Option<&[f32]>,
    oc: usize,
    exact: bool,
) {
    let chunk = oc * rows_per_task(oc);
    pre.par_chunks_mut(chunk)
        .zip(out.par_chunks_mut(chunk))
        .for_each(|(p, o)| bias_gelu_rows(p, o, bias, oc, exact));
}

simd_fn! {
    fn gelu_backward_chunk(d: &mut [f32], pre: &[f32], exact: bool) {
        if exact {
            for (d, &x) in d.iter_mut().zip(pre) {
                *d *= simd::gelu_erf_grad(x);
            }
        } else {
            for (d, &x) in d.iter_mut().zip(pre) {
                *d *= simd::gelu_tanh_grad(x);
            }
        }
    }
}

/// d (N, OC) *= gelu′(pre), turning the gradient of the GELU output into that of its input.
pub fn gelu_backward(d: &mut [f32], pre: &[f32], exact: bool) {
    d.par_chunks_mut(TASK_ELEMS)
        .zip(pre.par_chunks(TASK_ELEMS))
        .for_each(|(d, p)| gelu_backward_chunk(d, p, exact));
}

// ------------------------------------------------------------------------------------------------
// Causal self-attention

/// Query rows per block: a block of rows r0..r1 attends to keys 0..r1 only, which skips most of
/// the masked upper triangle of the (T, T) scores for long sequences.
const ATT_BLOCK: usize = 64;

/// (B, T, C, nh) of an attention call.
#[derive(Clone, Copy)]
pub struct AttShape {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub nh: usize,
}

simd_fn! {
    /// Rows r0..r1 of the (T, T) matrix `p` hold scaled scores in columns 0..r1; replaces them
    /// by the causal softmax (row r over columns 0..=r, zeros in r+1..r1).
    fn softmax_causal_block(p: &mut [f32], t: usize, r0: usize, r1: usize) {
        for r in r0..r1 {
            let row = &mut p[r * t..r * t + r1];
            let (live, masked) = row.split_at_mut(r + 1);
            let m = simd::max(live);
            let mut acc = [0f32; 16];
            let mut chunks = live.chunks_exact_mut(16);
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
            let inv = 1.0 / s;
            for v in live.iter_mut() {
                *v *= inv;
            }
            masked.fill(0.0);
        }
    }
}

simd_fn! {
    /// Rows r0..r1 of `dp` (T, T) hold dL/dP in columns 0..r1; replaces them by dL/dS, the
    /// gradient of the scores: P ⊙ (dP − Σ_j P dP).
    fn softmax_backward_block(dp: &mut [f32], p: &[f32], t: usize, r0: usize, r1: usize) {
        for r in r0..r1 {
            let (d, pr) = (&mut dp[r * t..r * t + r1], &p[r * t..r * t + r + 1]);
            let (live, masked) = d.split_at_mut(r + 1);
            let dot = simd::dot(live, pr);
            for (d, &p) in live.iter_mut().zip(pr) {
                *d = p * (*d - dot);
            }
            masked.fill(0.0);
        }
    }
}

/// out (B, T, C) = per head softmax(q kᵀ/√hs, causal) v, heads side by side; saves the
/// probabilities in att (B, nh, T, T). qkv (B, T, 3C) holds [q | k | v], head h in columns
/// h·hs..(h+1)·hs of each. Parallel over (b, h).
pub fn attention_forward(out: &mut [f32], att: &mut [f32], qkv: &[f32], s: AttShape) {
    let AttShape { b, t, c, nh } = s;
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    assert!(qkv.len() >= b * t * 3 * c && out.len() >= b * t * c && att.len() >= b * nh * t * t);
    let out = SyncPtr(out.as_mut_ptr());
    att[..b * nh * t * t]
        .par_chunks_mut(t * t)
        .enumerate()
        .for_each(|(bh, p)| {
            let (bi, h) = (bh / nh, bh % nh);
            // SAFETY (all gemm calls below): q, k, v address rows bi·T..(bi+1)·T, columns
            // h·hs..(h+1)·hs of the [q|k|v] thirds of qkv (asserted large enough above), and o the
            // same rows and columns of out; (b, h) pairs write disjoint parts of out, and `out`
            // stays mutably borrowed by this function. gemm reads p only where it wrote it.
            unsafe {
                let q = qkv.as_ptr().add(bi * t * 3 * c + h * hs);
                let (k, v) = (q.add(c), q.add(2 * c));
                let o = out.get().add(bi * t * c + h * hs);
                for r0 in (0..t).step_by(ATT_BLOCK) {
                    let r1 = (r0 + ATT_BLOCK).min(t);
                    // S[r0..r1, 0..r1] = scale · Q[r0..r1] @ K[0..r1]ᵀ
                    let (qb, pb) = (rm(q.add(r0 * 3 * c), 3 * c), p.as_mut_ptr().add(r0 * t));
                    small_gemm(r1 - r0, r1, hs, pb, t, false, qb, tr(k, 3 * c), scale);
                    softmax_causal_block(p, t, r0, r1);
                    // O[r0..r1] = P[r0..r1, 0..r1] @ V[0..r1]
                    let pb = rm(p.as_ptr().add(r0 * t), t);
                    small_gemm(
                        r1 - r0,
                        hs,
                        r1,
                        o.add(r0 * c),
                        c,
                        false,
                        pb,
                        rm(v, 3 * c),
                        1.0,
                    );
                }
            }
        });
}

/// Backward of `attention_forward`: dqkv (B, T, 3C) (overwritten) from dout (B, T, C), with
/// datt (B, nh, T, T) as scratch for dL/dP and dL/dS.
pub fn attention_backward(
    dqkv: &mut [f32],
    datt: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    s: AttShape,
) {
    let AttShape { b, t, c, nh } = s;
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    assert!(qkv.len() >= b * t * 3 * c && dqkv.len() >= b * t * 3 * c && dout.len() >= b * t * c);
    assert!(att.len() >= b * nh * t * t && datt.len() >= b * nh * t * t);
    let dqkv = SyncPtr(dqkv.as_mut_ptr());
    let n_blocks = t.div_ceil(ATT_BLOCK);
    datt[..b * nh * t * t]
        .par_chunks_mut(t * t)
        .zip(att[..b * nh * t * t].par_chunks(t * t))
        .enumerate()
        .for_each(|(bh, (dp, p))| {
            let (bi, h) = (bh / nh, bh % nh);
            // SAFETY: as in `attention_forward`: every pointer addresses rows bi·T..(bi+1)·T and
            // columns h·hs..(h+1)·hs of its third of qkv, dqkv or of dout, inside the asserted
            // lengths; (b, h) pairs write disjoint parts of dqkv, which stays mutably borrowed.
            unsafe {
                let q = qkv.as_ptr().add(bi * t * 3 * c + h * hs);
                let (k, v) = (q.add(c), q.add(2 * c));
                let dq = dqkv.get().add(bi * t * 3 * c + h * hs);
                let (dk, dv) = (dq.add(c), dq.add(2 * c));
                let d_o = dout.as_ptr().add(bi * t * c + h * hs);
                // The last block spans all keys, so it writes dK and dV whole; the others add.
                for blk in (0..n_blocks).rev() {
                    let (r0, r1) = (blk * ATT_BLOCK, ((blk + 1) * ATT_BLOCK).min(t));
                    let (m, acc) = (r1 - r0, blk + 1 != n_blocks);
                    let d_ob = rm(d_o.add(r0 * c), c);
                    // dP[r0..r1, 0..r1] = dO[r0..r1] @ V[0..r1]ᵀ
                    small_gemm(
                        m,
                        r1,
                        hs,
                        dp.as_mut_ptr().add(r0 * t),
                        t,
                        false,
                        d_ob,
                        tr(v, 3 * c),
                        1.0,
                    );
                    softmax_backward_block(dp, p, t, r0, r1);
                    let ds = dp.as_ptr().add(r0 * t);
                    // dQ[r0..r1] = scale · dS @ K[0..r1]
                    small_gemm(
                        m,
                        hs,
                        r1,
                        dq.add(r0 * 3 * c),
                        3 * c,
                        false,
                        rm(ds, t),
                        rm(k, 3 * c),
                        scale,
                    );
                    // dK[0..r1] (+)= scale · dSᵀ @ Q[r0..r1]
                    let qb = rm(q.add(r0 * 3 * c), 3 * c);
                    small_gemm(r1, hs, m, dk, 3 * c, acc, tr(ds, t), qb, scale);
                    // dV[0..r1] (+)= Pᵀ @ dO[r0..r1]
                    small_gemm(
                        r1,
                        hs,
                        m,
                        dv,
                        3 * c,
                        acc,
                        tr(p.as_ptr().add(r0 * t), t),
                        d_ob,
                        1.0,
                    );
                }
            }
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
    let n = targets.len();
    let total: f64 = logits
        .par_chunks(v * rows)
        .zip(lse.par_chunks_mut(rows))
        .zip(targets.par_chunks(rows))
        .map(|((l, s), tg)| cross_entropy_rows(l, s, tg, v))
        .sum();
    (total / n as f64) as f32
}

simd_fn! {
    fn cross_entropy_backward_rows(dlogits: &mut [f32], logits: &[f32], lse: &[f32], targets: &[u32], v: usize, s: f32) {
        for (((d, row), &lse), &tg) in dlogits.chunks_exact_mut(v).zip(logits.chunks_exact(v)).zip(lse).zip(targets) {
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
    v: usize,
    s: f32,
) {
    let rows = rows_per_task(v);
    dlogits
        .par_chunks_mut(v * rows)
        .zip(logits.par_chunks(v * rows))
        .zip(lse.par_chunks(rows).zip(targets.par_chunks(rows)))
        .for_each(|((d, l), (ls, tg))| cross_entropy_backward_rows(d, l, ls, tg, v, s));
}
