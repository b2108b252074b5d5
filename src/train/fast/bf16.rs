//! Mixed-precision matrix multiply for `Precision::Bf16`: C (m, n) f32 = beta·C + alpha·A·B, with
//! A (m, k) and B (k, n) f32 matrices of any strides rounded to bf16 (round to nearest even)
//! while they are packed, and products accumulated in f32 by AVX512-BF16's `vdpbf16ps`.
//!
//! On a CPU without AVX512-BF16 the same arithmetic runs in software (`emulated`): the same
//! packing and rounding, and `vdpbf16ps` lane by lane as Intel's SDM defines it, so the results
//! are the same bits, only slower. The trainer refuses bf16 on such CPUs (it would be slower
//! than f32); the emulation is there so that the bf16 kernels are tested on every CPU.
//!
//! The structure is BLIS/GotoBLAS's (Van Zee & van de Geijn, "BLIS: A Framework for Rapidly
//! Instantiating BLAS Functionality", 2015): for each NC-column block of B and KC-deep slice,
//! B is packed into NR-wide panels (the L3/L1-resident operand); for each MC-row block of A, A is
//! packed into MR-tall panels (the L2-resident operand); an MR × NR register-blocked micro-kernel
//! then runs over every panel pair. bf16 needs one twist: `vdpbf16ps` multiplies *pairs* along
//! k, so both packed operands hold, in each 32-bit word, the bf16 values at k and k + 1:
//! B panel word (kp, j) = (B[2kp][j], B[2kp+1][j]) and A panel word (kp, i) = (A[i][2kp],
//! A[i][2kp+1]). An odd k is padded with a zero.
//!
//! Threads: the rows of C split statically over rayon's pool; the threads pack disjoint panels
//! of each B block into one shared buffer, then each packs its own rows of A into thread-local
//! buffers (matrices with too few rows split their columns instead). Every element of C is
//! summed in the same order whatever the split, so results are bitwise identical across runs
//! and thread counts.

/// Rows of the micro-kernel: 14 rows × 2 zmm = 28 accumulators, plus two B vectors and one
/// broadcast A pair, of the 32 zmm registers (measured a little faster than 12 rows on Zen 4).
const MR: usize = 14;
/// Columns of the micro-kernel: two 16-lane f32 vectors.
const NR: usize = 32;
/// Depth of a packed slice, in k (even, so that pairs never straddle slices). A B micro-panel
/// is KC × NR × 2 bytes = 32 KiB, the size of L1; measured 5-10% faster than 384 on the 384-wide
/// model's shapes (fewer passes over C when k is 1536 or 2048).
const KC: usize = 512;
/// Rows of a packed A block (a multiple of MR): MC × KC × 2 bytes = 252 KiB, well inside a 1 MiB
/// L2.
const MC: usize = 252;
/// Columns of a packed B block: KC × NC × 2 bytes = 2 MiB, shared by the threads, in the L3.
const NC: usize = 2048;

/// A strided f32 matrix: element (i, j) at ptr[i·rs + j·cs].
#[derive(Clone, Copy)]
pub struct Mat {
    pub ptr: *const f32,
    pub rs: usize,
    pub cs: usize,
}

// SAFETY: a `Mat` is a read-only view; `gemm`'s contract keeps its memory alive and unwritten
// while the call runs.
unsafe impl Send for Mat {}
unsafe impl Sync for Mat {}

impl Mat {
    /// The sub-matrix starting at (i, j).
    fn at(self, i: usize, j: usize) -> Mat {
        Mat {
            // wrapping_add: pointer arithmetic only; every element read is inside the matrix.
            ptr: self.ptr.wrapping_add(i * self.rs + j * self.cs),
            ..self
        }
    }

    /// The transpose, read in place.
    fn t(self) -> Mat {
        Mat {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// Whether this CPU has the instructions of the bf16 kernels (AVX-512F, -BW and AVX512-BF16);
/// when it does not, they run in software (`emulated`).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

#[cfg(test)]
thread_local! {
    /// Tests set this to run the software emulation on a CPU that has AVX512-BF16 (this thread
    /// only).
    static FORCE_EMULATION: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the AVX512-BF16 instructions run the kernels on this thread (else `emulated`).
#[inline]
fn hardware() -> bool {
    #[cfg(test)]
    if FORCE_EMULATION.with(|f| f.get()) {
        return false;
    }
    available()
}

/// `x` rounded to bf16 (nearest even) and back, as `vcvtneps2bf16` does it: denormal inputs
/// become zeros of their sign, NaNs stay (quiet) NaNs. The reference for the tests.
#[cfg(test)]
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits((to_bf16(x) as u32) << 16)
}

/// The bf16 bits of `x`, rounded like `vcvtneps2bf16`.
fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    if x.is_subnormal() {
        return ((bits >> 16) & 0x8000) as u16;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// The packed pair word of (lo, hi): lo in the low half, as `vdpbf16ps` pairs them.
fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | (to_bf16(hi) as u32) << 16
}

/// A pointer that rayon tasks writing disjoint parts of one buffer (C, or the shared packed B)
/// may share.
struct SendPtr<T>(*mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: each task writes only its own rows or columns of C, or its own panels of B, and
// reads the shared B only after the parallel region that wrote it has ended.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    /// A method (not field access) so that closures capture the whole `Send` wrapper.
    fn get(self) -> *mut T {
        self.0
    }
}

/// Work below this many multiply-adds runs on the calling thread.
const PAR_MIN_MACS: usize = 1 << 20;

/// C (m, n), row stride `ldc`, = beta·C + alpha·A (m, k) @ B (k, n), with A and B rounded to
/// bf16 and products summed in f32. beta = 0 does not read C (so it may hold NaNs).
///
/// # Safety
/// Every element of A, B and C must lie inside live allocations;
/// C must not overlap A, B or memory another thread accesses meanwhile.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm(
    (m, n, k): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    beta: f32,
    a: Mat,
    b: Mat,
    alpha: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    if threads == 1 || m * n * k < PAR_MIN_MACS {
        return with_buffers(|bufs| unsafe { serial((m, n, k), c, ldc, beta, a, b, alpha, bufs) });
    }
    use rayon::prelude::*;
    if m >= 4 * MR * threads {
        // Split the rows; B is packed once, cooperatively, into a shared buffer.
        return rows_parallel((m, n, k), c, ldc, beta, a, b, alpha, threads);
    }
    // Too few rows to share out: split the columns, each thread packing all of A.
    let chunk = n.div_ceil(NR).div_ceil(threads) * NR;
    let cp = SendPtr(c);
    (0..n.div_ceil(chunk)).into_par_iter().for_each(|t| {
        let (j0, j1) = (t * chunk, ((t + 1) * chunk).min(n));
        with_buffers(|bufs| unsafe {
            let c = cp.get().add(j0);
            serial((m, j1 - j0, k), c, ldc, beta, a, b.at(0, j0), alpha, bufs)
        })
    });
}

/// An operand packed once and multiplied many times (the attention tiles): panels of MR rows (an
/// A operand) or NR columns (a B operand), `stride` words apart, each a run of pair rows `w`
/// words wide.
#[derive(Clone, Copy)]
pub struct Panels {
    ptr: *const u32,
    stride: usize,
    w: usize,
}

impl Panels {
    /// The same panels from depth `k` on (`k` even).
    pub fn skip_k(self, k: usize) -> Panels {
        debug_assert!(k.is_multiple_of(2));
        Panels {
            ptr: self.ptr.wrapping_add(k / 2 * self.w),
            ..self
        }
    }

    /// The panels from lane `l` on (`l` a multiple of the panel width: MR rows for A, NR
    /// columns for B).
    pub fn skip_lanes(self, l: usize) -> Panels {
        debug_assert!(l.is_multiple_of(self.w));
        Panels {
            ptr: self.ptr.wrapping_add(l / self.w * self.stride),
            ..self
        }
    }
}

/// Words `pack_a` needs for an A operand of (rows, k).
pub fn a_words(rows: usize, k: usize) -> usize {
    rows.div_ceil(MR) * MR * k.div_ceil(2)
}

/// Words `pack_b` needs for a B operand of (k, cols).
pub fn b_words(k: usize, cols: usize) -> usize {
    cols.div_ceil(NR) * NR * k.div_ceil(2)
}

/// Packs A (rows, k), any strides, as MR-row panels into `dst`.
///
/// # Safety
/// A must lie inside a live allocation.
pub unsafe fn pack_a(dst: &mut [u32], a: Mat, rows: usize, k: usize) -> Panels {
    assert!(dst.len() >= a_words(rows, k));
    pack_block(dst.as_mut_ptr(), MR, a, rows, k);
    Panels {
        ptr: dst.as_ptr(),
        stride: k.div_ceil(2) * MR,
        w: MR,
    }
}

/// Packs B (k, cols), any strides, as NR-column panels into `dst`.
///
/// # Safety
/// As for `pack_a`.
pub unsafe fn pack_b(dst: &mut [u32], b: Mat, k: usize, cols: usize) -> Panels {
    assert!(dst.len() >= b_words(k, cols));
    pack_block(dst.as_mut_ptr(), NR, b.t(), cols, k);
    Panels {
        ptr: dst.as_ptr(),
        stride: k.div_ceil(2) * NR,
        w: NR,
    }
}

/// The part of a product on an attention tile of the causal diagonal that is needed, where
/// rows, columns and depth all count positions from the tile's first query and key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Causal {
    /// All of it.
    Full,
    /// C (queries × keys) only where key ≤ query: micro-tiles wholly above the diagonal are
    /// skipped (left unwritten).
    Lower,
    /// A (queries × keys) is zero where key > query: each row panel's depth stops after its
    /// last row.
    DepthUpTo,
    /// A (keys × queries) is zero where query < key: each row panel's depth starts at its
    /// first row.
    DepthFrom,
}

/// C (m, n), row stride `ldc`, = beta·C + alpha·A (m, k) @ B (k, n) from packed operands, on the
/// calling thread, skipping the work `causal` shows to be unneeded. beta = 0 does not read C.
///
/// # Safety
/// The panels must hold (m, k) and (k, n) and still be alive (the
/// buffers they were packed into unchanged); C must hold (m, n) and alias nothing else in use.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_packed(
    (m, n, k): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    beta: f32,
    a: Panels,
    b: Panels,
    alpha: f32,
    causal: Causal,
) {
    debug_assert!(a.w == MR && b.w == NR);
    let kcp = k.div_ceil(2);
    for (pj, j) in (0..n).step_by(NR).enumerate() {
        let bp = b.ptr.add(pj * b.stride);
        for (pi, i) in (0..m).step_by(MR).enumerate() {
            let tile = (MR.min(m - i), NR.min(n - j));
            // Pair rows [kp0, kp1) of the depth.
            let (kp0, kp1) = match causal {
                Causal::Lower if j >= i + tile.0 => continue,
                Causal::DepthUpTo => (0, kcp.min((i + tile.0).div_ceil(2))),
                Causal::DepthFrom => ((i / 2).min(kcp), kcp),
                _ => (0, kcp),
            };
            let ap = a.ptr.add(pi * a.stride + kp0 * MR);
            let cp = c.add(i * ldc + j);
            kernel(kp1 - kp0, ap, bp.add(kp0 * NR), cp, ldc, tile, beta, alpha);
        }
    }
}

/// Packed B blocks shared by the threads of one `rows_parallel` call, kept for reuse.
static SHARED_B: std::sync::Mutex<Vec<Vec<u32>>> = std::sync::Mutex::new(Vec::new());

/// `gemm` with the rows of C split over `threads` tasks: for each (NC, KC) block the threads
/// pack disjoint panels of B into one shared buffer, then each multiplies its rows by all of it.
///
/// # Safety
/// As for `gemm`, with k > 0.
#[allow(clippy::too_many_arguments)]
unsafe fn rows_parallel(
    (m, n, k): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    beta: f32,
    a: Mat,
    b: Mat,
    alpha: f32,
    threads: usize,
) {
    use rayon::prelude::*;
    let chunk = m.div_ceil(MR).div_ceil(threads) * MR;
    let tasks = m.div_ceil(chunk);
    let mut shared = SHARED_B
        .lock()
        .map(|mut v| v.pop())
        .unwrap_or(None)
        .unwrap_or_default();
    let b_len = NC.min(n).div_ceil(NR) * NR * KC.min(k).div_ceil(2);
    if shared.len() < b_len {
        shared.resize(b_len, 0);
    }
    let (cp, bp) = (SendPtr(c), SendPtr(shared.as_mut_ptr()));
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        let panels = nc.div_ceil(NR);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let kcp = kc.div_ceil(2);
            let beta = if pc == 0 { beta } else { 1.0 };
            (0..threads).into_par_iter().for_each(|t| {
                let (p0, p1) = (panels * t / threads, panels * (t + 1) / threads);
                if p0 < p1 {
                    let dst = bp.get().add(p0 * kcp * NR);
                    let lanes = (nc - p0 * NR).min((p1 - p0) * NR);
                    unsafe { pack_block(dst, NR, b.at(pc, jc + p0 * NR).t(), lanes, kc) };
                }
            });
            (0..tasks).into_par_iter().for_each(|t| {
                let (i0, i1) = (t * chunk, ((t + 1) * chunk).min(m));
                let c = cp.get().add(i0 * ldc + jc);
                let packed_b = bp.get().cast_const();
                with_buffers(|bufs| unsafe {
                    multiply_block(
                        i1 - i0,
                        (nc, kc),
                        c,
                        ldc,
                        beta,
                        a.at(i0, pc),
                        packed_b,
                        alpha,
                        bufs,
                    )
                });
            });
        }
    }
    if let Ok(mut pool) = SHARED_B.lock() {
        pool.push(shared);
    }
}

/// The packing buffers of one thread, in pair words; they grow to the largest block seen and
/// are then reused.
#[derive(Default)]
struct Buffers {
    a: Vec<u32>,
    b: Vec<u32>,
}

thread_local! {
    static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::default();
}

/// Runs `f` with this thread's packing buffers (or fresh ones, should `f` ever re-enter).
fn with_buffers<R>(f: impl FnOnce(&mut Buffers) -> R) -> R {
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => f(&mut bufs),
        Err(_) => f(&mut Buffers::default()),
    })
}

/// One thread's GEMM over the whole of its C block.
///
/// # Safety
/// As for `gemm`.
#[allow(clippy::too_many_arguments)]
unsafe fn serial(
    (m, n, k): (usize, usize, usize),
    c: *mut f32,
    ldc: usize,
    beta: f32,
    a: Mat,
    b: Mat,
    alpha: f32,
    bufs: &mut Buffers,
) {
    if k == 0 {
        for i in 0..m {
            let row = std::slice::from_raw_parts_mut(c.add(i * ldc), n);
            row.iter_mut()
                .for_each(|x| *x = if beta == 0.0 { 0.0 } else { beta * *x });
        }
        return;
    }
    let b_len = NC.min(n).div_ceil(NR) * NR * KC.min(k).div_ceil(2);
    if bufs.b.len() < b_len {
        bufs.b.resize(b_len, 0);
    }
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let beta = if pc == 0 { beta } else { 1.0 };
            // B (kc, nc) -> panels of NR columns: word (kp, j) of panel p at p·kcp·NR + kp·NR + j.
            pack_block(bufs.b.as_mut_ptr(), NR, b.at(pc, jc).t(), nc, kc);
            let packed_b = bufs.b.as_ptr();
            let c = c.add(jc);
            multiply_block(
                m,
                (nc, kc),
                c,
                ldc,
                beta,
                a.at(0, pc),
                packed_b,
                alpha,
                bufs,
            );
        }
    }
}

/// C (m, nc) = beta·C + alpha·A (m, kc) @ B, with B already packed (nc.div_ceil(NR) panels of
/// kc.div_ceil(2) pair rows): A is packed MC rows at a time into `bufs.a`.
///
/// # Safety
/// As for `gemm`; packed_b holds the panels and does not alias `bufs`.
#[allow(clippy::too_many_arguments)]
unsafe fn multiply_block(
    m: usize,
    (nc, kc): (usize, usize),
    c: *mut f32,
    ldc: usize,
    beta: f32,
    a: Mat,
    packed_b: *const u32,
    alpha: f32,
    bufs: &mut Buffers,
) {
    let kcp = kc.div_ceil(2);
    let a_len = MC.min(m).div_ceil(MR) * MR * kcp;
    if bufs.a.len() < a_len {
        bufs.a.resize(a_len, 0);
    }
    for ic in (0..m).step_by(MC) {
        let mc = MC.min(m - ic);
        // A (mc, kc) -> panels of MR rows: word (kp, i) of panel p at p·kcp·MR + kp·MR + i.
        pack_block(bufs.a.as_mut_ptr(), MR, a.at(ic, 0), mc, kc);
        for (pj, j) in (0..nc).step_by(NR).enumerate() {
            let bp = packed_b.add(pj * kcp * NR);
            for (pi, i) in (0..mc).step_by(MR).enumerate() {
                let ap = bufs.a.as_ptr().add(pi * kcp * MR);
                let cp = c.add((ic + i) * ldc + j);
                let tile = (MR.min(mc - i), NR.min(nc - j));
                kernel(kcp, ap, bp, cp, ldc, tile, beta, alpha);
            }
        }
    }
}

/// Packs the `lanes` rows of x (lanes × kc, any strides) into lanes.div_ceil(w) panels of `pack`,
/// panel p at dst[p·kc.div_ceil(2)·w..].
///
/// # Safety
/// dst must hold the panels; x must hold (lanes, kc).
unsafe fn pack_block(dst: *mut u32, w: usize, x: Mat, lanes: usize, kc: usize) {
    #[cfg(target_arch = "x86_64")]
    if x.rs == 1 && x.cs != 1 && hardware() {
        // Row by row of x's storage, across all panels: each source row is read contiguously.
        return x86::pack_lane_contiguous(dst, w, x, lanes, kc);
    }
    let kcp = kc.div_ceil(2);
    for (p, l) in (0..lanes).step_by(w).enumerate() {
        pack(dst.add(p * kcp * w), w, x.at(l, 0), w.min(lanes - l), kc);
    }
}

/// Packs a `w`-wide panel of pair words: dst[kp·w + l] = pair(x[l][2kp], x[l][2kp + 1]) for the
/// first `lanes` rows of x (lanes × kc, any strides), zeros beyond `lanes` and beyond kc.
///
/// # Safety
/// dst must hold kc.div_ceil(2)·w words; x must hold (lanes, kc).
unsafe fn pack(dst: *mut u32, w: usize, x: Mat, lanes: usize, kc: usize) {
    #[cfg(target_arch = "x86_64")]
    if hardware() {
        if x.cs == 1 {
            return x86::pack_k_contiguous(dst, w, x, lanes, kc);
        } else if x.rs == 1 {
            return x86::pack_lane_contiguous(dst, w, x, lanes.min(w), kc);
        }
    }
    let get = |l: usize, kk: usize| {
        if l < lanes && kk < kc {
            *x.ptr.add(l * x.rs + kk * x.cs)
        } else {
            0.0
        }
    };
    for kp in 0..kc.div_ceil(2) {
        for l in 0..w {
            *dst.add(kp * w + l) = pair(get(l, 2 * kp), get(l, 2 * kp + 1));
        }
    }
}

/// The MR × NR micro-kernel on packed panels: C tile (rows × cols of it valid) = beta·C +
/// alpha·Σ_kp A pair · B pair.
///
/// # Safety
/// The panels hold kcp pair rows; C holds the valid tile with row stride ldc.
#[allow(clippy::too_many_arguments)]
#[inline]
unsafe fn kernel(
    kcp: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    tile: (usize, usize),
    beta: f32,
    alpha: f32,
) {
    #[cfg(target_arch = "x86_64")]
    if hardware() {
        return x86::kernel(kcp, a, b, c, ldc, tile, beta, alpha);
    }
    emulated::kernel(kcp, a, b, c, ldc, tile, beta, alpha)
}

/// The micro-kernel in software, for CPUs without AVX512-BF16: the same packed operands, the same
/// per-lane arithmetic and the same order as `x86::kernel`, hence the same bits.
mod emulated {
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
}

#[cfg(target_arch = "x86_64")]
mod x86 {
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
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20,
            4, 19, 3, 18, 2, 17, 1, 16, 0,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::fill;

    /// A view of the (r, c) matrix `x` stored row-major, or as its row-major transpose.
    fn view(x: &[f32], r: usize, c: usize, trans: bool) -> Mat {
        let (rs, cs) = if trans { (1, r) } else { (c, 1) };
        Mat {
            ptr: x.as_ptr(),
            rs,
            cs,
        }
    }

    #[test]
    fn round_bf16_is_nearest_even() {
        assert_eq!(round_bf16(1.0), 1.0);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even (1.0).
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert_eq!(round_bf16(-2.5e-40), -0.0);
        assert!(round_bf16(f32::NAN).is_nan());
        assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
    }

    /// `vdpbf16ps`'s lane as the SDM defines it: two roundings (not one of the exact sum), the
    /// odd (high) pair first, denormals flushed.
    #[test]
    fn dot_pair_is_two_fmas_high_pair_first() {
        use emulated::dot_pair;
        let p = |lo: f32, hi: f32| pair(lo, hi);
        let tiny = 2f32.powi(-24); // half an ulp of 1.0: a tie, which rounds to even (1.0)
        assert_eq!(dot_pair(1.0, p(1.0, 1.0), p(tiny, tiny)), 1.0);
        // High first: (1 - 1) + 2^-30 = 2^-30; low first would give (1 + 2^-30) - 1 = 0.
        let small = 2f32.powi(-15);
        assert_eq!(dot_pair(1.0, p(small, -1.0), p(small, 1.0)), 2f32.powi(-30));
        // A denormal accumulator reads as zero; a denormal result is flushed to zero.
        let denormal = f32::from_bits(1);
        assert_eq!(dot_pair(denormal, p(0.0, 0.0), p(0.0, 0.0)), 0.0);
        let (m, n) = (2f32.powi(-64), 2f32.powi(-63));
        assert_eq!(dot_pair(0.0, p(0.0, m), p(0.0, m)), 0.0); // 2^-128 is denormal
        assert_eq!(dot_pair(0.0, p(0.0, n), p(0.0, n)), 2f32.powi(-126));
    }

    /// The bf16 GEMM against an f64 GEMM of the bf16-rounded inputs: with f32 accumulation the
    /// error is a few f32 ulps of Σ|a·b|. Runs the hardware kernel where the CPU has
    /// AVX512-BF16, the software emulation elsewhere.
    #[test]
    fn gemm_matches_f64_reference_on_rounded_inputs() {
        let shapes = [
            (1, 1, 1),
            (3, 5, 7),
            (12, 32, 2),
            (13, 33, 3),
            (25, 70, 385),
            (47, 31, 800),
            (250, 65, 64),
            (64, 600, 129),
            (2100, 40, 17),
        ];
        let mut seed = 1;
        for &(m, n, k) in &shapes {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                for beta in [0.0f32, 1.0] {
                    seed += 1;
                    let (a, b) = (fill(m * k, seed), fill(k * n, seed + 100));
                    let c0 = fill(m * n, seed + 200);
                    let alpha = 0.5;
                    let mut c = c0.clone();
                    let (am, bm) = (view(&a, m, k, ta), view(&b, k, n, tb));
                    // SAFETY: the buffers hold the matrices.
                    unsafe { gemm((m, n, k), c.as_mut_ptr(), n, beta, am, bm, alpha) };
                    let mut worst = 0f64;
                    for i in 0..m {
                        for j in 0..n {
                            let (mut s, mut mag) = (0f64, 0f64);
                            for p in 0..k {
                                let x = round_bf16(a[i * am.rs + p * am.cs]) as f64;
                                let y = round_bf16(b[p * bm.rs + j * bm.cs]) as f64;
                                s += x * y;
                                mag += (x * y).abs();
                            }
                            let want = beta as f64 * c0[i * n + j] as f64 + alpha as f64 * s;
                            let err = (c[i * n + j] as f64 - want).abs() / (mag + 1.0);
                            worst = crate::testutil::nan_max(worst, err);
                        }
                    }
                    assert!(
                        worst < 1e-5,
                        "{m}x{n}x{k} ta={ta} tb={tb} beta={beta}: error {worst:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn gemm_is_deterministic_across_thread_counts() {
        let (m, n, k) = (300, 200, 500);
        let (a, b) = (fill(m * k, 7), fill(k * n, 8));
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut c = vec![0f32; m * n];
            let (am, bm) = (
                Mat {
                    ptr: a.as_ptr(),
                    rs: k,
                    cs: 1,
                },
                Mat {
                    ptr: b.as_ptr(),
                    rs: n,
                    cs: 1,
                },
            );
            // SAFETY: the buffers hold the matrices.
            pool.install(|| unsafe { gemm((m, n, k), c.as_mut_ptr(), n, 0.0, am, bm, 1.0) });
            c
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one, run(3));
        assert_eq!(run(2), run(2));
    }

    /// The software emulation gives the AVX512-BF16 kernels' bits, for every operand layout
    /// (both packing routines), partial tiles, beta 0 and 1, and values that underflow. Needs
    /// a CPU with AVX512-BF16: elsewhere the harness reports it ignored (build.rs sets the cfg
    /// from the build machine's CPU).
    #[test]
    #[cfg_attr(
        not(decodex_avx512bf16),
        ignore = "needs AVX512-BF16 (the build machine lacks it)"
    )]
    fn emulation_equals_the_hardware_bit_for_bit() {
        assert!(available(), "this CPU lacks AVX512-BF16");
        let shapes = [(3, 5, 7), (13, 33, 3), (47, 31, 800), (64, 600, 129)];
        let mut seed = 500;
        let mut cells = 0;
        for &(m, n, k) in &shapes {
            for (ta, tb) in [(false, false), (true, true)] {
                for beta in [0.0f32, 1.0] {
                    seed += 1;
                    // Some tiny values, so that products and sums reach the denormal range.
                    let scaled = |len, s| {
                        let mut v = fill(len, s);
                        v.iter_mut().step_by(7).for_each(|x| *x *= 1e-38);
                        v
                    };
                    let (a, b) = (scaled(m * k, seed), scaled(k * n, seed + 100));
                    let c0 = fill(m * n, seed + 200);
                    let (am, bm) = (view(&a, m, k, ta), view(&b, k, n, tb));
                    let run = |emulate: bool| {
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(1)
                            .build()
                            .unwrap();
                        let mut c = c0.clone();
                        pool.install(|| {
                            FORCE_EMULATION.with(|f| f.set(emulate));
                            // SAFETY: the buffers hold the matrices.
                            unsafe { gemm((m, n, k), c.as_mut_ptr(), n, beta, am, bm, 0.5) };
                            FORCE_EMULATION.with(|f| f.set(false));
                        });
                        c
                    };
                    let (hw, sw) = (run(false), run(true));
                    for (i, (x, y)) in hw.iter().zip(&sw).enumerate() {
                        assert_eq!(
                            x.to_bits(),
                            y.to_bits(),
                            "{m}x{n}x{k} ta={ta} tb={tb} beta={beta} element {i}: {x} vs {y}"
                        );
                    }
                    cells += hw.len();
                }
            }
        }
        println!("{cells} elements: the emulation equals AVX512-BF16 bit for bit");
    }
}
