//! llama.cpp's CPU arithmetic for the ops of a Llama decoding step, to the bit: what the
//! quantized (GGUF) path computes, so that its greedy choices follow llama.cpp's rather than
//! landing on the other side of near-ties (a 135M model at 4 bits has many). The reference is
//! ggml's x86 CPU backend as built for AVX-512 (llama-cpp-python 0.3.36,
//! `scripts/compare_llamacpp.py`); each function names the ggml routine it follows.
//!
//! Everything is written lane by lane in portable Rust with `mul_add` for the fused
//! multiply-adds, in ggml's order of operations, so the bits do not depend on the CPU running
//! decodex; the attention's F16 dot also has an AVX2 form that holds the same lanes in
//! registers (tested equal bit for bit). The products of the quantized matrices are in
//! `kernels/quant.rs`.

use half::f16;

use crate::kernels::simd::simd_fn;

/// Whether this process runs the AVX2 forms below (the `avx2` and `avx512` tiers).
#[cfg(target_arch = "x86_64")]
#[inline]
fn avx2() -> bool {
    crate::kernels::isa::Isa::current() >= crate::kernels::isa::Isa::Avx2
}

/// f32 through f16 and back, rounding to nearest even (ggml's `GGML_CPU_FP32_TO_FP16`).
#[inline(always)]
pub fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// `round_f16` of every value, with F16C's conversions where the tier has them (the same
/// rounding, to nearest even).
pub fn round_f16_all(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the AVX2 tier requires F16C (`Isa::detected`).
        return unsafe { x86::round_f16_all(xs) };
    }
    xs.iter_mut().for_each(|x| *x = round_f16(*x));
}

/// llama.cpp's `hsum_float_8`: ((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)).
#[inline(always)]
pub fn hsum8(a: &[f32; 8]) -> f32 {
    let h = [a[4] + a[0], a[5] + a[1], a[6] + a[2], a[7] + a[3]];
    (h[0] + h[2]) + (h[1] + h[3])
}

/// GCC's `_mm512_reduce_add_ps`: the two halves added, then the same tree as `hsum8`.
#[inline(always)]
pub(crate) fn reduce16(a: &[f32; 16]) -> f32 {
    let mut h = [0f32; 8];
    for (i, h) in h.iter_mut().enumerate() {
        *h = a[i + 8] + a[i];
    }
    hsum8(&h)
}

/// `ggml_compute_forward_rms_norm_f32` then the weight: Σx² in f64, mean rounded to f32,
/// y = (x · 1/√(mean + eps)) · w. Rows of `w.len()`.
pub fn rms_norm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let c = w.len();
    for (y, x) in out.chunks_exact_mut(c).zip(x.chunks_exact(c)) {
        let sum: f64 = x.iter().fold(0.0, |s, &v| s + (v * v) as f64);
        let mean = (sum / c as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
            *y = (x * scale) * w;
        }
    }
}

/// ggml's `rotate_pairs` on adjacent pairs (GGML_ROPE_TYPE_NORM, llama's GGUF layout), as GCC
/// contracts it: x0·c − x1·s = fma(x0, c, −(x1·s)) and x0·s + x1·c = fma(x0, s, x1·c).
#[inline(always)]
pub fn rotate_pair(x0: f32, x1: f32, c: f32, s: f32) -> (f32, f32) {
    (x0.mul_add(c, -(x1 * s)), x0.mul_add(s, x1 * c))
}

/// Bits of the constants of `ggml_v_expf` (ARM's optimized-routines expf, max error 1.45 ulp).
const EXP_SHIFT: u32 = 0x4b40_0000; // 0x1.8p23
const EXP_LOG2E: u32 = 0x3fb8_aa3b; // 0x1.715476p+0
const EXP_LN2_LO: u32 = 0x35bf_be8e; // 0x1.7f7d1cp-20
const EXP_LN2_HI: u32 = 0x3f31_7200; // 0x1.62e4p-1
const EXP_C: [u32; 5] = [
    0x3c07_2010, // 0x1.0e4020p-7
    0x3d2b_9f17, // 0x1.573e2ep-5
    0x3e2a_af33, // 0x1.555e66p-3
    0x3eff_fedb, // 0x1.fffdb6p-2
    0x3f7f_fff6, // 0x1.ffffecp-1
];

/// One lane of ggml's AVX-512 `ggml_v_expf`.
#[inline(always)]
pub fn expf(x: f32) -> f32 {
    let f = f32::from_bits;
    let r = f(EXP_SHIFT);
    let z = x.mul_add(f(EXP_LOG2E), r);
    let n = z - r;
    let b = (-n).mul_add(f(EXP_LN2_LO), (-n).mul_add(f(EXP_LN2_HI), x));
    let u = b * b;
    let j = f(EXP_C[0])
        .mul_add(b, f(EXP_C[1]))
        .mul_add(u, f(EXP_C[2]).mul_add(b, f(EXP_C[3])))
        .mul_add(u, f(EXP_C[4]).mul_add(b, 1.0));
    if n.abs() > 192.0 {
        // NaN compares false above, as `_CMP_GT_OQ` does.
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    scalef(j, n)
}

/// x = expf(x − mx) for every value, eight lanes at a time on the AVX2 tier (the same
/// steps; a group with an exponent outside the normal range goes lane by lane).
#[inline(always)]
pub(crate) fn exp_shifted(xs: &mut [f32], mx: f32) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the tier runs only on a CPU with AVX2 and FMA.
        return unsafe { x86::exp_shifted(xs, mx) };
    }
    xs.iter_mut().for_each(|x| *x = expf(*x - mx));
}

/// `vscalefps` for an integral n with |n| ≤ 192: j·2ⁿ, rounded once.
#[inline(always)]
fn scalef(j: f32, n: f32) -> f32 {
    let n = n as i32;
    if (-126..=127).contains(&n) {
        j * f32::from_bits(((n + 127) as u32) << 23)
    } else {
        // j·2ⁿ is exact in f64; one rounding to f32 (subnormal or infinite as it falls).
        (j as f64 * 2f64.powi(n)) as f32
    }
}

/// `ggml_vec_swiglu_f32`: silu(g)·u with silu(g) = g / (1 + expf(−g)); eight lanes at a
/// time on the AVX2 tier (the same steps).
pub fn swiglu(out: &mut [f32], gate: &[f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the tier runs only on a CPU with AVX2 and FMA.
        return unsafe { x86::swiglu(out, gate, up) };
    }
    swiglu_lanes(out, gate, up)
}

/// `swiglu` lane by lane.
fn swiglu_lanes(out: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = (g / (1.0 + expf(0.0 - g))) * u;
    }
}

/// Which kernel ggml's `mul_mat` runs for a product of F16 operands (the attention's): it
/// depends on the number of query rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum F16Dot {
    /// One row (a decoding step): `ggml_vec_dot_f16`, four 16-lane accumulators over steps of
    /// 64 values, added pairwise, then reduced; leftovers added in f64.
    Vec,
    /// Several rows (a prompt): llamafile's tinyBLAS, one 16-lane accumulator over steps of 16
    /// values, then reduced.
    Tiny,
}

/// Accumulators of `kind`, [accumulator][lane], to the dot product.
#[inline(always)]
fn finish(kind: F16Dot, mut acc: [[f32; 16]; 4]) -> f32 {
    if kind == F16Dot::Vec {
        // ggml's reduction: sum[0] += sum[2], sum[1] += sum[3], then sum[0] += sum[1].
        let [a0, a1, a2, a3] = &mut acc;
        for (((x0, x1), x2), x3) in a0.iter_mut().zip(a1.iter_mut()).zip(&*a2).zip(&*a3) {
            *x0 += x2;
            *x1 += x3;
            *x0 += *x1;
        }
    }
    reduce16(&acc[0])
}

/// key·q for each key (rows of q.len(), F16 values already rounded through f16) as `kind`'s
/// kernel sums it, into `out`. `Tiny` needs a length that is a multiple of 16. The AVX2 form
/// gives the same bits (a test).
pub fn dots_f16(kind: F16Dot, keys: &[f32], q: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the tier runs only on a CPU with AVX2 and FMA.
        return unsafe { x86::dots_f16(kind, keys, q, out) };
    }
    for (o, k) in out.iter_mut().zip(keys.chunks_exact(q.len())) {
        *o = dot_f16_lanes(kind, k, q);
    }
}

/// One of `dots_f16`'s products, spelled lane by lane.
fn dot_f16_lanes(kind: F16Dot, a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [[0f32; 16]; 4];
    match kind {
        F16Dot::Vec => {
            let n = a.len() / 64 * 64;
            for (ca, cb) in a[..n].chunks_exact(64).zip(b[..n].chunks_exact(64)) {
                for (j, acc) in acc.iter_mut().enumerate() {
                    for (l, acc) in acc.iter_mut().enumerate() {
                        *acc = ca[j * 16 + l].mul_add(cb[j * 16 + l], *acc);
                    }
                }
            }
            let mut sum = finish(kind, acc) as f64;
            for (x, y) in a[n..].iter().zip(&b[n..]) {
                sum += (x * y) as f64;
            }
            sum as f32
        }
        F16Dot::Tiny => {
            for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
                for (l, acc) in acc[0].iter_mut().enumerate() {
                    *acc = ca[l].mul_add(cb[l], *acc);
                }
            }
            finish(kind, acc)
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::F16Dot;

    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn round_f16_all(xs: &mut [f32]) {
        let mut chunks = xs.chunks_exact_mut(8);
        for c in &mut chunks {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(c.as_ptr()));
            _mm256_storeu_ps(c.as_mut_ptr(), _mm256_cvtph_ps(h));
        }
        for x in chunks.into_remainder() {
            *x = super::round_f16(*x);
        }
    }

    /// `super::expf` in eight lanes, where every lane's exponent is in −126..=127 (else
    /// `None`: the caller goes lane by lane).
    #[inline(always)]
    unsafe fn expf8(x: __m256) -> Option<__m256> {
        use super::{EXP_C, EXP_LN2_HI, EXP_LN2_LO, EXP_LOG2E, EXP_SHIFT};
        let c = |bits: u32| _mm256_set1_ps(f32::from_bits(bits));
        let r = c(EXP_SHIFT);
        let n = _mm256_sub_ps(_mm256_fmadd_ps(x, c(EXP_LOG2E), r), r);
        let neg = _mm256_xor_ps(n, _mm256_set1_ps(-0.0));
        let b = _mm256_fmadd_ps(neg, c(EXP_LN2_LO), _mm256_fmadd_ps(neg, c(EXP_LN2_HI), x));
        let u = _mm256_mul_ps(b, b);
        let p = _mm256_fmadd_ps(
            _mm256_fmadd_ps(
                _mm256_fmadd_ps(c(EXP_C[0]), b, c(EXP_C[1])),
                u,
                _mm256_fmadd_ps(c(EXP_C[2]), b, c(EXP_C[3])),
            ),
            u,
            _mm256_fmadd_ps(c(EXP_C[4]), b, _mm256_set1_ps(1.0)),
        );
        // j·2ⁿ by the exponent bits.
        let normal = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_GE_OQ>(n, _mm256_set1_ps(-126.0)),
            _mm256_cmp_ps::<_CMP_LE_OQ>(n, _mm256_set1_ps(127.0)),
        );
        if _mm256_movemask_ps(normal) != 0xff {
            return None;
        }
        let e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
        Some(_mm256_mul_ps(
            p,
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e)),
        ))
    }

    /// `super::expf` of x − mx for every value.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted(xs: &mut [f32], mx: f32) {
        let mxv = _mm256_set1_ps(mx);
        let mut chunks = xs.chunks_exact_mut(8);
        for ch in &mut chunks {
            match expf8(_mm256_sub_ps(_mm256_loadu_ps(ch.as_ptr()), mxv)) {
                Some(e) => _mm256_storeu_ps(ch.as_mut_ptr(), e),
                None => ch.iter_mut().for_each(|v| *v = super::expf(*v - mx)),
            }
        }
        for v in chunks.into_remainder() {
            *v = super::expf(*v - mx);
        }
    }

    /// `super::swiglu` eight lanes at a time.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn swiglu(out: &mut [f32], gate: &[f32], up: &[f32]) {
        let n = out.len().min(gate.len()).min(up.len()) / 8 * 8;
        let one = _mm256_set1_ps(1.0);
        for i in (0..n).step_by(8) {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let o = match expf8(_mm256_sub_ps(_mm256_setzero_ps(), g)) {
                Some(e) => {
                    let silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
                    _mm256_mul_ps(silu, _mm256_loadu_ps(up.as_ptr().add(i)))
                }
                None => {
                    super::swiglu_lanes(&mut out[i..i + 8], &gate[i..i + 8], &up[i..i + 8]);
                    continue;
                }
            };
            _mm256_storeu_ps(out.as_mut_ptr().add(i), o);
        }
        super::swiglu_lanes(&mut out[n..], &gate[n..], &up[n..]);
    }

    /// `hsum8` of a register: (h4+h0, h5+h1, h6+h2, h7+h3), then (g0+g2) + (g1+g3).
    #[inline(always)]
    unsafe fn hsum8(h: __m256) -> f32 {
        let g = _mm_add_ps(_mm256_extractf128_ps::<1>(h), _mm256_castps256_ps128(h));
        let t = _mm_add_ps(g, _mm_movehl_ps(g, g));
        _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)))
    }

    /// `super::dots_f16`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dots_f16(kind: F16Dot, keys: &[f32], q: &[f32], out: &mut [f32]) {
        for (o, k) in out.iter_mut().zip(keys.chunks_exact(q.len())) {
            *o = dot_f16(kind, k, q);
        }
    }

    /// `super::dot_f16_lanes` on eight registers: register i holds values 8i..8i + 8 of each
    /// 64 (accumulator i / 2, lanes 8·(i % 2)..), so each lane's sums are the same.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f16(kind: F16Dot, a: &[f32], b: &[f32]) -> f32 {
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let ld = |p: *const f32, i: usize| _mm256_loadu_ps(p.add(i));
        match kind {
            F16Dot::Vec => {
                let n = a.len().min(b.len()) / 64 * 64;
                let mut acc = [_mm256_setzero_ps(); 8];
                for c in (0..n).step_by(64) {
                    for (i, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm256_fmadd_ps(ld(pa, c + 8 * i), ld(pb, c + 8 * i), *acc);
                    }
                }
                // ggml's sum[0] += sum[2], sum[1] += sum[3], sum[0] += sum[1], per half.
                let lo =
                    _mm256_add_ps(_mm256_add_ps(acc[0], acc[4]), _mm256_add_ps(acc[2], acc[6]));
                let hi =
                    _mm256_add_ps(_mm256_add_ps(acc[1], acc[5]), _mm256_add_ps(acc[3], acc[7]));
                let mut sum = hsum8(_mm256_add_ps(hi, lo)) as f64;
                for (x, y) in a[n..].iter().zip(&b[n..]) {
                    sum += (x * y) as f64;
                }
                sum as f32
            }
            F16Dot::Tiny => {
                let n = a.len().min(b.len()) / 16 * 16;
                let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for c in (0..n).step_by(16) {
                    lo = _mm256_fmadd_ps(ld(pa, c), ld(pb, c), lo);
                    hi = _mm256_fmadd_ps(ld(pa, c + 8), ld(pb, c + 8), hi);
                }
                hsum8(_mm256_add_ps(hi, lo))
            }
        }
    }
}

/// Accumulator row r of `mix_f16_in` (rows of `acc`): Σ w[j]·v[j] over the positions
/// first + j ≡ r (mod rows) in order, W values of d at a time in registers (each value row
/// read once).
#[inline(always)]
fn mix_rows<const W: usize>(
    acc: &mut [f32],
    w: &[f32],
    v: &[f32],
    (first, n, rows): (usize, usize, usize),
) {
    let hd = acc.len() / rows.max(1);
    for (slot, a) in acc.chunks_exact_mut(hd).enumerate().take(rows) {
        let j0 = (slot + rows - first % rows) % rows;
        for d0 in (0..hd).step_by(W) {
            let mut r = [0f32; W];
            for j in (j0..n).step_by(rows) {
                let vj = &v[j * hd + d0..j * hd + d0 + W];
                for (r, &x) in r.iter_mut().zip(vj) {
                    *r = x.mul_add(w[j], *r);
                }
            }
            a[d0..d0 + W].copy_from_slice(&r);
        }
    }
}

thread_local! {
    /// `mix_f16`'s accumulators, kept between calls (one a head and layer in each step).
    static MIX: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// out = Σⱼ w[j]·v[j] over value rows v[j] (each out.len() long) at cache positions
/// first + j, the weights rounded to f16 here: the F16 product of the attention weights and
/// the values, position j in the lane and accumulator `kind`'s kernel gives it (ggml's rows
/// start at cache position 0; positions not given have weight 0 and leave sums unchanged).
pub fn mix_f16(kind: F16Dot, out: &mut [f32], w: &mut [f32], v: &[f32], first: usize) {
    round_f16_all(w);
    // [accumulator][lane][d]: four accumulators for `Vec`, one for `Tiny`; then 16 rows of
    // lane sums.
    let accumulators = if kind == F16Dot::Vec { 4 } else { 1 };
    MIX.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        buf.resize((accumulators + 1) * 16 * out.len(), 0.0);
        mix_f16_in(kind, out, w, v, first, &mut buf);
    });
}

simd_fn! {
    /// `mix_f16` in `buf` (zeros), for weights that are f16 values: the weighted rows into their (accumulator, lane) rows, then
    /// ggml's reduction of the lanes done row-wise, for every d at once (the same additions as
    /// `finish` per d).
    fn mix_f16_in(kind: F16Dot, out: &mut [f32], w: &[f32], v: &[f32], first: usize, buf: &mut [f32]) {
        let hd = out.len();
        let (acc, sums) = buf.split_at_mut(buf.len() - 16 * hd);
        // Position pos goes to accumulator row pos mod S (ggml's lane and accumulator), in
        // position order (`mix_rows`).
        let rows = if kind == F16Dot::Vec { 64 } else { 16 };
        let n = w.len().min(v.len() / hd);
        if hd.is_multiple_of(64) {
            mix_rows::<64>(acc, w, v, (first, n, rows));
        } else if hd.is_multiple_of(32) {
            mix_rows::<32>(acc, w, v, (first, n, rows));
        } else {
            for (j, (&w, vj)) in w.iter().zip(v.chunks_exact(hd)).enumerate() {
                let slot = (first + j) % rows;
                for (a, &x) in acc[slot * hd..(slot + 1) * hd].iter_mut().zip(vj) {
                    *a = x.mul_add(w, *a);
                }
            }
        }
        let acc: &[f32] = acc;
        let row = |s: usize| &acc[s * hd..(s + 1) * hd];
        for (l, y) in sums.chunks_exact_mut(hd).enumerate() {
            match kind {
                // (sum[0] + sum[2]) + (sum[1] + sum[3]) per lane.
                F16Dot::Vec => {
                    let (a0, a1, a2, a3) =
                        (row(l), row(16 + l), row(32 + l), row(48 + l));
                    for ((((y, a0), a1), a2), a3) in y.iter_mut().zip(a0).zip(a1).zip(a2).zip(a3) {
                        *y = (a0 + a2) + (a1 + a3);
                    }
                }
                F16Dot::Tiny => y.copy_from_slice(row(l)),
            }
        }
        // `reduce16` row-wise: lanes l + 8 and l, then `hsum8`'s tree.
        let (lo, hi) = sums.split_at_mut(8 * hd);
        for (a, b) in lo.iter_mut().zip(hi.iter()) {
            *a += b;
        }
        let (lo, hi) = lo.split_at_mut(4 * hd);
        for (a, b) in lo.iter_mut().zip(hi.iter()) {
            *a += b;
        }
        let (g0, rest) = lo.split_at(hd);
        let (g1, rest) = rest.split_at(hd);
        let (g2, g3) = rest.split_at(hd);
        for ((((o, g0), g1), g2), g3) in out.iter_mut().zip(g0).zip(g1).zip(g2).zip(g3) {
            *o = (g0 + g2) + (g1 + g3);
        }
    }
}

simd_fn! {
    /// `ggml_compute_forward_soft_max_f32` of one row of raw scores over the positions a query
    /// sees (cache positions `first..first + scores.len()`; the others are masked, so their
    /// weights are 0): scores · scale, minus the max, ggml's expf; the sum adds each aligned
    /// 16-position chunk's reduced f32 sum in f64; weights = e · (f32)(1/sum). In place.
    pub fn soft_max(scores: &mut [f32], first: usize, scale: f32) {
        let mut mx = f32::NEG_INFINITY;
        for s in scores.iter_mut() {
            *s *= scale;
            mx = mx.max(*s);
        }
        exp_shifted(scores, mx);
        let mut sum = 0f64;
        let end = first + scores.len();
        let mut c0 = first / 16 * 16;
        while c0 < end {
            let mut chunk = [0f32; 16];
            for (l, x) in chunk.iter_mut().enumerate() {
                if (first..end).contains(&(c0 + l)) {
                    *x = scores[c0 + l - first];
                }
            }
            sum += reduce16(&chunk) as f64;
            c0 += 16;
        }
        let inv = (1.0 / sum) as f32;
        for s in scores.iter_mut() {
            *s *= inv;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One key's product with q through `dots_f16` (the tier's form).
    fn dot_f16(kind: F16Dot, key: &[f32], q: &[f32]) -> f32 {
        let mut out = [0f32];
        dots_f16(kind, key, q, &mut out);
        out[0]
    }

    #[test]
    fn expf_is_accurate_and_handles_the_ends() {
        for i in -8700..=8800 {
            let x = i as f32 * 0.01;
            let (got, want) = (expf(x), (x as f64).exp());
            assert!(
                ((got as f64 - want) / want).abs() < 3e-7,
                "{x}: {got} vs {want}"
            );
        }
        assert_eq!(expf(f32::NEG_INFINITY), 0.0);
        assert_eq!(expf(-300.0), 0.0);
        assert_eq!(expf(300.0), f32::INFINITY);
        // A subnormal result, rounded once.
        let x = -90.0f32;
        assert!(((expf(x) as f64 - (x as f64).exp()) / (x as f64).exp()).abs() < 1e-4);
    }

    #[test]
    fn f16_products_sum_like_their_kernels() {
        let a: Vec<f32> = (0..128)
            .map(|i| round_f16(i as f32 * 0.37 - 11.0))
            .collect();
        let b: Vec<f32> = (0..128)
            .map(|i| round_f16(1.0 / (i as f32 + 1.5)))
            .collect();
        let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        for kind in [F16Dot::Vec, F16Dot::Tiny] {
            let got = dot_f16(kind, &a, &b) as f64;
            assert!(
                (got - exact).abs() < 1e-5 * exact.abs().max(1.0),
                "{kind:?}"
            );
            // The same sum as a mix of 128 one-value rows, against weights that are f16 already.
            let mut out = [0f32];
            mix_f16(kind, &mut out, &mut b.clone(), &a, 0);
            assert_eq!(
                out[0].to_bits(),
                dot_f16(kind, &a, &b).to_bits(),
                "{kind:?}"
            );
        }
        // ggml_vec_dot_f16 over 64 values: each lane holds one exact product.
        let p: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
        let mut lanes = [0f32; 16];
        for l in 0..16 {
            lanes[l] = (p[l] + p[l + 32]) + (p[l + 16] + p[l + 48]);
        }
        let got = dot_f16(F16Dot::Vec, &a[..64], &b[..64]);
        assert_eq!(got.to_bits(), reduce16(&lanes).to_bits());
        // tinyBLAS over 32 values: two fused steps per lane.
        for l in 0..16 {
            lanes[l] = a[l + 16].mul_add(b[l + 16], a[l] * b[l]);
        }
        let got = dot_f16(F16Dot::Tiny, &a[..32], &b[..32]);
        assert_eq!(got.to_bits(), reduce16(&lanes).to_bits());
    }

    /// The AVX2 dot equals the lane-by-lane one bit for bit, with and without leftovers; a
    /// mix of 64-wide rows equals the mixes of its columns one at a time.
    #[test]
    fn f16_products_agree_across_forms() {
        let vals = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| {
                    round_f16(
                        (((i as u32).wrapping_mul(2654435761) ^ seed) % 2000) as f32 / 997.0 - 1.0,
                    )
                })
                .collect()
        };
        for n in [16, 48, 64, 128, 130, 190, 256] {
            let (a, b) = (vals(n, 7), vals(n, 11));
            for kind in [F16Dot::Vec, F16Dot::Tiny] {
                let n16 = n / 16 * 16;
                let want = dot_f16_lanes(kind, &a[..n16], &b[..n16]);
                assert_eq!(
                    dot_f16(kind, &a[..n16], &b[..n16]).to_bits(),
                    want.to_bits()
                );
                #[cfg(target_arch = "x86_64")]
                if crate::kernels::isa::Isa::available().contains(&crate::kernels::isa::Isa::Avx2) {
                    // SAFETY: the CPU has AVX2 and FMA.
                    let got = unsafe { x86::dot_f16(kind, &a[..n16], &b[..n16]) };
                    assert_eq!(got.to_bits(), want.to_bits(), "{kind:?} {n}");
                }
            }
        }
        for (hd, n) in [(64, 77), (96, 40), (24, 20)] {
            let (w, v) = (vals(n, 3), vals(n * hd, 5));
            for kind in [F16Dot::Vec, F16Dot::Tiny] {
                for first in [0, 5, 16, 40] {
                    let mut out = vec![0f32; hd];
                    mix_f16(kind, &mut out, &mut w.clone(), &v, first);
                    for d in 0..hd {
                        let col: Vec<f32> = (0..n).map(|j| v[j * hd + d]).collect();
                        let mut one = [0f32];
                        mix_f16(kind, &mut one, &mut w.clone(), &col, first);
                        assert_eq!(
                            out[d].to_bits(),
                            one[0].to_bits(),
                            "{kind:?} first {first} d {d}"
                        );
                    }
                }
            }
        }
    }

    /// The eight-lane expf (and swiglu) equals the lane-by-lane one, bit for bit, over the whole range
    /// (subnormal and infinite results and NaN included).
    #[test]
    fn exp_shifted_equals_expf() {
        let mut xs: Vec<f32> = (-9000..=9000).map(|i| i as f32 * 0.0137).collect();
        xs.extend([
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            0.0,
            88.7,
            -103.9,
        ]);
        for mx in [0.0, 3.5, -2.25] {
            let mut got = xs.clone();
            exp_shifted(&mut got, mx);
            let (mut sw, mut want_sw) = (vec![0f32; xs.len()], vec![0f32; xs.len()]);
            let up: Vec<f32> = xs.iter().map(|x| x * 0.5 - mx).collect();
            swiglu(&mut sw, &xs, &up);
            swiglu_lanes(&mut want_sw, &xs, &up);
            for (g, w) in sw.iter().zip(&want_sw) {
                assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()));
            }
            for (x, g) in xs.iter().zip(&got) {
                let want = expf(x - mx);
                assert!(
                    g.to_bits() == want.to_bits() || (g.is_nan() && want.is_nan()),
                    "{x}"
                );
            }
        }
    }

    #[test]
    fn soft_max_sums_to_one_and_depends_on_the_first_position_only_through_its_chunks() {
        let raw: Vec<f32> = (0..37).map(|i| (i as f32 * 0.7).sin() * 4.0).collect();
        let mut at0 = raw.clone();
        soft_max(&mut at0, 0, 0.125);
        let total: f32 = at0.iter().sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!(at0.iter().all(|&w| w > 0.0));
        // Shifted by a whole chunk: the same chunks, the same bits.
        let mut at16 = raw.clone();
        soft_max(&mut at16, 16, 0.125);
        assert!(at0
            .iter()
            .zip(&at16)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        // Shifted within a chunk: other partial sums, the same weights to rounding.
        let mut at5 = raw;
        soft_max(&mut at5, 5, 0.125);
        assert!(at0.iter().zip(&at5).all(|(a, b)| (a - b).abs() <= 1e-7));
    }

    #[test]
    fn rms_norm_matches_the_definition() {
        let x: Vec<f32> = (0..64).map(|i| i as f32 * 0.1 - 3.0).collect();
        let w = vec![2.0f32; 32];
        let mut y = vec![0f32; 64];
        rms_norm(&mut y, &x, &w, 1e-5);
        for (row, yrow) in x.chunks(32).zip(y.chunks(32)) {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / 32.0;
            for (a, b) in row.iter().zip(yrow) {
                assert!((a * 2.0 / (ms + 1e-5).sqrt() - b).abs() < 1e-5);
            }
        }
    }
}
