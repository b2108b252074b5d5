//! The AVX-512 tier of the products: `vpdpbusd` (AVX512-VNNI) lane sums, both rows of a pair
//! in one 512-bit register.

use std::arch::x86_64::*;

use super::{Codes, WPair, XRows, BLOCK};

/// A pair of weight rows (the low and high 256-bit halves) against N activation rows,
/// block by block: per half, eight lanes of `vpdpbusd` sums accumulated as
/// fma(dw·dx, lane, acc), then llama.cpp's horizontal sum plus the offsets' `summs` (two
/// lanes of a 128-bit fma, one per row).
/// `one` for each pair of `w` (consecutive pairs), into `out` (one entry a pair).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma,f16c")]
pub unsafe fn pair_dots<const N: usize>(
    codes: Codes,
    offset_code: i32,
    w: WPair,
    x: XRows,
    out: &mut [[[f32; 4]; 2]],
) {
    let pairs = out.len();
    for (j, o) in out.iter_mut().enumerate() {
        *o = one::<N>(codes, offset_code, w.pair(j, pairs), x);
    }
}

#[inline(always)]
unsafe fn one<const N: usize>(codes: Codes, offset_code: i32, w: WPair, x: XRows) -> [[f32; 4]; 2] {
    let nb = w.blocks();
    let cols = nb * BLOCK;
    let mask = _mm256_set1_epi8(0x0f);
    let ones = _mm512_set1_epi8(1);
    let off = _mm512_set1_epi32(offset_code);
    // Lanes 0..8 take the pair's first scale, 8..16 its second.
    let halves = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    let mut acc = [_mm512_setzero_ps(); N];
    let mut summs = [_mm_setzero_ps(); N];
    for b in 0..nb {
        // The two rows' 32 codes each, in value order: [row 0 | row 1].
        let u = match codes {
            Codes::Nibbles => {
                // [16 bytes of row 0 | 16 bytes of row 1] -> low and high nibbles ->
                // [lo 0, hi 0 | lo 1, hi 1].
                let raw = _mm256_loadu_si256(w.qs.as_ptr().add(b * 32).cast());
                let lo = _mm256_and_si256(raw, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), mask);
                // [lo0, lo1, hi0, hi1] in 128-bit quarters -> [lo0, hi0, lo1, hi1].
                let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                _mm512_shuffle_i64x2::<0xd8>(z, z)
            }
            Codes::Bytes => _mm512_loadu_si512(w.qs.as_ptr().add(b * 64).cast()),
        };
        // The pair's f16 [d0, d1, m0, m1].
        let dm = _mm_cvtph_ps(_mm_loadl_epi64(w.dm.as_ptr().add(4 * b).cast()));
        let wd = _mm512_permutexvar_ps(halves, _mm512_castps128_ps512(dm));
        let mpair = _mm_movehl_ps(dm, dm);
        for k in 0..N {
            let xv = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                x.qs.as_ptr().add(k * cols + b * BLOCK).cast(),
            ));
            let mut dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, xv);
            if offset_code != 0 {
                let sums = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, xv);
                dot = _mm512_sub_epi32(dot, _mm512_mullo_epi32(off, sums));
            } else {
                let s = _mm_set1_ps(*x.s.get_unchecked(k * nb + b));
                summs[k] = _mm_fmadd_ps(mpair, s, summs[k]);
            }
            let scale = _mm512_mul_ps(wd, _mm512_set1_ps(*x.d.get_unchecked(k * nb + b)));
            acc[k] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc[k]);
        }
    }
    let mut out = [[0f32; 4]; 2];
    for k in 0..N {
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), acc[k]);
        let mut sm = [0f32; 4];
        _mm_storeu_ps(sm.as_mut_ptr(), summs[k]);
        for (h, o) in out.iter_mut().enumerate() {
            let a: &[f32; 8] = lanes[8 * h..8 * h + 8].try_into().unwrap();
            o[k] = crate::kernels::ggml::hsum8(a) + sm[h];
        }
    }
    out
}
