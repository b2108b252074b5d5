//! Linear (GPT-2 `Conv1D` layout), LayerNorm, GELU, dropout and cross-entropy, written with
//! differentiable candle ops only.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use rand::Rng;

/// A linear layer with GPT-2's `Conv1D` weight layout: weight (in, out), y = x @ W + b.
/// Keeping the checkpoint layout means Hugging Face GPT-2 weights load without a transpose.
#[derive(Debug, Clone)]
pub struct Conv1D {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Conv1D {
    pub fn new(vb: VarBuilder, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((d_in, d_out), "weight")?;
        let bias = if bias {
            Some(vb.get(d_out, "bias")?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }
}

impl Module for Conv1D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // (B, T, in) -> (B*T, in) @ (in, out) -> (B, T, out)
        let dims = x.dims().to_vec();
        let d_in = *dims.last().expect("Conv1D input has at least one dim");
        let rows = x.elem_count() / d_in;
        let y = x.reshape((rows, d_in))?.matmul(&self.weight)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = self.weight.dim(1)?;
        y.reshape(out_dims)
    }
}

/// LayerNorm over the last dimension with a biased variance (as PyTorch), decomposed into
/// differentiable ops.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(vb: VarBuilder, dim: usize, bias: bool, eps: f64) -> Result<Self> {
        let weight = vb.get(dim, "weight")?;
        let bias = if bias {
            Some(vb.get(dim, "bias")?)
        } else {
            None
        };
        Ok(Self { weight, bias, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let y = xn.broadcast_mul(&self.weight)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// GELU: the exact erf form, or else the tanh approximation (GPT-2's `gelu_new`).
pub fn gelu(x: &Tensor, exact: bool) -> Result<Tensor> {
    if exact {
        x.gelu_erf()
    } else {
        x.gelu()
    }
}

/// Inverted dropout with a mask drawn from the caller's seeded RNG, so runs are reproducible.
pub fn dropout(x: &Tensor, p: f32, rng: &mut impl Rng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let scale = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.gen::<f32>() < p { 0.0 } else { scale })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.mul(&mask)
}

/// Mean softmax cross-entropy: logits (N, V), targets (N,) u32. Differentiable (log-sum-exp with
/// the row max subtracted, then a gather), computed in f32, or in f64 for f64 logits.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = match logits.dtype() {
        DType::F64 => logits.clone(),
        _ => logits.to_dtype(DType::F32)?,
    };
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    let picked = logp.gather(&targets.unsqueeze(1)?, 1)?;
    picked.mean_all()?.neg()
}
