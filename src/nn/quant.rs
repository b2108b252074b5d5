//! Matrix-vector products with GGUF's 4- and 8-bit block quantizations (Q4_0, Q4_1, Q8_0), the
//! way llama.cpp computes them: activations are quantized to 8 bits per 32-value block, and
//! each block product is an integer dot product scaled in f32.
//!
//! Every format is held as affine 8-bit codes per block of 32: weight = d·u + m, with u in
//! 0..=15 for Q4_0 (m = −8d) and Q4_1, and u = q + 128 in 0..=255 for Q8_0 (m = −128d). With
//! activations x = dx·q (q signed 8-bit) and s = dx·Σq, a block contributes
//! d·dx·Σ u·q + m·s. AVX512-VNNI's `vpdpbusd` multiplies unsigned by signed bytes, which is
//! exactly Σ u·q. Q4 codes stay packed two per byte (llama.cpp's order: the low nibbles are
//! values 0..15 of the block, the high nibbles 16..31), so decoding reads as many weight bytes
//! per token as llama.cpp does.

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;

/// Values per quantization block.
pub const BLOCK: usize = 32;

/// How the codes of a row are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codes {
    /// Two 4-bit codes per byte, 16 bytes per block.
    Nibbles,
    /// One 8-bit code per byte, 32 bytes per block.
    Bytes,
}

/// A (rows, cols) weight matrix in affine block form, applied as x @ Wᵀ.
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    pub rows: usize,
    pub cols: usize,
    codes: Codes,
    /// Row-major codes: rows × blocks × (16 or 32) bytes.
    qs: Vec<u8>,
    /// Per (row, block) scale and offset.
    d: Vec<f32>,
    m: Vec<f32>,
    /// Whether the offset is a fixed code (Q4_0's 8, Q8_0's 128), which llama.cpp folds into
    /// exact integer sums: the offset term then uses the activations' exact scale·Σcodes. For
    /// Q4_1's stored offsets it uses the f16-rounded one, as llama.cpp's `block_q8_1` holds it.
    exact_offset: bool,
}

/// Activations quantized like llama.cpp's `block_q8_1`: per block, codes, scale and scale·Σcodes
/// (both rounded through f16, as llama.cpp stores them), and scale·Σcodes unrounded.
struct QuantRows {
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    s_exact: Vec<f32>,
    /// Each block's scale 8 times over, so that two consecutive blocks load as one 16-lane
    /// vector matching `vpdpbusd`'s 16 sums (8 per block).
    d8: Vec<f32>,
}

impl QuantMatrix {
    /// The matrix of a GGUF tensor (out, in) stored as Q4_0, Q4_1 or Q8_0 with `in` a multiple
    /// of 32; `None` for other formats.
    pub fn from_qtensor(q: &QTensor) -> candle_core::Result<Option<Self>> {
        let (rows, cols) = q.shape().dims2()?;
        if !cols.is_multiple_of(BLOCK) {
            return Ok(None);
        }
        let (bytes_per_block, codes) = match q.dtype() {
            GgmlDType::Q4_0 => (18, Codes::Nibbles),
            GgmlDType::Q4_1 => (20, Codes::Nibbles),
            GgmlDType::Q8_0 => (34, Codes::Bytes),
            _ => return Ok(None),
        };
        let data = q.data()?;
        let nb = rows * cols / BLOCK;
        if data.len() != nb * bytes_per_block {
            candle_core::bail!(
                "{:?} tensor holds {} bytes, expected {}",
                q.dtype(),
                data.len(),
                nb * bytes_per_block
            );
        }
        let code_len = if codes == Codes::Nibbles { 16 } else { 32 };
        let mut out = QuantMatrix {
            rows,
            cols,
            codes,
            qs: Vec::with_capacity(nb * code_len),
            d: Vec::with_capacity(nb),
            m: Vec::with_capacity(nb),
            exact_offset: q.dtype() != GgmlDType::Q4_1,
        };
        let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
        for blk in data.chunks_exact(bytes_per_block) {
            let d = half(blk);
            match q.dtype() {
                GgmlDType::Q4_0 => {
                    out.d.push(d);
                    out.m.push(-8.0 * d);
                    out.qs.extend_from_slice(&blk[2..18]);
                }
                GgmlDType::Q4_1 => {
                    out.d.push(d);
                    out.m.push(half(&blk[2..4]));
                    out.qs.extend_from_slice(&blk[4..20]);
                }
                _ => {
                    out.d.push(d);
                    out.m.push(-128.0 * d);
                    out.qs.extend(blk[2..34].iter().map(|&b| b ^ 0x80));
                }
            }
        }
        Ok(Some(out))
    }

    /// Row r of the matrix as f32 (an embedding lookup): d·u + m per block.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let nb = self.cols / BLOCK;
        let code_len = if self.codes == Codes::Nibbles { 16 } else { 32 };
        let qs = &self.qs[r * nb * code_len..(r + 1) * nb * code_len];
        for (b, vals) in out.chunks_exact_mut(BLOCK).enumerate() {
            let (d, m) = (self.d[r * nb + b], self.m[r * nb + b]);
            let q = &qs[b * code_len..(b + 1) * code_len];
            for (j, v) in vals.iter_mut().enumerate() {
                let u = match self.codes {
                    Codes::Nibbles if j < 16 => q[j] & 0x0f,
                    Codes::Nibbles => q[j - 16] >> 4,
                    Codes::Bytes => q[j],
                };
                *v = d * u as f32 + m;
            }
        }
    }

    /// out (m, rows) = x (m, cols) @ Wᵀ, over rayon's pool.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        matmul_group(&[self], x, m, &mut [out]);
    }

    /// Row r of W dotted with the n ≤ 4 quantized activation rows i0..i0 + n.
    fn row_dots(&self, r: usize, xq: &QuantRows, i0: usize, n: usize) -> [f32; 4] {
        let nb = self.cols / BLOCK;
        let code_len = if self.codes == Codes::Nibbles { 16 } else { 32 };
        let qs = &self.qs[r * nb * code_len..(r + 1) * nb * code_len];
        let (d, m) = (&self.d[r * nb..(r + 1) * nb], &self.m[r * nb..(r + 1) * nb]);
        let x = XRows {
            qs: &xq.qs[i0 * self.cols..(i0 + n) * self.cols],
            d: &xq.d[i0 * nb..(i0 + n) * nb],
            s: match self.exact_offset {
                true => &xq.s_exact[i0 * nb..(i0 + n) * nb],
                false => &xq.s[i0 * nb..(i0 + n) * nb],
            },
            d8: &xq.d8[i0 * nb * 8..(i0 + n) * nb * 8],
            n,
        };
        #[cfg(target_arch = "x86_64")]
        if vnni() {
            // SAFETY: the CPU has the features the kernel is compiled for.
            return unsafe { x86::dots(self.codes == Codes::Nibbles, qs, d, m, x) };
        }
        let mut out = [0f32; 4];
        for (k, o) in out[..n].iter_mut().enumerate() {
            let (c, b) = (self.cols, nb);
            *o = dot_scalar(
                self.codes,
                qs,
                d,
                m,
                &x.qs[k * c..(k + 1) * c],
                &x.d[k * b..(k + 1) * b],
                &x.s[k * b..(k + 1) * b],
            );
        }
        out
    }
}

/// Up to 4 consecutive quantized activation rows.
#[derive(Clone, Copy)]
struct XRows<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    s: &'a [f32],
    d8: &'a [f32],
    n: usize,
}

/// outs[g] (m, mats[g].rows) = x (m, cols) @ mats[g]ᵀ for matrices that share their input (a
/// layer's query, key and value projections): the input is quantized once and all products run
/// in one parallel region. Output rows go in chunks: each chunk's weights are read once for all
/// m activation rows, and each weight block is decoded once for up to 4 of them.
pub fn matmul_group(mats: &[&QuantMatrix], x: &[f32], m: usize, outs: &mut [&mut [f32]]) {
    assert_eq!(mats.len(), outs.len());
    let cols = mats.first().map_or(0, |w| w.cols);
    assert_eq!(x.len(), m * cols);
    for (w, out) in mats.iter().zip(outs.iter()) {
        assert!(w.cols == cols && out.len() == m * w.rows);
    }
    let xq = quantize_rows(x, cols);
    let chunk = 64;
    let tasks: Vec<(usize, usize)> = mats
        .iter()
        .enumerate()
        .flat_map(|(g, w)| (0..w.rows.div_ceil(chunk)).map(move |t| (g, t * chunk)))
        .collect();
    let ptrs: Vec<SendPtr> = outs.iter_mut().map(|o| SendPtr(o.as_mut_ptr())).collect();
    tasks.into_par_iter().for_each(|(g, r0)| {
        let w = mats[g];
        let r1 = (r0 + chunk).min(w.rows);
        for i0 in (0..m).step_by(4) {
            let n = 4.min(m - i0);
            for r in r0..r1 {
                let v = w.row_dots(r, &xq, i0, n);
                for (k, &v) in v[..n].iter().enumerate() {
                    // SAFETY: (g, i0 + k, r) is written by this task only, inside outs[g].
                    unsafe { *ptrs[g].get().add((i0 + k) * w.rows + r) = v };
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

#[cfg(target_arch = "x86_64")]
fn vnni() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// Quantizes each row of x (rows of `cols`) to 8 bits per block of 32, as llama.cpp's
/// `quantize_row_q8_1` : d = max|x| / 127, q = round(x / d), s = d·Σq.
fn quantize_rows(x: &[f32], cols: usize) -> QuantRows {
    let nb = x.len() / BLOCK;
    let mut out = QuantRows {
        qs: vec![0; x.len()],
        d: Vec::with_capacity(nb),
        s: Vec::with_capacity(nb),
        s_exact: Vec::with_capacity(nb),
        d8: Vec::with_capacity(nb * 8),
    };
    debug_assert_eq!(cols % BLOCK, 0);
    for (blk, q) in x.chunks_exact(BLOCK).zip(out.qs.chunks_exact_mut(BLOCK)) {
        let (d, sum) = quantize_block(blk, q);
        let d16 = f16::from_f32(d).to_f32();
        out.d.push(d16);
        out.d8.extend([d16; 8]);
        out.s.push(f16::from_f32(d * sum as f32).to_f32());
        out.s_exact.push(d16 * sum as f32);
    }
    out
}

crate::train::fast::simd::simd_fn! {
    /// One block of 32 activations to 8-bit codes: returns (d, Σ codes).
    fn quantize_block(blk: &[f32], q: &mut [i8]) -> (f32, i32) {
        let amax = blk.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in q.iter_mut().zip(blk) {
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
        (d, sum)
    }
}

/// The reference block dot product (and the path on CPUs without AVX512-VNNI).
fn dot_scalar(
    codes: Codes,
    qs: &[u8],
    d: &[f32],
    m: &[f32],
    xq: &[i8],
    xd: &[f32],
    xs: &[f32],
) -> f32 {
    let mut acc = 0f32;
    for b in 0..d.len() {
        let x = &xq[b * BLOCK..(b + 1) * BLOCK];
        let mut isum = 0i32;
        match codes {
            Codes::Nibbles => {
                let q = &qs[b * 16..(b + 1) * 16];
                for j in 0..16 {
                    isum += (q[j] & 0x0f) as i32 * x[j] as i32;
                    isum += (q[j] >> 4) as i32 * x[j + 16] as i32;
                }
            }
            Codes::Bytes => {
                let q = &qs[b * 32..(b + 1) * 32];
                for j in 0..32 {
                    isum += q[j] as i32 * x[j] as i32;
                }
            }
        }
        acc += d[b] * xd[b] * isum as f32 + m[b] * xs[b];
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::BLOCK;

    /// For each activation row k < x.n: Σ over blocks of d·dx·Σu·q + m·s, two blocks per
    /// 512-bit step; each pair of weight blocks is decoded once for all rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn dots(
        nibbles: bool,
        qs: &[u8],
        d: &[f32],
        m: &[f32],
        x: super::XRows,
    ) -> [f32; 4] {
        let nb = d.len();
        let cols = nb * BLOCK;
        let mut acc = [_mm512_setzero_ps(); 4];
        let mask = _mm256_set1_epi8(0x0f);
        let mut b = 0;
        while b + 2 <= nb {
            let u = if nibbles {
                // [codes b | codes b+1] -> low and high nibbles -> the 64 codes in value order
                // [0..16 of b, 16..32 of b, 0..16 of b+1, 16..32 of b+1].
                let raw = _mm256_loadu_si256(qs.as_ptr().add(b * 16).cast());
                let lo = _mm256_and_si256(raw, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), mask);
                let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                _mm512_shuffle_i64x2::<0xd8>(z, z)
            } else {
                _mm512_loadu_si512(qs.as_ptr().add(b * BLOCK).cast())
            };
            // The weight scales of the two blocks, shared by the rows.
            let ws = _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(d[b]), _mm512_set1_ps(d[b + 1]));
            for (k, acc) in acc.iter_mut().enumerate().take(x.n) {
                let xv = _mm512_loadu_si512(x.qs.as_ptr().add(k * cols + b * BLOCK).cast());
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, xv);
                let scale = _mm512_mul_ps(ws, _mm512_loadu_ps(x.d8.as_ptr().add((k * nb + b) * 8)));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, *acc);
            }
            b += 2;
        }
        let codes = if nibbles {
            super::Codes::Nibbles
        } else {
            super::Codes::Bytes
        };
        let code_len = if nibbles { 16 } else { BLOCK };
        let mut out = [0f32; 4];
        for k in 0..x.n {
            let mut sum = _mm512_reduce_add_ps(acc[k]);
            if b < nb {
                sum += super::dot_scalar(
                    codes,
                    &qs[b * code_len..],
                    &d[b..],
                    &[0.0],
                    &x.qs[k * cols + b * BLOCK..(k + 1) * cols],
                    &x.d[k * nb + b..(k + 1) * nb],
                    &[0.0],
                );
            }
            out[k] = sum + offsets(m, &x.s[k * nb..(k + 1) * nb]);
        }
        out
    }

    /// Σ m·s, sixteen blocks at a time.
    #[target_feature(enable = "avx512f")]
    unsafe fn offsets(m: &[f32], s: &[f32]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        let n = m.len();
        let mut i = 0;
        while i + 16 <= n {
            acc = _mm512_fmadd_ps(
                _mm512_loadu_ps(m.as_ptr().add(i)),
                _mm512_loadu_ps(s.as_ptr().add(i)),
                acc,
            );
            i += 16;
        }
        let mut sum = _mm512_reduce_add_ps(acc);
        for j in i..n {
            sum += m[j] * s[j];
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    use crate::testutil::fill;

    /// Each format against the dequantized matrix times the exact activations: the only error
    /// is the 8-bit activation rounding (well under 1% of the output scale), and the SIMD path
    /// equals the scalar reference.
    #[test]
    fn quantized_matmul_matches_dequantized() {
        let (rows, cols, m) = (40, 160, 3);
        let w = Tensor::from_vec(fill(rows * cols, 1), (rows, cols), &Device::Cpu).unwrap();
        let x = fill(m * cols, 2);
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
            let xq = quantize_rows(&x, cols);
            let nb = cols / BLOCK;
            for i in 0..m {
                for r in 0..rows {
                    let exact: f32 = (0..cols).map(|c| deq[r][c] * x[i * cols + c]).sum();
                    let got = out[i * rows + r];
                    assert!(
                        (got - exact).abs() < 0.05,
                        "{dtype:?} ({i},{r}): {got} vs {exact}"
                    );
                    let code_len = if qm.codes == Codes::Nibbles { 16 } else { 32 };
                    let reference = dot_scalar(
                        qm.codes,
                        &qm.qs[r * nb * code_len..(r + 1) * nb * code_len],
                        &qm.d[r * nb..(r + 1) * nb],
                        &qm.m[r * nb..(r + 1) * nb],
                        &xq.qs[i * cols..(i + 1) * cols],
                        &xq.d[i * nb..(i + 1) * nb],
                        if qm.exact_offset {
                            &xq.s_exact[i * nb..(i + 1) * nb]
                        } else {
                            &xq.s[i * nb..(i + 1) * nb]
                        },
                    );
                    assert!(
                        (got - reference).abs() <= 1e-4 * reference.abs().max(1.0),
                        "{dtype:?}: {got} vs {reference}"
                    );
                }
            }
        }
    }
}
