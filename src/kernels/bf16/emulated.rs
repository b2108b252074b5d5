//! The micro-kernel in software, for CPUs without AVX512-BF16: the same packed operands, the
//! same per-lane arithmetic and the same order as `x86::kernel`, hence the same bits.

use super::{MR, NR};

/// The f32 value of the high (odd-k) bf16 of a pair word.
fn hi(w: u32) -> f32 {
    f32::from_bits(w & 0xffff_0000)
}

/// The f32 value of the low (even-k) bf16 of a pair word.
fn lo(w: u32) -> f32 {
    f32::from_bits(w << 16)
}

/// Denormals as zeros of their sign (the instruction's DAZ on inputs, FTZ on results).
fn flush(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0f32.copysign(x)
    } else {
        x
    }
}

/// One lane of `vdpbf16ps` as Intel's SDM defines it: acc += a.hi·b.hi, then acc += a.lo·b.lo,
/// each a fused multiply-add rounded to nearest even, with denormal inputs read as zero and
/// denormal results flushed to zero (MXCSR is neither read nor written).
pub fn dot_pair(acc: f32, a: u32, b: u32) -> f32 {
    let t = flush(flush(hi(a)).mul_add(flush(hi(b)), flush(acc)));
    flush(flush(lo(a)).mul_add(flush(lo(b)), t))
}

/// See `super::kernel`; the epilogue is `x86::kernel`'s: acc·alpha, then C·beta + that
/// (fused) when beta is not 0.
///
/// # Safety
/// As for `super::kernel`.
#[allow(clippy::too_many_arguments)]
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
    let mut acc = [[0f32; NR]; MR];
    for kp in 0..kcp {
        let a = std::slice::from_raw_parts(a.add(kp * MR), MR);
        let b = std::slice::from_raw_parts(b.add(kp * NR), NR);
        for (acc, &ai) in acc.iter_mut().zip(a) {
            for (acc, &bj) in acc.iter_mut().zip(b) {
                *acc = dot_pair(*acc, ai, bj);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate().take(rows) {
        let row = c.add(i * ldc);
        for (j, &acc) in acc.iter().enumerate().take(cols) {
            let v = acc * alpha;
            let p = row.add(j);
            *p = if beta != 0.0 {
                (*p).mul_add(beta, v)
            } else {
                v
            };
        }
    }
}
