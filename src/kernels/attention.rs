//! Attention kernels: causal multi-head self-attention for training, FlashAttention style, in
//! f32 or bf16, with its backward; and the bidirectional attention of packed sequences
//! (encoders). Attention over a key/value cache (decoding) is `kv_attention`.

use rayon::prelude::*;

use super::bf16::{self, Causal, Panels};
use super::matmul::{gemm_raw, rm, Strided, SERIAL};
use super::simd::{self, simd_fn};
use super::{add_assign, Precision, SyncPtr};

/// Side of the square attention tiles (forward as in FlashAttention, Dao et al. 2022;
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

/// One (b, h) task's operands: q, k = q + C and v = q + 2C (parts 0, 1, 2; rows 3C apart, the
/// bias already added) and, in the backward, dO (rows C apart).
/// `keys` is the part `by_keys` multiplies: V in the forward, K in the backward.
#[derive(Clone, Copy)]
struct Head {
    q: *mut f32,
    d_o: *const f32,
    keys: usize,
    t: usize,
    c: usize,
    hs: usize,
}

const Q: usize = 0;
const K: usize = 1;
const V: usize = 2;

impl Head {
    /// Rows r.. of part `x` of qkv.
    unsafe fn part(self, x: usize, r: usize) -> Strided {
        rm(self.q.add(x * self.c + r * 3 * self.c), 3 * self.c)
    }

    /// Rows r.. of dO.
    unsafe fn d_o(self, r: usize) -> Strided {
        rm(self.d_o.add(r * self.c), self.c)
    }
}

/// A product's destination: (pointer, row stride, whether to add to what it holds).
type Dst = (*mut f32, usize, bool);

/// Query rows r0..r0 + m against key rows k0..k0 + n.
#[derive(Clone, Copy)]
struct Tile {
    r0: usize,
    m: usize,
    k0: usize,
    n: usize,
}

impl Tile {
    /// The part of a product that is needed: `mode` on the diagonal tile, all of it elsewhere.
    fn diag(self, mode: Causal) -> Causal {
        if self.k0 == self.r0 {
            mode
        } else {
            Causal::Full
        }
    }
}

/// The tile products of one (b, h) task; all else (the loops, the online softmax, the causal
/// mask, the log-sum-exps) the two precisions share. In f32 they read qkv's columns where they
/// lie; in bf16 (f32 sums) they multiply operands `packed` once per head and per query tile.
struct Products<'a> {
    h: Head,
    packed: Option<Packed<'a>>,
}

/// The bf16 operands of one task, in this thread's scratch: Kᵀ and `keys` once per head; in the
/// backward also Vᵀ, Q and dO (`None` in the forward); Q (and dO) once per query tile; each
/// tile of P or dS once per use.
struct Packed<'a> {
    kt: Panels,
    keys: Panels,
    vt: Option<Panels>,
    qb: Option<Panels>,
    dob: Option<Panels>,
    qa: Option<Panels>,
    doa: Option<Panels>,
    /// Scratch for the query tile's Q and dO, and for the tiles of P and dS.
    scratch: [&'a mut [u32]; 3],
}

impl Products<'_> {
    /// Runs `f` on the head's products in `prec`, its operands readied for the forward or the
    /// backward.
    ///
    /// # Safety
    /// The head's rows must lie inside live memory that no other task writes meanwhile; bf16
    /// needs a CPU with its instructions (the caller checks).
    unsafe fn with(h: Head, prec: Precision, backward: bool, f: impl FnOnce(&mut Products)) {
        if prec == Precision::F32 {
            return f(&mut Products { h, packed: None });
        }
        let Head { t, hs, .. } = h;
        let (bt, tb) = (bf16::b_words(hs, t), bf16::b_words(t, hs));
        let (ah, at) = (
            bf16::a_words(ATT_TILE, hs),
            bf16::a_words(ATT_TILE, ATT_TILE),
        );
        let back = |words| if backward { words } else { 0 };
        let lens = [bt, back(bt), tb, back(tb), back(tb), ah, back(ah), at];
        bf16::with_scratch(lens, |[kt, vt, keys, qb, dob, qa, doa, sa]| {
            let pack = |dst, x, k, cols| bf16::pack_b(dst, x, k, cols);
            let packed = Packed {
                kt: pack(kt, h.part(K, 0).t(), hs, t),
                keys: pack(keys, h.part(h.keys, 0), t, hs),
                vt: backward.then(|| pack(vt, h.part(V, 0).t(), hs, t)),
                qb: backward.then(|| pack(qb, h.part(Q, 0), t, hs)),
                dob: backward.then(|| pack(dob, h.d_o(0), t, hs)),
                qa: None,
                doa: None,
                scratch: [qa, doa, sa],
            };
            f(&mut Products {
                h,
                packed: Some(packed),
            })
        })
    }

    /// Readies query tile r0..r0 + m.
    unsafe fn query_tile(&mut self, r0: usize, m: usize) {
        let (h, Some(p)) = (self.h, &mut self.packed) else {
            return;
        };
        p.qa = Some(bf16::pack_a(p.scratch[0], h.part(Q, r0), m, h.hs));
        if p.dob.is_some() {
            p.doa = Some(bf16::pack_a(p.scratch[1], h.d_o(r0), m, h.hs));
        }
    }

    /// s (m, n) = alpha · Q[r0..] @ K[k0..]ᵀ, or for `grad` dP = alpha · dO[r0..] @ V[k0..]ᵀ.
    unsafe fn scores(&mut self, s: *mut f32, t: Tile, alpha: f32, grad: bool) {
        let (h, dims) = (self.h, (t.m, t.n, self.h.hs));
        let Some(p) = &self.packed else {
            let (x, y) = match grad {
                true => (h.d_o(t.r0), h.part(V, t.k0)),
                false => (h.part(Q, t.r0), h.part(K, t.k0)),
            };
            return gemm_raw(dims, s, t.n, false, x, y.t(), alpha, SERIAL);
        };
        let (x, y) = [(p.qa, Some(p.kt)), (p.doa, p.vt)][grad as usize];
        let (x, y) = (x.unwrap(), y.unwrap().skip_lanes(t.k0));
        bf16::gemm_packed(dims, s, t.n, 0.0, x, y, alpha, t.diag(Causal::Lower));
    }

    /// dst (m, hs) = [dst +] alpha · x (m, n) @ `keys`[k0..].
    unsafe fn by_keys(&mut self, dst: Dst, t: Tile, x: *const f32, alpha: f32) {
        let y = self.h.part(self.h.keys, t.k0);
        let y = self.packed.as_ref().map(|p| p.keys.skip_k(t.k0)).ok_or(y);
        let mode = t.diag(Causal::DepthUpTo);
        self.gemm((t.m, self.h.hs, t.n), dst, rm(x, t.n), y, alpha, mode);
    }

    /// dst (n, hs) = [dst +] alpha · xᵀ (n, m) @ Q[r0..], or for `grad` dO[r0..].
    unsafe fn by_queries(&mut self, dst: Dst, t: Tile, x: *const f32, alpha: f32, grad: bool) {
        let y = [self.h.part(Q, t.r0), self.h.d_o(t.r0)][grad as usize];
        let p = self.packed.as_ref();
        let y = p
            .map(|p| [p.qb, p.dob][grad as usize].unwrap().skip_k(t.r0))
            .ok_or(y);
        let mode = t.diag(Causal::DepthFrom);
        self.gemm((t.n, self.h.hs, t.m), dst, rm(x, t.n).t(), y, alpha, mode);
    }

    /// dst (m, n) = [dst +] alpha · a (m, k) @ b (k, n): bf16 with b packed (`Ok`), a packed
    /// into the tile scratch first, or f32 (`Err`).
    unsafe fn gemm(
        &mut self,
        dims: (usize, usize, usize),
        dst: Dst,
        a: Strided,
        b: Result<Panels, Strided>,
        alpha: f32,
        mode: Causal,
    ) {
        let ((m, _, k), (dst, ld, acc)) = (dims, dst);
        match (b, &mut self.packed) {
            (Ok(b), Some(p)) => {
                let (a, beta) = (
                    bf16::pack_a(p.scratch[2], a, m, k),
                    if acc { 1.0 } else { 0.0 },
                );
                bf16::gemm_packed(dims, dst, ld, beta, a, b, alpha, mode)
            }
            (Err(b), _) => gemm_raw(dims, dst, ld, acc, a, b, alpha, SERIAL),
            (Ok(_), None) => unreachable!("packed operands without scratch"),
        }
    }
}

/// out (B, T, C) = per head softmax(q kᵀ/√hs, causal) v, heads side by side; saves the
/// log-sum-exp of each row of scores in lse (B, nh, T), all the backward needs to recompute the
/// probabilities. qkv (B, T, 3C) holds [q | k | v] (head h in columns h·hs..(h+1)·hs of each)
/// without the c_attn bias, which is added here, in place, by the task that reads those
/// columns. Parallel over (b, h); each task walks its query tiles and, for each, the key tiles
/// up to the diagonal with an online softmax. `Precision::Bf16` rounds the products' inputs to
/// bf16 (f32 sums, f32 softmax).
pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    qkv: &mut [f32],
    bias: Option<&[f32]>,
    s: AttShape,
    prec: Precision,
) {
    let AttShape { b, t, c, nh } = s;
    assert!(qkv.len() >= b * t * 3 * c && out.len() >= b * t * c && lse.len() >= b * nh * t);
    assert!(bias.is_none_or(|b| b.len() == 3 * c));
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
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
            // thirds of qkv (asserted large enough by the caller), and o the same rows and
            // columns of out; different (b, h) tasks touch disjoint parts of qkv and of out, both
            // of which stay mutably borrowed by this function. The products read p only where
            // they wrote it; bf16 ones run only where the caller checked the CPU has them.
            unsafe {
                let q = qkv.get().add(bi * t * 3 * c + h * hs);
                let o = out.get().add(bi * t * c + h * hs);
                if let Some(bias) = bias {
                    add_head_bias(q, bias, (t, c, h, hs));
                }
                let d_o = std::ptr::null();
                let head = Head {
                    q,
                    d_o,
                    keys: V,
                    t,
                    c,
                    hs,
                };
                Products::with(head, prec, false, |prod| {
                    for r0 in (0..t).step_by(ATT_TILE) {
                        let (m, oi) = (ATT_TILE.min(t - r0), o.add(r0 * c));
                        prod.query_tile(r0, m);
                        for k0 in (0..=r0).step_by(ATT_TILE) {
                            let tile = Tile {
                                r0,
                                m,
                                k0,
                                n: ATT_TILE.min(t - k0),
                            };
                            let (first, pt) = (k0 == 0, &mut p[..m * tile.n]);
                            // S (m, n) = scale · Q[r0..] @ K[k0..]ᵀ
                            prod.scores(pt.as_mut_ptr(), tile, scale, false);
                            let (mx, sum, alpha) = (&mut mx[..m], &mut sum[..m], &mut alpha[..m]);
                            online_softmax_tile(pt, mx, sum, alpha, (r0, k0, tile.n), first);
                            if !first {
                                scale_rows(oi, c, hs, alpha);
                            }
                            // O[r0..] = alpha · O[r0..] + P @ V[k0..]
                            prod.by_keys((oi, c, !first), tile, pt.as_ptr(), 1.0);
                        }
                        for (rr, (&mx, &s)) in mx[..m].iter().zip(&sum[..m]).enumerate() {
                            (alpha[rr], lse[r0 + rr]) = (1.0 / s, mx + s.ln());
                        }
                        scale_rows(oi, c, hs, &alpha[..m]);
                    }
                })
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
    let n3 = b * t * 3 * c;
    assert!(qkv.len() >= n3 && dqkv.len() >= n3 && lse.len() >= b * nh * t);
    assert!(dout.len() >= b * t * c && out.len() >= b * t * c);
    let hs = c / nh;
    let scale = 1.0 / (hs as f32).sqrt();
    let dqkv = SyncPtr(dqkv.as_mut_ptr());
    lse[..b * nh * t]
        .par_chunks(t)
        .enumerate()
        .for_each(|(bh, lse)| {
            let (bi, h) = (bh / nh, bh % nh);
            let mut p = [0f32; ATT_TILE * ATT_TILE];
            let mut dp = [0f32; ATT_TILE * ATT_TILE];
            let mut d = [0f32; ATT_TILE];
            // SAFETY: as in `forward`: every pointer addresses rows bi·T..(bi+1)·T and columns
            // h·hs..(h+1)·hs of its third of qkv or dqkv, or of dout or out, inside the asserted
            // lengths; different (b, h) tasks write disjoint parts of dqkv, which stays mutably
            // borrowed by this function; qkv is only read.
            unsafe {
                let q = qkv.as_ptr().add(bi * t * 3 * c + h * hs).cast_mut();
                let dq = dqkv.get().add(bi * t * 3 * c + h * hs);
                let off = bi * t * c + h * hs;
                let (d_o, o) = (dout.as_ptr().add(off), out.as_ptr().add(off));
                let head = Head {
                    q,
                    d_o,
                    keys: K,
                    t,
                    c,
                    hs,
                };
                // Query tiles in order: key tile j is first met by query tile j (the diagonal),
                // which writes its dK and dV; later query tiles add to them.
                Products::with(head, prec, true, |prod| {
                    for r0 in (0..t).step_by(ATT_TILE) {
                        let m = ATT_TILE.min(t - r0);
                        for (rr, d) in d[..m].iter_mut().enumerate() {
                            let row = |x: *const f32| {
                                std::slice::from_raw_parts(x.add((r0 + rr) * c), hs)
                            };
                            *d = simd::dot(row(d_o), row(o));
                        }
                        prod.query_tile(r0, m);
                        for k0 in (0..=r0).step_by(ATT_TILE) {
                            let tile = Tile {
                                r0,
                                m,
                                k0,
                                n: ATT_TILE.min(t - k0),
                            };
                            let (pt, dpt) = (&mut p[..m * tile.n], &mut dp[..m * tile.n]);
                            // S (m, n) = scale · Q[r0..] @ K[k0..]ᵀ, dP (m, n) = dO[r0..] @ V[k0..]ᵀ
                            prod.scores(pt.as_mut_ptr(), tile, scale, false);
                            prod.scores(dpt.as_mut_ptr(), tile, 1.0, true);
                            let at = (r0, k0, tile.n);
                            softmax_backward_tile(pt, dpt, &lse[r0..r0 + m], &d[..m], at);
                            let (ps, ds) = (pt.as_ptr(), dpt.as_ptr());
                            // dQ[r0..] (+)= scale · dS @ K[k0..]
                            let dqi = (dq.add(r0 * 3 * c), 3 * c, k0 > 0);
                            prod.by_keys(dqi, tile, ds, scale);
                            // dK[k0..] (+)= scale · dSᵀ @ Q[r0..]; dV[k0..] (+)= Pᵀ @ dO[r0..]
                            let dkj = dq.add(c + k0 * 3 * c);
                            let (dkj, dvj) = ((dkj, 3 * c, k0 < r0), (dkj.add(c), 3 * c, k0 < r0));
                            prod.by_queries(dkj, tile, ds, scale, false);
                            prod.by_queries(dvj, tile, ps, 1.0, true);
                        }
                    }
                })
            }
        });
}

/// Bidirectional multi-head attention of packed sequences (the BERT encoder's): ctx (N, C) =
/// softmax(q kᵀ / √hs) v per sequence and head, from qkv (N, 3C) (projection bias included);
/// `lens` are the sequences' lengths, N in all. Sequences run in parallel.
pub fn packed_attention(qkv: &[f32], ctx: &mut [f32], lens: &[usize], nh: usize) {
    let c = ctx.len() / lens.iter().sum::<usize>().max(1);
    let mut parts = Vec::with_capacity(lens.len());
    let (mut q_rest, mut c_rest) = (qkv, &mut ctx[..]);
    for &l in lens {
        let (q, qr) = q_rest.split_at(l * 3 * c);
        let (o, cr) = std::mem::take(&mut c_rest).split_at_mut(l * c);
        parts.push((q, o));
        (q_rest, c_rest) = (qr, cr);
    }
    parts.into_par_iter().for_each(|(q, o)| {
        let l = o.len() / c;
        if l > 0 {
            let mut s = vec![0f32; l * l];
            attend_sequence(q, o, nh, &mut s);
        }
    });
}

/// One sequence's bidirectional attention over all heads: `qkv` its (L, 3C) rows of the fused
/// projection, `ctx` its (L, C) output, `s` an (L, L) scratch for one head's scores. The
/// heads are read and written in place through strides.
fn attend_sequence(qkv: &[f32], ctx: &mut [f32], nh: usize, s: &mut [f32]) {
    let l = s.len().isqrt();
    let c = ctx.len() / l;
    let hs = c / nh;
    assert!(qkv.len() == l * 3 * c && s.len() == l * l);
    let scale = 1.0 / (hs as f32).sqrt();
    for h in 0..nh {
        let (q, k, v) = (h * hs, c + h * hs, 2 * c + h * hs);
        // SAFETY: q, k and v address (L, hs) blocks inside qkv (row stride 3C), the head's
        // output an (L, hs) block inside ctx (row stride C), s is (L, L); none overlap.
        unsafe {
            // s (L, L) = q (L, hs) @ kᵀ (hs, L) / √hs
            let kt = Strided {
                ptr: qkv.as_ptr().add(k),
                rs: 1,
                cs: 3 * c,
            };
            let qh = rm(qkv.as_ptr().add(q), 3 * c);
            gemm_raw((l, l, hs), s.as_mut_ptr(), l, false, qh, kt, scale, SERIAL);
        }
        softmax_rows(s, l);
        unsafe {
            // ctx_h (L, hs) = p (L, L) @ v (L, hs)
            let (vh, p) = (rm(qkv.as_ptr().add(v), 3 * c), rm(s.as_ptr(), l));
            let o = ctx.as_mut_ptr().add(h * hs);
            gemm_raw((l, hs, l), o, c, false, p, vh, 1.0, SERIAL);
        }
    }
}

simd_fn! {
    /// Each row of the (L, L) scores replaced by its softmax.
    fn softmax_rows(s: &mut [f32], l: usize) {
        for row in s.chunks_exact_mut(l) {
            let max = simd::max(row);
            for v in row.iter_mut() {
                *v = simd::exp(*v - max);
            }
            let inv = 1.0 / simd::sum(row);
            for v in row.iter_mut() {
                *v *= inv;
            }
        }
    }
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
