//! f32 matrix multiply for the AVX2 tier: C (m, n) = [C +] alpha·A (m, k) @ B (k, n), A and B of
//! any strides, in the structure of BLIS (Van Zee & van de Geijn, 2015; see `bf16`) with
//! BLIS's Haswell micro-kernel shape: 6 rows × 16 columns, 12 accumulators of 8 lanes.
//!
//! For each NC-column block and KC-deep slice, B is packed into 16-column panels (a KC × 16
//! micro-panel, 16 KiB, stays in L1 while the row panels of A pass); for each MC-row block, A is
//! packed into 6-row panels (the L2-resident operand). Partial panels are padded with zeros. The
//! packing prefetches its source rows, which in training are activations mostly out of cache,
//! and the micro-kernel prefetches the C tile it will write.
//!
//! Why not the `gemm` crate, which the other tiers use: on hot operands both reach about 85 of
//! the 90 GFLOP/s of one Zen 3 core, but in training, where the operands are activations mostly
//! out of cache, this one measured a few percent faster on the char preset (docs/performance.md),
//! and it gives the AVX2 tier one GEMM for every shape: with fewer than MR rows (decoding) B is
//! read in place, never packed, and every element is summed exactly as in a larger product.
//!
//! Threads: C splits statically into row blocks (or column blocks, when it has more column
//! panels than row panels), one rayon task each. Every element of C is summed in the same
//! order whatever the split, so the results are the same bits for every thread count.
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use super::bf16::Mat;
use super::SyncPtr;

/// Rows of the micro-kernel (broadcast A values).
const MR: usize = 6;
/// Columns of the micro-kernel: two 8-lane vectors.
const NR: usize = 16;
/// Depth of a slice: a B micro-panel is KC × NR × 4 bytes = 16 KiB, half of L1.
const KC: usize = 256;
/// Rows of a packed A block (a multiple of MR): MC × KC × 4 bytes = 144 KiB, inside L2.
const MC: usize = 144;
/// Columns of a block of B.
const NC: usize = 2048;
/// How many rows ahead `pack_b` prefetches B.
const PF_ROWS: usize = 8;
/// Work below this many multiply-adds runs on the calling thread.
const PAR_MIN_MACS: usize = 1 << 18;

/// Whether `gemm` serves f32 products on this process's tier: the AVX2 tier, every shape. (One
/// GEMM for every shape keeps each row of C the same bits whatever the number of rows, so that
/// an embedding does not depend on the batch it was computed in.)
pub(super) fn serves() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::isa::Isa::current() == super::isa::Isa::Avx2
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A 64-byte aligned line of floats, the unit of the packing buffers.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// One thread's packing buffers; they grow to the largest block seen and are then reused.
#[derive(Default)]
struct Buffers {
    a: Vec<Line>,
    b: Vec<Line>,
}

/// At least `floats` floats of `v`, 64-byte aligned.
fn room(v: &mut Vec<Line>, floats: usize) -> *mut f32 {
    let lines = floats.div_ceil(16);
    if v.len() < lines {
        v.resize(lines, Line([0.0; 16]));
    }
    v.as_mut_ptr().cast()
}

thread_local! {
    static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::default();
}

/// C (m, n), row stride `ldc`, = [C +] alpha · A (m, k) @ B (k, n); `accumulate` false does not
/// read C. The work splits into at most `tasks` rayon tasks.
///
/// # Safety
/// The CPU has AVX2 and FMA (`serves` said yes); every element of A, B and C lies inside live
/// allocations; C overlaps neither A, B nor memory another thread accesses meanwhile.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    alpha: f32,
    tasks: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let threads = tasks.max(1);
    use rayon::prelude::*;
    if m < MR {
        // Too few rows to repay packing B (decoding): B is read in place, once, by columns of
        // 8 split over the tasks; the sums are those of the packed kernel, term for term.
        let chunk = n
            .div_ceil(threads.min((m * n * k).div_ceil(PAR_MIN_MACS)).max(1))
            .div_ceil(8)
            * 8;
        let cp = SyncPtr(c);
        return (0..n.div_ceil(chunk)).into_par_iter().for_each(|t| {
            let (j0, j1) = (t * chunk, ((t + 1) * chunk).min(n));
            // SAFETY: each task writes its own columns of C.
            unsafe {
                let c = cp.get().add(j0);
                few_rows((m, j1 - j0, k), c, ldc, accumulate, a, b.at(0, j0), alpha)
            }
        });
    }
    if threads == 1 || m * n * k < PAR_MIN_MACS {
        return serial((m, n, k), c, ldc, accumulate, a, b, alpha);
    }
    let (row_panels, col_panels) = (m.div_ceil(MR), n.div_ceil(NR));
    let cp = SyncPtr(c);
    if row_panels >= col_panels {
        let chunk = row_panels.div_ceil(threads) * MR;
        (0..m.div_ceil(chunk)).into_par_iter().for_each(|t| {
            let (i0, i1) = (t * chunk, ((t + 1) * chunk).min(m));
            // SAFETY: each task writes its own rows of C.
            unsafe {
                let c = cp.get().add(i0 * ldc);
                serial((i1 - i0, n, k), c, ldc, accumulate, a.at(i0, 0), b, alpha)
            }
        });
    } else {
        let chunk = col_panels.div_ceil(threads) * NR;
        (0..n.div_ceil(chunk)).into_par_iter().for_each(|t| {
            let (j0, j1) = (t * chunk, ((t + 1) * chunk).min(n));
            // SAFETY: each task writes its own columns of C.
            unsafe {
                let c = cp.get().add(j0);
                serial((m, j1 - j0, k), c, ldc, accumulate, a, b.at(0, j0), alpha)
            }
        });
    }
}

/// `gemm` on the calling thread.
///
/// # Safety
/// As for `gemm`.
#[allow(clippy::too_many_arguments)]
unsafe fn serial(
    (m, n, k): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    alpha: f32,
) {
    if k == 0 {
        // An empty sum: C stays, or becomes zero.
        if !accumulate {
            for i in 0..m {
                std::slice::from_raw_parts_mut(c.add(i * ldc), n).fill(0.0);
            }
        }
        return;
    }
    // `blocks` calls nothing that could re-enter this thread's buffers.
    BUFFERS.with_borrow_mut(|bufs| blocks((m, n, k), c, ldc, accumulate, a, b, alpha, bufs))
}

/// The blocked loops of `serial`, with this thread's buffers.
///
/// # Safety
/// As for `gemm`, with k > 0.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn blocks(
    (m, n, k): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    alpha: f32,
    bufs: &mut Buffers,
) {
    let pa = room(&mut bufs.a, MC.min(m).div_ceil(MR) * MR * KC.min(k));
    let pb = room(&mut bufs.b, NC.min(n).div_ceil(NR) * NR * KC.min(k));
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let acc = accumulate || pc > 0;
            // Word (kk, j) of panel q at q·kc·NR + kk·NR + j.
            pack_b(pb, b.at(pc, jc), kc, nc);
            for ic in (0..m).step_by(MC) {
                let mc = MC.min(m - ic);
                // Word (kk, i) of panel p at p·kc·MR + kk·MR + i. Packed even when the rows
                // of A are contiguous: reading six rows in place measured 16% slower in
                // training.
                pack_a(pa, a.at(ic, pc), mc, kc);
                for j in (0..nc).step_by(NR) {
                    let bp = pb.add(j / NR * kc * NR).cast_const();
                    for (p, i) in (0..mc).step_by(MR).enumerate() {
                        let tile = (MR.min(mc - i), NR.min(nc - j));
                        let cp = c.add((ic + i) * ldc + jc + j);
                        let ap = pa.add(p * kc * MR).cast_const();
                        kernel(kc, ap, bp, cp, ldc, tile, acc, alpha);
                    }
                }
            }
        }
    }
}

/// Asks for the cache line at `p` (any address: a prefetch never faults). The packing reads
/// activations that are mostly out of cache, one line a row, a stride the hardware prefetchers
/// follow too late.
#[inline(always)]
fn prefetch(p: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching reads nothing architecturally.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Packs A (rows, kc), any strides, into `rows.div_ceil(MR)` panels of MR rows: word (kk, i)
/// of panel p at dst[p·kc·MR + kk·MR + i], zeros for the rows past `rows`.
///
/// # Safety
/// dst holds the panels; A holds (rows, kc).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn pack_a(dst: *mut f32, a: Mat, rows: usize, kc: usize) {
    for (p, i0) in (0..rows).step_by(MR).enumerate() {
        let r = MR.min(rows - i0);
        let d = dst.add(p * kc * MR);
        let src = a.at(i0, 0);
        if a.rs == 1 {
            // Columns of A contiguous: each k holds r consecutive values.
            for kk in 0..kc {
                prefetch(src.ptr.wrapping_add((kk + PF_ROWS) * a.cs));
                let s = src.ptr.add(kk * a.cs);
                for i in 0..MR {
                    *d.add(kk * MR + i) = if i < r { *s.add(i) } else { 0.0 };
                }
            }
        } else if r == MR && a.cs == 1 {
            let rows: [*const f32; MR] = std::array::from_fn(|i| src.ptr.add(i * a.rs));
            for kk in 0..kc {
                for (i, row) in rows.iter().enumerate() {
                    *d.add(kk * MR + i) = *row.add(kk);
                }
            }
        } else {
            for kk in 0..kc {
                for i in 0..MR {
                    *d.add(kk * MR + i) = if i < r {
                        *src.ptr.add(i * a.rs + kk * a.cs)
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// Packs B (kc, cols), any strides, into `cols.div_ceil(NR)` panels of NR columns: word
/// (kk, j) of panel q at dst[q·kc·NR + kk·NR + j], zeros for the columns past `cols`.
///
/// # Safety
/// dst holds the panels; B holds (kc, cols).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn pack_b(dst: *mut f32, b: Mat, kc: usize, cols: usize) {
    for (q, j0) in (0..cols).step_by(NR).enumerate() {
        let w = NR.min(cols - j0);
        let d = dst.add(q * kc * NR);
        let src = b.at(0, j0);
        if w < NR {
            for kk in 0..kc {
                std::slice::from_raw_parts_mut(d.add(kk * NR + w), NR - w).fill(0.0);
            }
        }
        if b.rs == 1 {
            // Columns of B contiguous (a transposed operand): a full panel's first kc / 8 · 8
            // rows as 8 × 8 blocks transposed in registers, the rest column by column.
            #[cfg(target_arch = "x86_64")]
            let done = if w == NR {
                x86::pack_columns(d, src, kc)
            } else {
                0
            };
            #[cfg(not(target_arch = "x86_64"))]
            let done = 0;
            for j in 0..w {
                let s = src.ptr.add(j * b.cs);
                for kk in done..kc {
                    *d.add(kk * NR + j) = *s.add(kk);
                }
            }
        } else {
            for kk in 0..kc {
                prefetch(src.ptr.wrapping_add((kk + PF_ROWS) * b.rs));
                for j in 0..w {
                    *d.add(kk * NR + j) = *src.ptr.add(kk * b.rs + j * b.cs);
                }
            }
        }
    }
}

/// C (m < MR rows, n) = [C +] alpha · A @ B with B read in place, for each KC slice; each
/// element is summed exactly as `kernel` sums it (a chain of fused multiply-adds over the
/// slice from zero, times alpha, plus C), so the rows are the same bits as in a larger product.
///
/// # Safety
/// As for `gemm`.
#[allow(clippy::too_many_arguments)]
unsafe fn few_rows(
    (m, n, k): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    alpha: f32,
) {
    if k == 0 {
        return serial((m, n, k), c, ldc, accumulate, a, b, alpha);
    }
    #[cfg(target_arch = "x86_64")]
    for pc in (0..k).step_by(KC) {
        let kc = KC.min(k - pc);
        let acc = accumulate || pc > 0;
        let (a, b) = (a.at(0, pc), b.at(pc, 0));
        match m {
            1 => x86::few_rows::<1>((n, kc), c, ldc, acc, a, b, alpha),
            2 => x86::few_rows::<2>((n, kc), c, ldc, acc, a, b, alpha),
            3 => x86::few_rows::<3>((n, kc), c, ldc, acc, a, b, alpha),
            4 => x86::few_rows::<4>((n, kc), c, ldc, acc, a, b, alpha),
            _ => x86::few_rows::<5>((n, kc), c, ldc, acc, a, b, alpha),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (m, n, c, ldc, accumulate, a, b, alpha);
}

/// The MR × NR micro-kernel on packed panels: C tile (rows × cols of it valid) = [C +] alpha ·
/// Σ_kk A (MR per kk) ⊗ B (NR per kk).
///
/// # Safety
/// The CPU has AVX2 and FMA; the panels hold kc·MR and kc·NR floats; C holds the valid tile.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn kernel(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    tile: (usize, usize),
    accumulate: bool,
    alpha: f32,
) {
    #[cfg(target_arch = "x86_64")]
    {
        x86::kernel(kc, a, b, c, ldc, tile, accumulate, alpha)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kc, a, b, c, ldc, tile, accumulate, alpha);
        unreachable!("sgemm serves only the x86-64 AVX2 tier")
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    use super::{Mat, MR, NR};

    /// The 8 × 8 transpose: out[c] lane r = rows[r] lane c.
    #[inline(always)]
    pub(in crate::kernels) unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        // s0: lanes 0 of rows 0-3 (low half) and lanes 4 (high half); s1 lanes 1 and 5; ...
        let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(s0, s4),
            _mm256_permute2f128_ps::<0x20>(s1, s5),
            _mm256_permute2f128_ps::<0x20>(s2, s6),
            _mm256_permute2f128_ps::<0x20>(s3, s7),
            _mm256_permute2f128_ps::<0x31>(s0, s4),
            _mm256_permute2f128_ps::<0x31>(s1, s5),
            _mm256_permute2f128_ps::<0x31>(s2, s6),
            _mm256_permute2f128_ps::<0x31>(s3, s7),
        ]
    }

    /// Packs the first `kc / 8 · 8` rows of a full NR-column panel of B whose columns are
    /// contiguous (B (kk, j) at b.ptr[kk + j·cs]); returns how many rows it packed.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn pack_columns(dst: *mut f32, b: Mat, kc: usize) -> usize {
        let done = kc / 8 * 8;
        for kk in (0..done).step_by(8) {
            for h in 0..NR / 8 {
                let rows =
                    std::array::from_fn(|l| _mm256_loadu_ps(b.ptr.add((8 * h + l) * b.cs + kk)));
                for (t, v) in transpose8(rows).into_iter().enumerate() {
                    _mm256_storeu_ps(dst.add((kk + t) * NR + 8 * h), v);
                }
            }
        }
        done
    }

    /// See `super::few_rows`: one KC slice of M (< MR) rows, A and B at the slice's start.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn few_rows<const M: usize>(
        (n, kc): (usize, usize),
        c: *mut f32,
        ldc: usize,
        accumulate: bool,
        a: Mat,
        b: Mat,
        alpha: f32,
    ) {
        let at = |i: usize, kk: usize| *a.ptr.add(i * a.rs + kk * a.cs);
        let full = n / 8 * 8;
        for j in (0..full).step_by(8) {
            let mut acc = [_mm256_setzero_ps(); M];
            let step = |acc: &mut [__m256; M], kk: usize, v: __m256| {
                for (i, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(_mm256_set1_ps(at(i, kk)), v, *acc);
                }
            };
            let mut kk = 0;
            if b.cs == 1 {
                for k in 0..kc {
                    step(&mut acc, k, _mm256_loadu_ps(b.ptr.add(k * b.rs + j)));
                }
                kk = kc;
            } else if b.rs == 1 {
                // Columns contiguous (a weight matrix used transposed): eight rows of B at a
                // time, transposed in registers.
                while kk + 8 <= kc {
                    let cols =
                        std::array::from_fn(|l| _mm256_loadu_ps(b.ptr.add((j + l) * b.cs + kk)));
                    for (t, v) in transpose8(cols).into_iter().enumerate() {
                        step(&mut acc, kk + t, v);
                    }
                    kk += 8;
                }
            }
            for k in kk..kc {
                let g = |l: usize| *b.ptr.add(k * b.rs + (j + l) * b.cs);
                step(
                    &mut acc,
                    k,
                    _mm256_setr_ps(g(0), g(1), g(2), g(3), g(4), g(5), g(6), g(7)),
                );
            }
            for (i, &v) in acc.iter().enumerate() {
                let p = c.add(i * ldc + j);
                let v = if alpha != 1.0 {
                    _mm256_mul_ps(v, _mm256_set1_ps(alpha))
                } else {
                    v
                };
                let v = if accumulate {
                    _mm256_add_ps(v, _mm256_loadu_ps(p))
                } else {
                    v
                };
                _mm256_storeu_ps(p, v);
            }
        }
        for j in full..n {
            for i in 0..M {
                let mut s = 0f32;
                for kk in 0..kc {
                    s = at(i, kk).mul_add(*b.ptr.add(kk * b.rs + j * b.cs), s);
                }
                if alpha != 1.0 {
                    s *= alpha;
                }
                let p = c.add(i * ldc + j);
                *p = if accumulate { s + *p } else { s };
            }
        }
    }

    /// See `super::kernel`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn kernel(
        kc: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        (rows, cols): (usize, usize),
        accumulate: bool,
        alpha: f32,
    ) {
        // C's tile is written at the end: ask for its lines now, so that the stores do not
        // wait on memory.
        for i in 0..rows {
            // wrapping_add: a partial tile's row may end before its 16th column.
            _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i * ldc).cast());
            _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i * ldc + NR - 1).cast());
        }
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for (i, acc) in acc.iter_mut().enumerate() {
                let ai = _mm256_broadcast_ss(&*a.add(i));
                acc[0] = _mm256_fmadd_ps(ai, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(ai, b1, acc[1]);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
        if alpha != 1.0 {
            let va = _mm256_set1_ps(alpha);
            for acc in acc.iter_mut() {
                acc[0] = _mm256_mul_ps(acc[0], va);
                acc[1] = _mm256_mul_ps(acc[1], va);
            }
        }
        if rows == MR && cols == NR {
            for (i, acc) in acc.iter().enumerate() {
                let p = c.add(i * ldc);
                for (h, &v) in acc.iter().enumerate() {
                    let q = p.add(8 * h);
                    let v = if accumulate {
                        _mm256_add_ps(v, _mm256_loadu_ps(q))
                    } else {
                        v
                    };
                    _mm256_storeu_ps(q, v);
                }
            }
            return;
        }
        let mut tmp = [0f32; MR * NR];
        for (i, acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(tmp.as_mut_ptr().add(i * NR), acc[0]);
            _mm256_storeu_ps(tmp.as_mut_ptr().add(i * NR + 8), acc[1]);
        }
        for i in 0..rows {
            let row = std::slice::from_raw_parts_mut(c.add(i * ldc), cols);
            for (d, &v) in row.iter_mut().zip(&tmp[i * NR..]) {
                *d = if accumulate { v + *d } else { v };
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 / 1001.0) - 1.0)
            .collect()
    }

    /// A (rows, cols) operand stored row-major, or as its transpose.
    fn mat(s: &[f32], rows: usize, cols: usize, transposed: bool) -> Mat {
        let (rs, cs) = if transposed { (1, rows) } else { (cols, 1) };
        Mat {
            ptr: s.as_ptr(),
            rs,
            cs,
        }
    }

    /// Every edge of the blocking (rows past MR and MC, columns past NR and NC, depth past KC),
    /// both layouts of both operands, overwrite and accumulate: within f32 rounding of an f64
    /// product, and the same bits on one thread as on the pool.
    #[test]
    fn products_match_f64_and_every_split() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        let shapes = [
            (12, 16, 4),
            (13, 17, 5),
            (150, 65, 300),
            (7, 600, 33),
            (301, 40, 513),
            (64, 129, 128),
            (12, 2100, 8),
            (3, 40, 300),
            (5, 7, 19),
            (1, 1000, 576),
            (3, 10, 0),
            (8, 10, 0),
        ];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for (m, n, k) in shapes {
            for (ta, tb, accumulate) in [
                (false, false, false),
                (true, false, true),
                (false, true, false),
                (true, true, true),
            ] {
                let (a, b) = (values(m * k, 1), values(k * n, 2));
                let c0 = values(m * n, 3);
                let alpha = if accumulate { 0.5 } else { 1.0 };
                let (am, bm) = (mat(&a, m, k, ta), mat(&b, k, n, tb));
                let mut serial_c = c0.clone();
                let mut pooled_c = c0.clone();
                // SAFETY: the CPU has AVX2 and FMA; the buffers hold the matrices.
                unsafe {
                    gemm(
                        (m, n, k),
                        serial_c.as_mut_ptr(),
                        n,
                        accumulate,
                        am,
                        bm,
                        alpha,
                        1,
                    );
                    let cp = SyncPtr(pooled_c.as_mut_ptr());
                    pool.install(|| gemm((m, n, k), cp.get(), n, accumulate, am, bm, alpha, 3));
                }
                assert_eq!(serial_c, pooled_c, "split changed bits at {m}x{n}x{k}");
                // Each row alone (the few-rows path) is the same bits as inside the product.
                for i in [0, m / 2, m - 1] {
                    let mut row = c0[i * n..(i + 1) * n].to_vec();
                    let ai = am.at(i, 0);
                    // SAFETY: as above.
                    unsafe { gemm((1, n, k), row.as_mut_ptr(), n, accumulate, ai, bm, alpha, 2) };
                    assert_eq!(row, serial_c[i * n..(i + 1) * n], "row {i} of {m}x{n}x{k}");
                }
                if m >= 3 {
                    let mut rows = c0[..3 * n].to_vec();
                    // SAFETY: as above.
                    unsafe {
                        gemm(
                            (3, n, k),
                            rows.as_mut_ptr(),
                            n,
                            accumulate,
                            am,
                            bm,
                            alpha,
                            1,
                        )
                    };
                    assert_eq!(rows, serial_c[..3 * n], "3 rows of {m}x{n}x{k}");
                }
                for i in 0..m {
                    for j in 0..n {
                        let mut s = 0f64;
                        let mut mag = 0f64;
                        for kk in 0..k {
                            // SAFETY: inside the operands.
                            let (x, y) = unsafe {
                                (
                                    *am.ptr.add(i * am.rs + kk * am.cs) as f64,
                                    *bm.ptr.add(kk * bm.rs + j * bm.cs) as f64,
                                )
                            };
                            s += x * y;
                            mag += (x * y).abs();
                        }
                        let base = if accumulate {
                            c0[i * n + j] as f64
                        } else {
                            0.0
                        };
                        let want = base + alpha as f64 * s;
                        let got = serial_c[i * n + j] as f64;
                        let tol = 1e-6 * (mag + base.abs()) + 1e-30;
                        assert!(
                            (got - want).abs() <= tol,
                            "{m}x{n}x{k} ta {ta} tb {tb} at ({i}, {j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
