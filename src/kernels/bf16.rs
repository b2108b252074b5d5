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
    pub(super) fn at(self, i: usize, j: usize) -> Mat {
        Mat {
            // wrapping_add: pointer arithmetic only; every element read is inside the matrix.
            ptr: self.ptr.wrapping_add(i * self.rs + j * self.cs),
            ..self
        }
    }

    /// The transpose, read in place.
    pub(super) fn t(self) -> Mat {
        Mat {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// Whether the bf16 kernels run on hardware: the AVX-512 tier (`Isa::current`) on a CPU with
/// AVX512-BF16; otherwise they run in software (`emulated`).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            super::isa::Isa::current() == super::isa::Isa::Avx512
                && is_x86_feature_detected!("avx512f")
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
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
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

/// Runs `f` with `P` scratch slices of the given lengths (in words) from this thread's buffers,
/// for operands packed once and multiplied many times (an attention task's).
pub fn with_scratch<const P: usize, R>(
    lens: [usize; P],
    f: impl FnOnce([&mut [u32]; P]) -> R,
) -> R {
    with_buffers(|bufs| {
        let total: usize = lens.iter().sum();
        if bufs.b.len() < total {
            bufs.b.resize(total, 0);
        }
        let mut rest = &mut bufs.b[..total];
        f(lens.map(|len| {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
            rest = tail;
            head
        }))
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

mod emulated;

#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(test)]
mod tests;
