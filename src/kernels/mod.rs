//! Flat math at the bottom of the crate: each kernel a function over row-major f32 buffers (rows
//! are the N = B·T token positions), forward beside backward, knowing no model. Row-wise kernels
//! split rows across rayon's pool; reductions over rows (bias and norm parameter gradients) split
//! columns instead, so that no thread-local partial sums, and no allocation, are needed.
//!
//! - `simd`: scalar math written so LLVM vectorizes it, and `simd_fn!`, the runtime ISA choice;
//! - `matmul` (f32 through `sgemm` on the AVX2 tier and the `gemm` crate elsewhere, or bf16
//!   through `bf16`), `embed`, `norm` (LayerNorm, RMSNorm),
//!   `act` (GELU, SwiGLU), `attention` (FlashAttention-style, causal), `kv_attention` (over a
//!   key/value cache, in f32 or llama.cpp's numerics with and without flash attention), `loss`
//!   (cross-entropy);
//! - llama.cpp-exact numerics as named variants: `ggml` (its RMSNorm, RoPE, f16 dots, expf) and
//!   `quant` (GGUF Q4_0/Q4_1/Q8_0 matrix-vector products).

pub mod act;
pub mod attention;
pub mod bf16;
pub mod embed;
pub mod ggml;
pub mod isa;
pub mod kv_attention;
pub mod loss;
pub mod matmul;
pub mod norm;
pub mod quant;
mod sgemm;
pub mod simd;
#[cfg(test)]
mod tests;

pub use act::{bias_gelu_forward, swiglu_backward, swiglu_forward};
pub use attention::{attention_backward, attention_forward, packed_attention};
pub use attention::{AttShape, ATT_TILE};
pub use embed::{encoder_backward, encoder_forward, rope_tables, RopeAngles};
pub use isa::Isa;
pub use kv_attention::{kv_attention, KvNumerics, KvPages, KvShape, KvValue, KV_PAGE};
pub use loss::{cross_entropy_backward, cross_entropy_forward};
pub use matmul::{col_sum, linear_backward, matmul, matmul_with, mul_assign, Op};
pub use norm::{layernorm_backward, layernorm_forward, rmsnorm_backward, rmsnorm_forward};
pub use norm::{Norm, NormIn, NormOut, Skip};

use crate::error::{Error, Result};

/// Elements one rayon task should at least cover, so that scheduling stays a small cost.
pub(crate) const TASK_ELEMS: usize = 8192;

/// Rows per rayon task for rows of `row_len` elements.
pub(crate) fn rows_per_task(row_len: usize) -> usize {
    (TASK_ELEMS / row_len.max(1)).max(1)
}

/// Width of the column strip each task owns in a column reduction: the columns split evenly
/// over the threads, in multiples of 16 floats (one 64-byte cache line) to avoid false sharing.
pub(crate) fn col_strip(cols: usize) -> usize {
    let per_thread = cols.div_ceil(rayon::current_num_threads().max(1));
    per_thread.div_ceil(16).max(1) * 16
}

/// A raw pointer shared by rayon tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
// SAFETY: used only where every task writes a part of the buffer no other task touches.
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    /// A method (not field access) so that closures capture the whole `Sync` wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}

#[inline(always)]
fn add_assign(dst: &mut [f32], src: &[f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// The arithmetic of the matmuls. Everything else (LayerNorm, softmax, GELU, cross-entropy,
/// reductions, the optimizer) is f32 either way, and the parameters stay f32 (the master
/// weights).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Precision {
    /// f32 inputs, f32 products and sums.
    #[default]
    #[serde(rename = "fp32")]
    F32,
    /// Inputs rounded to bf16 (nearest even), products summed in f32, like PyTorch's CPU
    /// autocast to bfloat16. Fast with AVX512-BF16; other CPUs compute the same bits in a
    /// software emulation, far slower than f32, which the trainer refuses (`check_supported`).
    #[serde(rename = "bf16")]
    Bf16,
}

impl Precision {
    /// The config spelling: "fp32" or "bf16".
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Whether this CPU runs `Bf16` matmuls on AVX512-BF16 (rather than in the software emulation).
    pub fn bf16_supported() -> bool {
        bf16::available()
    }

    /// Refuses a precision this CPU runs only in emulation (bf16 without AVX512-BF16), naming
    /// the way out, so that a config never trains 10-100x slower than it should.
    pub fn check_supported(self) -> Result<()> {
        if self == Precision::Bf16 && !Self::bf16_supported() {
            return Err(Error::Invalid(
                "precision = \"bf16\" needs a CPU with AVX512-BF16, which this one lacks (decodex \
                 only emulates bf16 on it, for tests); set precision = \"fp32\""
                    .into(),
            ));
        }
        Ok(())
    }
}
