//! Matrix-vector products with GGUF's 4- and 8-bit block quantizations (Q4_0, Q4_1, Q8_0),
//! computed as llama.cpp's CPU backend computes them, to the bit: activations are quantized to
//! 8 bits per 32-value block (`quantize_row_q8_1`: scale max|x|/127, codes rounded half to even),
//! and each output is llama.cpp's x86 `ggml_vec_dot_q4_1_q8_1` (or `_q4_0_q8_0`, `_q8_0_q8_0`):
//!
//! - per block, eight integer lanes each sum four consecutive code products (`vpdpbusd`);
//! - each lane accumulates `fma(dw·dx, lane, acc)` over the blocks, in block order;
//! - Q4_1's offsets accumulate apart, `summs = fma(m, s, summs)`, with s the activations'
//!   f16-rounded scale·Σcodes;
//! - the result is `((a0+a4)+(a2+a6)) + ((a1+a5)+(a3+a7)) + summs`.
//!
//! Every format is held as affine 8-bit codes per block of 32: weight = d·u + m, with u in
//! 0..=15 for Q4_0 (m = −8d) and Q4_1, and u = q + 128 in 0..=255 for Q8_0 (m = −128d). For
//! Q4_0 and Q8_0 the fixed offset code o (8 or 128) is folded into each lane's integer sum,
//! Σ u·q − o·Σq = Σ (u − o)·q, as llama.cpp's signed products give it. The AVX512-VNNI kernel
//! and the portable one produce the same bits (a test checks), so results do not depend on the
//! CPU. Q4 codes stay packed two per byte (llama.cpp's order: the low nibbles are values 0..15
//! of the block, the high nibbles 16..31), so decoding reads as many weight bytes per token as
//! llama.cpp does.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;

use super::isa::Isa;

/// Values per quantization block.
pub const BLOCK: usize = 32;

/// The most pairs of weight rows per parallel task of `matmul_group`.
const CHUNK: usize = 32;

/// How the codes of a row are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codes {
    /// Two 4-bit codes per byte, 16 bytes per block.
    Nibbles,
    /// One 8-bit code per byte, 32 bytes per block.
    Bytes,
}

/// A (rows, cols) weight matrix in affine block form, applied as x @ Wᵀ. Rows are stored in
/// pairs, interleaved block by block (an odd last row is paired with zeros), so that one kernel
/// step reads both rows' codes of a block in one load and their scales side by side.
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    pub rows: usize,
    pub cols: usize,
    codes: Codes,
    /// Codes per (pair, block, row of the pair): 16 or 32 bytes each.
    qs: Vec<u8>,
    /// Scales and offsets as the file's f16 bits, per (pair, block): [d0, d1, m0, m1] for the
    /// pair's rows 0 and 1 (m is 0 where `offset_code` stands for it). Kept as f16, as GGUF
    /// keeps them, so that decoding streams no more weight bytes than llama.cpp does (f32
    /// would add a fifth to Q4's 20 bytes a block); f16 to f32 is exact.
    dm: Vec<u16>,
    /// The fixed offset code folded into the integer sums (Q4_0: 8, Q8_0: 128), or 0 for Q4_1,
    /// whose stored offsets go through `summs`.
    offset_code: i32,
}

/// Activations quantized like llama.cpp's `block_q8_1`: per block, codes, the scale and
/// scale·Σcodes, both rounded through f16 as llama.cpp stores them.
struct QuantRows {
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    /// `s` by block: st[b·(m + 3) + i] = s of row i's block b (three zeros after each block's
    /// m rows, so that four consecutive rows load as one vector); empty for fewer than three
    /// rows, where the AVX2 kernel does not read it.
    st: Vec<f32>,
}

impl QuantMatrix {
    /// The matrix of a GGUF tensor (out, in) stored as Q4_0, Q4_1 or Q8_0 with `in` a multiple
    /// of 32; `None` for other formats.
    pub fn from_qtensor(q: &QTensor) -> candle_core::Result<Option<Self>> {
        let (rows, cols) = q.shape().dims2()?;
        if !cols.is_multiple_of(BLOCK) {
            return Ok(None);
        }
        let (bytes_per_block, codes, offset_code) = match q.dtype() {
            GgmlDType::Q4_0 => (18, Codes::Nibbles, 8),
            GgmlDType::Q4_1 => (20, Codes::Nibbles, 0),
            GgmlDType::Q8_0 => (34, Codes::Bytes, 128),
            _ => return Ok(None),
        };
        let data = q.data()?;
        let nb = cols / BLOCK;
        if data.len() != rows * nb * bytes_per_block {
            candle_core::bail!(
                "{:?} tensor holds {} bytes, expected {}",
                q.dtype(),
                data.len(),
                rows * nb * bytes_per_block
            );
        }
        let code_len = codes.len();
        let slots = rows.div_ceil(2) * 2 * nb;
        let mut out = QuantMatrix {
            rows,
            cols,
            codes,
            qs: vec![0; slots * code_len],
            dm: vec![0; 2 * slots],
            offset_code,
        };
        let bits = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]);
        for (i, blk) in data.chunks_exact(bytes_per_block).enumerate() {
            let (r, b) = (i / nb, i % nb);
            let (slot, dm) = (out.slot(r, b), out.dm_at(r, b));
            out.dm[dm] = bits(blk);
            let qs = &mut out.qs[slot * code_len..(slot + 1) * code_len];
            match q.dtype() {
                GgmlDType::Q4_0 => qs.copy_from_slice(&blk[2..18]),
                GgmlDType::Q4_1 => {
                    out.dm[dm + 2] = bits(&blk[2..4]);
                    qs.copy_from_slice(&blk[4..20]);
                }
                _ => {
                    for (q, &b) in qs.iter_mut().zip(&blk[2..34]) {
                        *q = b ^ 0x80;
                    }
                }
            }
        }
        Ok(Some(out))
    }

    /// Where block b of row r is kept.
    #[inline(always)]
    fn slot(&self, r: usize, b: usize) -> usize {
        ((r / 2) * (self.cols / BLOCK) + b) * 2 + r % 2
    }

    /// Where the scale of block b of row r is kept in `dm` (its offset two further).
    #[inline(always)]
    fn dm_at(&self, r: usize, b: usize) -> usize {
        ((r / 2) * (self.cols / BLOCK) + b) * 4 + r % 2
    }

    /// Row r of the matrix as f32 (an embedding lookup): d·u + m per block, as llama.cpp's
    /// `dequantize_row_*` (d·u is exact, so there is one rounding).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let code_len = self.codes.len();
        for (b, vals) in out.chunks_exact_mut(BLOCK).enumerate() {
            let (slot, at) = (self.slot(r, b), self.dm_at(r, b));
            let d = f32_of(self.dm[at]);
            // Q4_0 and Q8_0: m = −o·d, exact (o is a power of two).
            let m = match self.offset_code {
                0 => f32_of(self.dm[at + 2]),
                o => -(o as f32) * d,
            };
            let q = &self.qs[slot * code_len..(slot + 1) * code_len];
            for (j, v) in vals.iter_mut().enumerate() {
                *v = d * self.codes.code(q, j) as f32 + m;
            }
        }
    }

    /// out (m, rows) = x (m, cols) @ Wᵀ, over rayon's pool.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        matmul_group(&[self], x, m, &mut [out]);
    }

    /// Rows 2p and 2p + 1 of W, for each pair p of `pairs`, dotted with the n ≤ 4 quantized
    /// activation rows i0..i0 + n: `out[p - pairs.start][row 2p or 2p + 1][k]`, on `tier`'s
    /// kernel (all tiers give the same bits).
    fn pair_dots(
        &self,
        tier: Isa,
        pairs: std::ops::Range<usize>,
        (xq, i0, n): (&QuantRows, usize, usize),
        out: &mut [[[f32; 4]; 2]],
    ) {
        let nb = self.cols / BLOCK;
        let slots = 2 * nb * pairs.start..2 * nb * pairs.end;
        let w = WPair {
            qs: &self.qs[slots.start * self.codes.len()..slots.end * self.codes.len()],
            dm: &self.dm[2 * slots.start..2 * slots.end],
        };
        let x = XRows {
            qs: &xq.qs[i0 * self.cols..(i0 + n) * self.cols],
            d: &xq.d[i0 * nb..(i0 + n) * nb],
            s: &xq.s[i0 * nb..(i0 + n) * nb],
            st: &xq.st[i0..],
            st_stride: xq.st.len() / nb.max(1),
        };
        let out = &mut out[..pairs.len()];
        #[cfg(target_arch = "x86_64")]
        if tier >= Isa::Avx2 {
            let (c, o) = (self.codes, self.offset_code);
            // SAFETY: a tier only runs on a CPU that has its features (`Isa::current`, or
            // `Isa::available` in tests).
            unsafe {
                match (tier == Isa::Avx512, n) {
                    (true, 1) => avx512::pair_dots::<1>(c, o, w, x, out),
                    (true, 2) => avx512::pair_dots::<2>(c, o, w, x, out),
                    (true, 3) => avx512::pair_dots::<3>(c, o, w, x, out),
                    (true, _) => avx512::pair_dots::<4>(c, o, w, x, out),
                    (false, 1) => avx2::pair_dots::<1>(c, o, w, x, out),
                    (false, 2) => avx2::pair_dots::<2>(c, o, w, x, out),
                    (false, 3) => avx2::pair_dots::<3>(c, o, w, x, out),
                    (false, _) => avx2::pair_dots::<4>(c, o, w, x, out),
                }
            }
            return;
        }
        #[cfg(target_arch = "aarch64")]
        if tier == Isa::Neon {
            let (c, o) = (self.codes, self.offset_code);
            // SAFETY: the Neon tier runs only where the CPU has NEON (`Isa::available`).
            unsafe {
                match n {
                    1 => neon::pair_dots::<1>(c, o, w, x, out),
                    2 => neon::pair_dots::<2>(c, o, w, x, out),
                    3 => neon::pair_dots::<3>(c, o, w, x, out),
                    _ => neon::pair_dots::<4>(c, o, w, x, out),
                }
            }
            return;
        }
        let _ = tier;
        let len = out.len();
        for (j, o) in out.iter_mut().enumerate() {
            for (h, o) in o.iter_mut().enumerate() {
                for (k, o) in o[..n].iter_mut().enumerate() {
                    *o = self.dot_portable(w.pair(j, len), h, x, k);
                }
            }
        }
    }

    /// Row h of a pair against activation row k of x: the reference arithmetic, lane by lane.
    fn dot_portable(&self, w: WPair, h: usize, x: XRows, k: usize) -> f32 {
        let (nb, code_len) = (self.cols / BLOCK, self.codes.len());
        let xq = &x.qs[k * self.cols..(k + 1) * self.cols];
        let (xd, xs) = (&x.d[k * nb..(k + 1) * nb], &x.s[k * nb..(k + 1) * nb]);
        let mut acc = [0f32; 8];
        let mut summs = 0f32;
        for b in 0..nb {
            let slot = 2 * b + h;
            let q = &w.qs[slot * code_len..(slot + 1) * code_len];
            let xb = &xq[b * BLOCK..(b + 1) * BLOCK];
            let scale = f32_of(w.dm[4 * b + h]) * xd[b];
            for (l, acc) in acc.iter_mut().enumerate() {
                let lane: i32 = (4 * l..4 * l + 4)
                    .map(|j| (self.codes.code(q, j) as i32 - self.offset_code) * xb[j] as i32)
                    .sum();
                *acc = scale.mul_add(lane as f32, *acc);
            }
            if self.offset_code == 0 {
                summs = f32_of(w.dm[4 * b + 2 + h]).mul_add(xs[b], summs);
            }
        }
        crate::kernels::ggml::hsum8(&acc) + summs
    }
}

impl Codes {
    /// Bytes of codes per block.
    fn len(self) -> usize {
        match self {
            Codes::Nibbles => 16,
            Codes::Bytes => 32,
        }
    }

    /// Code j (0..32, in value order) of a block's codes.
    #[inline(always)]
    fn code(self, q: &[u8], j: usize) -> u8 {
        match self {
            Codes::Nibbles if j < 16 => q[j] & 0x0f,
            Codes::Nibbles => q[j - 16] >> 4,
            Codes::Bytes => q[j],
        }
    }
}

/// The f32 value of f16 bits.
#[inline(always)]
fn f32_of(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// A pair of weight rows (or consecutive pairs): codes per (pair, block, row of the pair),
/// f16 scales and offsets per (pair, block) as [d0, d1, m0, m1].
#[derive(Clone, Copy)]
struct WPair<'a> {
    qs: &'a [u8],
    dm: &'a [u16],
}

impl<'a> WPair<'a> {
    /// Pair j of `pairs` consecutive pairs.
    #[inline(always)]
    fn pair(self, j: usize, pairs: usize) -> WPair<'a> {
        let (dm, codes) = (self.dm.len() / pairs, self.qs.len() / pairs);
        WPair {
            qs: &self.qs[j * codes..(j + 1) * codes],
            dm: &self.dm[j * dm..(j + 1) * dm],
        }
    }

    /// Blocks per row (the x86 kernels' loop bound).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn blocks(self) -> usize {
        self.dm.len() / 4
    }
}

/// Up to 4 consecutive quantized activation rows.
#[derive(Clone, Copy)]
struct XRows<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    s: &'a [f32],
    /// `QuantRows::st` from the first of the rows, and its stride per block (read by the AVX2
    /// kernel only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    st: &'a [f32],
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    st_stride: usize,
}

/// outs[g] (m, mats[g].rows) = x (m, cols) @ mats[g]ᵀ for matrices that share their input (a
/// layer's query, key and value projections): the input is quantized once and all products run
/// in one parallel region. Output rows go in chunks: each chunk's weights are read once for all
/// m activation rows, a pair of rows at a time, each pair's blocks decoded once for up to 4
/// activation rows.
pub fn matmul_group(mats: &[&QuantMatrix], x: &[f32], m: usize, outs: &mut [&mut [f32]]) {
    assert_eq!(mats.len(), outs.len());
    let cols = mats.first().map_or(0, |w| w.cols);
    assert_eq!(x.len(), m * cols);
    for (w, out) in mats.iter().zip(outs.iter()) {
        assert!(w.cols == cols && out.len() == m * w.rows);
    }
    let xq = quantize_rows(x, cols);
    let tier = Isa::current();
    // Pairs of rows per task: up to CHUNK, and at least eight tasks a thread where the
    // matrices have the pairs, so that no thread waits long on another's last task.
    let pairs: usize = mats.iter().map(|w| w.rows.div_ceil(2)).sum();
    let chunk = (pairs / (8 * rayon::current_num_threads())).clamp(4, CHUNK);
    let tasks: Vec<(usize, usize)> = mats
        .iter()
        .enumerate()
        .flat_map(|(g, w)| (0..w.rows.div_ceil(2 * chunk)).map(move |t| (g, t * chunk)))
        .collect();
    let ptrs: Vec<SendPtr> = outs.iter_mut().map(|o| SendPtr(o.as_mut_ptr())).collect();
    tasks.into_par_iter().for_each(|(g, p0)| {
        let w = mats[g];
        let p1 = (p0 + chunk).min(w.rows.div_ceil(2));
        let mut vals = [[[0f32; 4]; 2]; CHUNK];
        for i0 in (0..m).step_by(4) {
            let n = 4.min(m - i0);
            w.pair_dots(tier, p0..p1, (&xq, i0, n), &mut vals);
            // Row by row of the output, so that the writes run along it: rows 2·p0..r1 of
            // output row i0 + k, written by this task only, inside outs[g].
            let r1 = (2 * p1).min(w.rows);
            for k in 0..n {
                // SAFETY: the range lies inside outs[g] (its length is m · w.rows, checked
                // above), and no other task writes it.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        ptrs[g].get().add((i0 + k) * w.rows + 2 * p0),
                        r1 - 2 * p0,
                    )
                };
                for (d, v) in dst.chunks_mut(2).zip(&vals) {
                    d[0] = v[0][k];
                    if let Some(d1) = d.get_mut(1) {
                        *d1 = v[1][k];
                    }
                }
            }
        }
    });
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint elements.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Quantizes each row of x (rows of `cols`) to 8 bits per block of 32, as llama.cpp's x86
/// `quantize_row_q8_1`: d = max|x| / 127, q = round-half-even(x · 127/max|x|), s = d·Σq; d and
/// s are stored as f16.
fn quantize_rows(x: &[f32], cols: usize) -> QuantRows {
    let nb = x.len() / BLOCK;
    let mut out = QuantRows {
        qs: vec![0; x.len()],
        d: Vec::with_capacity(nb),
        s: Vec::with_capacity(nb),
        st: Vec::new(),
    };
    debug_assert_eq!(cols % BLOCK, 0);
    for (blk, q) in x.chunks_exact(BLOCK).zip(out.qs.chunks_exact_mut(BLOCK)) {
        let (d, sum) = quantize_block(blk, q);
        out.d.push(f16::from_f32(d).to_f32());
        out.s.push(f16::from_f32(d * sum as f32).to_f32());
    }
    // The AVX2 kernel reads the by-block copy for three or more rows only: none for
    // decoding's one or two.
    let (per_row, m) = (cols / BLOCK, x.len() / cols.max(1));
    if m < 3 {
        return out;
    }
    let stride = m + 3;
    out.st = vec![0.0; per_row * stride];
    for (i, row) in out.s.chunks_exact(per_row.max(1)).enumerate() {
        for (b, &v) in row.iter().enumerate() {
            out.st[b * stride + i] = v;
        }
    }
    out
}

crate::kernels::simd::simd_fn! {
    /// One block of 32 activations to 8-bit codes: returns (d, Σ codes).
    fn quantize_block(blk: &[f32], q: &mut [i8]) -> (f32, i32) {
        let amax = blk.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in q.iter_mut().zip(blk) {
            *q = (v * id).round_ties_even() as i8;
            sum += *q as i32;
        }
        (d, sum)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    use crate::testutil::fill;

    /// A random (rows, cols) weight, its quantized forms and (m, cols) activations.
    fn setup() -> (Tensor, Vec<f32>, usize, usize, usize) {
        let (rows, cols, m) = (41, 160, 6);
        let w = Tensor::from_vec(fill(rows * cols, 1), (rows, cols), &Device::Cpu).unwrap();
        (w, fill(m * cols, 2), rows, cols, m)
    }

    /// Each format against the dequantized matrix times the exact activations: the only error is
    /// the 8-bit activation rounding. Runs the tier of this process (`DECODEX_ISA`).
    #[test]
    fn quantized_matmul_matches_dequantized() {
        let (w, x, rows, cols, m) = setup();
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let deq = q
                .dequantize(&Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let qm = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
            let mut row = vec![0f32; cols];
            for (r, want) in deq.iter().enumerate() {
                qm.dequantize_row(r, &mut row);
                assert!(
                    row.iter()
                        .zip(want)
                        .all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1.0)),
                    "{dtype:?} row {r}"
                );
            }
            let mut out = vec![0f32; m * rows];
            qm.matmul(&x, m, &mut out);
            for i in 0..m {
                for r in 0..rows {
                    let got = out[i * rows + r];
                    // Within 1% of Σ|w·x|: the 8-bit activation codes err by up to 1/254.
                    let terms = (0..cols).map(|c| deq[r][c] * x[i * cols + c]);
                    let (exact, scale) = terms.fold((0f32, 0f32), |(e, s), t| (e + t, s + t.abs()));
                    assert!(
                        (got - exact).abs() < 0.01 * scale,
                        "{dtype:?} ({i},{r}): {got} vs {exact} (scale {scale})"
                    );
                }
            }
        }
    }

    /// Every tier this CPU has equal, bit for bit, to the portable one, which spells out
    /// llama.cpp's order of operations, for every row count a kernel call takes (1 to 4).
    #[test]
    fn every_tier_equals_the_portable_path_bit_for_bit() {
        let (w, x, rows, cols, m) = setup();
        let mut cells = 0;
        for dtype in [GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let qm = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
            let xq = quantize_rows(&x, cols);
            for tier in Isa::available() {
                for n in 1..=4 {
                    for i0 in 0..=m - n {
                        let pairs = rows.div_ceil(2);
                        let (mut got, mut want) =
                            (vec![[[0f32; 4]; 2]; pairs], vec![[[0f32; 4]; 2]; pairs]);
                        qm.pair_dots(tier, 0..pairs, (&xq, i0, n), &mut got);
                        // The portable path one pair at a time.
                        for p in 0..pairs {
                            qm.pair_dots(Isa::Portable, p..p + 1, (&xq, i0, n), &mut want[p..]);
                        }
                        for (p, (got, want)) in got.iter().zip(&want).enumerate() {
                            for (h, k) in (0..2).flat_map(|h| (0..n).map(move |k| (h, k))) {
                                let (g, w) = (got[h][k].to_bits(), want[h][k].to_bits());
                                assert_eq!(
                                    g,
                                    w,
                                    "{dtype:?} {tier:?} n={n} row {} x {}",
                                    2 * p + h,
                                    i0 + k
                                );
                                cells += 1;
                            }
                        }
                    }
                }
            }
        }
        println!(
            "{cells} products of tiers {:?} equal the portable path",
            Isa::available()
        );
    }

    /// Activation codes as llama.cpp's `quantize_row_q8_1`: 127/max scaling, ties to even.
    #[test]
    fn activations_round_half_to_even() {
        let mut x = vec![0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -3.5;
        x[3] = 0.5;
        let q = quantize_rows(&x, 32);
        assert_eq!(&q.qs[..4], &[127, 2, -4, 0]);
        assert_eq!(q.d[0], 1.0);
        assert_eq!(q.s[0], 125.0);
    }
}
