//! Causal multi-head self-attention, FlashAttention style, in f32 or bf16.

use rayon::prelude::*;

use super::bf16::{self, Causal};
use super::matmul::{gemm_raw, rm, tr, Strided, SERIAL};
use super::simd::{self, simd_fn};
use super::{add_assign, Precision, SyncPtr};

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
                        let gemm = |dims, dst, ld, beta, a, b, alpha, mode| {
                            bf16::gemm_packed(dims, dst, ld, beta, a, b, alpha, diag(mode))
                        };
                        let (kj, vj) = (kt.skip_lanes(k0), vt.skip_lanes(k0));
                        gemm((m, n, hs), pp, n, 0.0, qa, kj, scale, Causal::Lower);
                        gemm((m, n, hs), dpp, n, 0.0, doa, vj, 1.0, Causal::Lower);
                        softmax_backward_tile(pt, dpt, &lse[r0..r0 + m], &d[..m], (r0, k0, n));
                        let (ps, ds) = (pt.as_ptr(), dpt.as_ptr());
                        // dQ[r0..] (+)= scale · dS @ K[k0..]
                        let dqi = dq.add(r0 * 3 * c);
                        let beta = if k0 > 0 { 1.0 } else { 0.0 };
                        let sa_ = bf16::pack_a(sa, bmat(rm(ds, n)), m, n);
                        let kj = kb.skip_k(k0);
                        gemm(
                            (m, hs, n),
                            dqi,
                            3 * c,
                            beta,
                            sa_,
                            kj,
                            scale,
                            Causal::DepthUpTo,
                        );
                        // dK[k0..] (+)= scale · dSᵀ @ Q[r0..]; dV[k0..] (+)= Pᵀ @ dO[r0..]
                        let (dkj, dvj) = (dk.add(k0 * 3 * c), dv.add(k0 * 3 * c));
                        let beta = if k0 < r0 { 1.0 } else { 0.0 };
                        let sa_ = bf16::pack_a(sa, bmat(tr(ds, n)), n, m);
                        let qi = qb.skip_k(r0);
                        gemm(
                            (n, hs, m),
                            dkj,
                            3 * c,
                            beta,
                            sa_,
                            qi,
                            scale,
                            Causal::DepthFrom,
                        );
                        let sa_ = bf16::pack_a(sa, bmat(tr(ps, n)), n, m);
                        let doi = dob.skip_k(r0);
                        gemm(
                            (n, hs, m),
                            dvj,
                            3 * c,
                            beta,
                            sa_,
                            doi,
                            1.0,
                            Causal::DepthFrom,
                        );
                    }
                }
            })
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::{fill, rel_l2};

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
