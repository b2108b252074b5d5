//! Matrix products: f32 through `sgemm` (AVX2 tier) or `gemm` (the others), or with bf16 inputs
//! and f32 sums through `bf16`.

use gemm::Parallelism;
use rayon::prelude::*;

use super::bf16;
use super::simd::simd_fn;
use super::{add_assign, col_strip, Precision, TASK_ELEMS};

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

/// A strided matrix operand, the same for the f32 and the bf16 GEMMs.
pub(super) use super::bf16::Mat as Strided;

/// Row-major operand with row stride `rs`.
pub(super) fn rm(ptr: *const f32, rs: usize) -> Strided {
    Strided { ptr, rs, cs: 1 }
}

/// dst (m, n), row stride `ld`, = [dst +] scale · a (m, k) @ b (k, n).
///
/// # Safety
/// Every element of the three matrices must lie inside live allocations, and dst must not
/// overlap a, b or memory another thread accesses meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_raw(
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
pub(super) const SERIAL: Parallelism = Parallelism::None;

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

/// dst (m, n) = [dst +] scale · a (m, k) @ b (k, n), over rayon's pool. Transposed operands
/// are read in place. With `Precision::Bf16` a and b are rounded to bf16 and the products
/// summed in f32 by `bf16::gemm` (AVX512-BF16, or its software emulation on other CPUs); f32
/// products go to `sgemm` on the AVX2 tier, else to the `gemm` crate, which picks its kernels
/// by the CPU's features.
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
        let beta = if accumulate { 1.0 } else { 0.0 };
        // SAFETY: as below.
        return unsafe { bf16::gemm((m, n, k), dst.as_mut_ptr(), n, beta, a, b, scale) };
    }
    let (dst, tasks) = (dst.as_mut_ptr(), rayon::current_num_threads());
    // SAFETY: `strided` checked that both operands hold their matrices and the assert above
    // that dst holds (m, n); `dst` is borrowed mutably, so it aliases neither operand.
    if super::sgemm::serves() {
        // `serves` also checked the CPU's tier.
        return unsafe { super::sgemm::gemm((m, n, k), dst, n, accumulate, a, b, scale, tasks) };
    }
    let par = match tasks {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    };
    unsafe { gemm_raw((m, n, k), dst, n, accumulate, a, b, scale, par) }
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
