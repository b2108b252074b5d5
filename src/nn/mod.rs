//! Layers shared by every model. All of them are built from candle's differentiable primitives:
//! candle-nn's fused `softmax_last_dim`, `layer_norm`, `rms_norm` and `rope` kernels have no
//! backward, so a training graph that used them would silently cut gradients.

pub mod attention;
pub mod fused;
pub mod layers;
pub mod linear;
pub mod loss;
pub mod params;
pub mod tensor_io;

pub use attention::{attention, causal_mask, KvCache};
pub use layers::{cross_entropy, dropout, gelu, Conv1D, LayerNorm};
