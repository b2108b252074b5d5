//! The AVX512-BF16 micro-kernel (`vdpbf16ps`).

use std::arch::x86_64::*;

use super::{Mat, MR, NR};

/// Mask of the first `n` (≤ 16) lanes.
#[inline(always)]
fn first(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// 16 pair words (lo[l], hi[l]) from two vectors of f32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
fn pair16(lo: __m512, hi: __m512) -> __m512i {
    // [bf16(lo) | bf16(hi)] as 32 16-bit words, then interleaved: word 2l = lo[l], 2l + 1 = hi[l].
    // SAFETY: __m512bh and __m512i are both 512 plain bits.
    let v: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo)) };
    let idx = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    _mm512_permutexvar_epi16(idx, v)
}

/// The 16 × 16 transpose of 32-bit words: out[c] lane r = rows[r] lane c. Unpacks of
/// 32- and 64-bit words transpose the 4 × 4 blocks, two rounds of 128-bit lane shuffles
/// place them.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // u[4g + c]: in each 128-bit lane j, column 4j + c of rows 4g..4g + 4.
    let mut u = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        let (t0, t1, t2, t3) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        u[4 * g] = _mm512_unpacklo_epi64(t0, t2);
        u[4 * g + 1] = _mm512_unpackhi_epi64(t0, t2);
        u[4 * g + 2] = _mm512_unpacklo_epi64(t1, t3);
        u[4 * g + 3] = _mm512_unpackhi_epi64(t1, t3);
    }
    let mut v = [_mm512_setzero_si512(); 16];
    for h in 0..2 {
        for c in 0..4 {
            let (x, y) = (u[8 * h + c], u[8 * h + 4 + c]);
            v[8 * h + c] = _mm512_shuffle_i32x4::<0x88>(x, y);
            v[8 * h + 4 + c] = _mm512_shuffle_i32x4::<0xdd>(x, y);
        }
    }
    let mut out = [_mm512_setzero_si512(); 16];
    for c in 0..8 {
        out[c] = _mm512_shuffle_i32x4::<0x88>(v[c], v[8 + c]);
        out[8 + c] = _mm512_shuffle_i32x4::<0xdd>(v[c], v[8 + c]);
    }
    out
}

/// `pack` when k is contiguous (x.cs == 1): 32 consecutive k of one lane convert at once
/// into 16 consecutive pair words; 16 lanes of those transpose into 16 rows kp.
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn pack_k_contiguous(dst: *mut u32, w: usize, x: Mat, lanes: usize, kc: usize) {
    let kcp = kc.div_ceil(2);
    for l0 in (0..w).step_by(16) {
        let store = first(w - l0);
        for k0 in (0..kc).step_by(32) {
            let cnt = (kc - k0).min(32);
            let (m_lo, m_hi) = (first(cnt), first(cnt.saturating_sub(16)));
            let mut r = [_mm512_setzero_si512(); 16];
            for (q, r) in r.iter_mut().enumerate() {
                if l0 + q < lanes {
                    let row = x.ptr.add((l0 + q) * x.rs + k0);
                    let lo = _mm512_maskz_loadu_ps(m_lo, row);
                    let hi = _mm512_maskz_loadu_ps(m_hi, row.add(16));
                    // cvtne2ps(hi, lo) = [bf16(lo) | bf16(hi)]: 16 pairs in k order.
                    *r = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
                }
            }
            let cols = transpose16(r);
            let kp0 = k0 / 2;
            for (c, col) in cols.iter().enumerate().take(kcp - kp0) {
                _mm512_mask_storeu_epi32(dst.add((kp0 + c) * w + l0).cast(), store, *col);
            }
        }
    }
}

/// `pack_block` when the lanes are contiguous (x.rs == 1): rows k and k + 1 of 16 lanes
/// convert into 16 consecutive pair words; the rows of x are walked in storage order.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub unsafe fn pack_lane_contiguous(dst: *mut u32, w: usize, x: Mat, lanes: usize, kc: usize) {
    let kcp = kc.div_ceil(2);
    for kp in 0..kcp {
        let r0 = x.ptr.add(2 * kp * x.cs);
        let has_hi = 2 * kp + 1 < kc;
        for (p, l) in (0..lanes).step_by(w).enumerate() {
            let panel = dst.add(p * kcp * w + kp * w);
            for l0 in (0..w).step_by(16) {
                let m = first(lanes.saturating_sub(l + l0).min(w - l0));
                let lo = _mm512_maskz_loadu_ps(m, r0.add(l + l0));
                let hi = if has_hi {
                    _mm512_maskz_loadu_ps(m, r0.add(x.cs + l + l0))
                } else {
                    _mm512_setzero_ps()
                };
                _mm512_mask_storeu_epi32(panel.add(l0).cast(), first(w - l0), pair16(lo, hi));
            }
        }
    }
}

/// See `super::kernel`.
#[allow(clippy::too_many_arguments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn kernel(
    kcp: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    (rows, cols): (usize, usize),
    beta: f32,
    alpha: f32,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (mut a, mut b) = (a, b);
    for _ in 0..kcp {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16).cast()));
        for (i, acc) in acc.iter_mut().enumerate() {
            let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(i) as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], ai, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], ai, b1);
        }
        a = a.add(MR);
        b = b.add(NR);
    }
    let (m0, m1) = (first(cols), first(cols.saturating_sub(16)));
    let (va, vb) = (_mm512_set1_ps(alpha), _mm512_set1_ps(beta));
    for (i, acc) in acc.iter().enumerate() {
        if i >= rows {
            break;
        }
        let row = c.add(i * ldc);
        for (h, (&acc, m)) in acc.iter().zip([m0, m1]).enumerate() {
            let p = row.add(16 * h);
            let mut v = _mm512_mul_ps(acc, va);
            if beta != 0.0 {
                v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, p), vb, v);
            }
            _mm512_mask_storeu_ps(p, m, v);
        }
    }
}
