//! Layers shared by every model. All of them are built from candle's differentiable primitives:
//! candle-nn's fused `softmax_last_dim`, `layer_norm`, `rms_norm` and `rope` kernels have no
//! backward, so a training graph that used them would silently cut gradients.

pub mod attention;
pub mod fused;
/// Inference only: llama.cpp's CPU arithmetic, op for op, for the quantized Llama path.
pub mod ggml;
pub mod layers;
pub mod linear;
pub mod loss;
pub mod params;
/// Inference only: GGUF block-quantized matrix products.
pub mod quant;

pub use attention::{causal_self_attention, KvCache};
pub use layers::{cross_entropy, dropout, gelu, Conv1D, LayerNorm};
