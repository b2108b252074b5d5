//! The AVX2 tier of the products: the same integer lane sums as `vpdpbusd`, from `vpmaddubsw`
//! (unsigned × signed byte pairs to i16) and `vpmaddwd` (i16 pairs to i32), as llama.cpp's AVX2
//! build forms them, then the same float steps as the other tiers. No i16 sum saturates: Q4
//! codes are at most 15, so a pair sums to at most 2·15·127; Q8_0 multiplies signed codes by
//! the sign trick (|w| times x·sign(w)), at most 2·128·127.

use std::arch::x86_64::*;

use super::{Codes, WPair, XRows, BLOCK};

/// How far ahead of the block being read the weights are prefetched, in bytes of codes
/// (the scales as many blocks ahead): decoding streams every weight once from memory, and
/// the hardware prefetchers alone left the loads waiting (on a Zen 3 EPYC, 2 threads:
/// 86 → 100 tokens/s at 1-2 KiB).
const PREFETCH: usize = 2048;

/// Eight i32 lanes, lane l = Σ_{j<4} u[4l+j]·x[4l+j] for unsigned u and signed x.
#[inline(always)]
unsafe fn lanes(u: __m256i, x: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1))
}

/// Rows H0..H0 + R of the pair's block b, each row's 32 codes in value order (Q4: low
/// nibbles are values 0..16, high nibbles 16..32; both rows come from one load).
#[inline(always)]
unsafe fn codes<const FMT: u8, const H0: usize, const R: usize>(
    w: WPair,
    b: usize,
) -> [__m256i; R] {
    let mut u = [_mm256_setzero_si256(); R];
    if FMT == Q8_0 {
        for (h, u) in u.iter_mut().enumerate() {
            *u = _mm256_loadu_si256(w.qs.as_ptr().add(b * 64 + (H0 + h) * 32).cast());
        }
    } else if R == 2 {
        let raw = _mm256_loadu_si256(w.qs.as_ptr().add(b * 32).cast());
        let mask = _mm256_set1_epi8(0x0f);
        let lo = _mm256_and_si256(raw, mask);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), mask);
        u[0] = _mm256_permute2x128_si256::<0x20>(lo, hi);
        // `R - 1` is 1 here; spelled so that the R = 1 instance, where this branch is dead,
        // still compiles.
        u[R - 1] = _mm256_permute2x128_si256::<0x31>(lo, hi);
    } else {
        for (h, u) in u.iter_mut().enumerate() {
            let raw = _mm_loadu_si128(w.qs.as_ptr().add(b * 32 + (H0 + h) * 16).cast());
            let mask = _mm_set1_epi8(0x0f);
            let lo = _mm_and_si128(raw, mask);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(raw), mask);
            *u = _mm256_set_m128i(hi, lo);
        }
    }
    u
}

/// The formats, as `rows`' parameter: offsets through `summs`, a fixed offset code, signed
/// 8-bit codes.
const Q4_1: u8 = 0;
const Q4_0: u8 = 1;
const Q8_0: u8 = 2;

/// As `super::avx512::pair_dots`, on 256-bit registers, into `out` (one entry a pair of
/// consecutive pairs of `w`). Up to two activation rows take both weight rows in one pass;
/// more take one weight row a pass, so that the accumulators stay in the 16 registers.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn pair_dots<const N: usize>(
    codes: Codes,
    offset_code: i32,
    w: WPair,
    x: XRows,
    out: &mut [[[f32; 4]; 2]],
) {
    let pairs = out.len();
    for (j, o) in out.iter_mut().enumerate() {
        let w = w.pair(j, pairs);
        let off = offset_code;
        *o = match (codes, offset_code) {
            (Codes::Bytes, _) => pair::<N, Q8_0>(off, w, x),
            (Codes::Nibbles, 0) => pair::<N, Q4_1>(off, w, x),
            (Codes::Nibbles, _) => pair::<N, Q4_0>(off, w, x),
        };
    }
}

#[inline(always)]
unsafe fn pair<const N: usize, const FMT: u8>(off: i32, w: WPair, x: XRows) -> [[f32; 4]; 2] {
    if N <= 2 {
        rows::<N, FMT, 0, 2>(off, w, x)
    } else {
        let [r0] = rows::<N, FMT, 0, 1>(off, w, x);
        let [r1] = rows::<N, FMT, 1, 1>(off, w, x);
        [r0, r1]
    }
}

/// Rows H0..H0 + R of a pair against N activation rows: per block and row, the eight lane
/// sums accumulated as fma(dw·dx, lane, acc), then llama.cpp's horizontal sum plus `summs`.
/// The pair's f16 [d0, d1, m0, m1] of a block convert in one step; its lanes times dx give both
/// rows' scales, and Q4_1's offsets accumulate lane-wise, fma(m, s, summs), in lanes 2 and 3.
#[inline(always)]
unsafe fn rows<const N: usize, const FMT: u8, const H0: usize, const R: usize>(
    offset_code: i32,
    w: WPair,
    x: XRows,
) -> [[f32; 4]; R] {
    let nb = w.blocks();
    let cols = nb * BLOCK;
    let ones = _mm256_set1_epi8(1);
    let off = _mm256_set1_epi32(offset_code);
    let mut acc = [[_mm256_setzero_ps(); N]; R];
    // Q4_1's Σ m·s per activation row: with two rows a pass, both rows' in lanes 2 and 3 of
    // a register per activation row; with one, the activation rows' in the lanes of one.
    let mut summs = [_mm_setzero_ps(); N];
    let mut summ4 = _mm_setzero_ps();
    // Bytes of codes per block of the pair.
    let per_block = if FMT == Q8_0 { 64 } else { 32 };
    for b in 0..nb {
        // Past the pair's end the addresses run into the next pairs of the task (a prefetch
        // never faults).
        let ahead = b + PREFETCH / per_block;
        _mm_prefetch::<_MM_HINT_T0>(w.qs.as_ptr().wrapping_add(ahead * per_block).cast());
        _mm_prefetch::<_MM_HINT_T0>(w.dm.as_ptr().wrapping_add(4 * ahead).cast());
        let u = codes::<FMT, H0, R>(w, b);
        // Q8_0: the signed codes u − 128, whose products need no offset step.
        let q = u.map(|u| _mm256_xor_si256(u, _mm256_set1_epi8(-128)));
        let dm = _mm_cvtph_ps(_mm_loadl_epi64(w.dm.as_ptr().add(4 * b).cast()));
        // One row a pass: its scale broadcast and its offset, once a block.
        let (wd, m) = match H0 {
            0 => (
                _mm256_broadcastss_ps(dm),
                _mm_cvtss_f32(_mm_movehl_ps(dm, dm)),
            ),
            _ => {
                let odd = _mm_movehdup_ps(dm);
                (
                    _mm256_broadcastss_ps(odd),
                    _mm_cvtss_f32(_mm_movehl_ps(odd, odd)),
                )
            }
        };
        if FMT == Q4_1 && R == 1 {
            let s = _mm_loadu_ps(x.st.as_ptr().add(b * x.st_stride));
            summ4 = _mm_fmadd_ps(_mm_set1_ps(m), s, summ4);
        }
        for k in 0..N {
            let xv = _mm256_loadu_si256(x.qs.as_ptr().add(k * cols + b * BLOCK).cast());
            let (xd, xs) = (x.d.get_unchecked(k * nb + b), x.s.get_unchecked(k * nb + b));
            // Both rows' scales dw·dx from one product: lanes 0 and 1.
            let scales = _mm_mul_ps(dm, _mm_set1_ps(*xd));
            if FMT == Q4_1 && R == 2 {
                summs[k] = _mm_fmadd_ps(dm, _mm_set1_ps(*xs), summs[k]);
            }
            for h in 0..R {
                let scale = match (R, h) {
                    (2, 0) => _mm256_broadcastss_ps(scales),
                    (2, _) => _mm256_broadcastss_ps(_mm_movehdup_ps(scales)),
                    _ => _mm256_mul_ps(wd, _mm256_broadcast_ss(xd)),
                };
                let dot = match FMT {
                    Q8_0 => lanes(_mm256_sign_epi8(q[h], q[h]), _mm256_sign_epi8(xv, q[h])),
                    Q4_0 => {
                        let sums = lanes(ones, xv);
                        _mm256_sub_epi32(lanes(u[h], xv), _mm256_mullo_epi32(off, sums))
                    }
                    _ => lanes(u[h], xv),
                };
                acc[h][k] = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(dot), acc[h][k]);
            }
        }
    }
    let mut s4 = [0f32; 4];
    _mm_storeu_ps(s4.as_mut_ptr(), summ4);
    let mut out = [[0f32; 4]; R];
    for (h, o) in out.iter_mut().enumerate() {
        for k in 0..N {
            let (mut a, mut sm) = ([0f32; 8], [0f32; 4]);
            _mm256_storeu_ps(a.as_mut_ptr(), acc[h][k]);
            _mm_storeu_ps(sm.as_mut_ptr(), summs[k]);
            let summ = if R == 2 { sm[2 + h] } else { s4[k] };
            o[k] = crate::kernels::ggml::hsum8(&a) + summ;
        }
    }
    out
}
