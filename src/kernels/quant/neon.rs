//! The NEON tier of the products (aarch64): the codes as signed bytes less their offset code,
//! products widened to i16 (`smull`), then pairwise sums to i32 (`saddlp`, `addp`) give the
//! same eight lane sums of four products as the other tiers, exactly; the float steps are the
//! same fused multiply-adds.

use std::arch::aarch64::*;

use super::{Codes, WPair, XRows, BLOCK};

/// Four i32 lanes, lane l = Σ_{j<4} q[4l+j]·x[4l+j].
#[inline(always)]
unsafe fn lanes4(q: int8x16_t, x: int8x16_t) -> int32x4_t {
    let lo = vpaddlq_s16(vmull_s8(vget_low_s8(q), vget_low_s8(x)));
    let hi = vpaddlq_s16(vmull_high_s8(q, x));
    vpaddq_s32(lo, hi)
}

/// Row h of the pair's block b as signed codes less the offset code, values 0..16, 16..32.
#[inline(always)]
unsafe fn codes(codes: Codes, offset_code: i32, w: WPair, b: usize, h: usize) -> [int8x16_t; 2] {
    match codes {
        Codes::Nibbles => {
            let raw = vld1q_u8(w.qs.as_ptr().add(b * 32 + h * 16));
            let o = vdupq_n_u8(offset_code as u8);
            let lo = vsubq_u8(vandq_u8(raw, vdupq_n_u8(0x0f)), o);
            let hi = vsubq_u8(vshrq_n_u8::<4>(raw), o);
            [vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi)]
        }
        Codes::Bytes => {
            let (p, m) = (w.qs.as_ptr().add(b * 64 + h * 32), vdupq_n_u8(0x80));
            let q0 = veorq_u8(vld1q_u8(p), m);
            let q1 = veorq_u8(vld1q_u8(p.add(16)), m);
            [vreinterpretq_s8_u8(q0), vreinterpretq_s8_u8(q1)]
        }
    }
}

/// As `super::avx2::pair_dots`, one weight row at a time.
#[target_feature(enable = "neon")]
pub unsafe fn pair_dots<const N: usize>(
    codes_of: Codes,
    offset_code: i32,
    w: WPair,
    x: XRows,
    out: &mut [[[f32; 4]; 2]],
) {
    let pairs = out.len();
    let nb = w.dm.len() / pairs / 4;
    let cols = nb * BLOCK;
    let summs_on = codes_of == Codes::Nibbles && offset_code == 0;
    for (j, o) in out.iter_mut().enumerate() {
        let w = w.pair(j, pairs);
        for (h, o) in o.iter_mut().enumerate() {
            let mut acc = [[vdupq_n_f32(0.0); 2]; N];
            let mut summs = [0f32; N];
            for b in 0..nb {
                let q = codes(codes_of, offset_code, w, b, h);
                let wd = super::f32_of(*w.dm.get_unchecked(4 * b + h));
                let m = super::f32_of(*w.dm.get_unchecked(4 * b + 2 + h));
                for k in 0..N {
                    let xp = x.qs.as_ptr().add(k * cols + b * BLOCK);
                    let l0 = lanes4(q[0], vld1q_s8(xp));
                    let l1 = lanes4(q[1], vld1q_s8(xp.add(16)));
                    let scale = vdupq_n_f32(wd * *x.d.get_unchecked(k * nb + b));
                    acc[k][0] = vfmaq_f32(acc[k][0], scale, vcvtq_f32_s32(l0));
                    acc[k][1] = vfmaq_f32(acc[k][1], scale, vcvtq_f32_s32(l1));
                    if summs_on {
                        summs[k] = m.mul_add(*x.s.get_unchecked(k * nb + b), summs[k]);
                    }
                }
            }
            for k in 0..N {
                let mut a = [0f32; 8];
                vst1q_f32(a.as_mut_ptr(), acc[k][0]);
                vst1q_f32(a.as_mut_ptr().add(4), acc[k][1]);
                o[k] = crate::kernels::ggml::hsum8(&a) + summs[k];
            }
        }
    }
}
