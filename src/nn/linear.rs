//! Pieces shared by the models built on [`Params`]: a linear layer in PyTorch's (out, in)
//! layout, and dropout drawn from the training run's seeded RNG.

use std::cell::RefCell;

use candle_core::Tensor;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::nn::layers::dropout;
use crate::nn::params::{Init, Params};

/// Dropout's random source during training; `None` at evaluation (no dropout).
pub type Dropout<'a> = Option<&'a RefCell<ChaCha8Rng>>;

/// Inverted dropout with probability `p` when training, the identity otherwise.
pub fn maybe_dropout(x: &Tensor, p: f32, rng: Dropout) -> Result<Tensor> {
    match rng {
        Some(r) if p > 0.0 => Ok(dropout(x, p, &mut *r.borrow_mut())?),
        _ => Ok(x.clone()),
    }
}

/// y = x Wᵀ (+ b) over the last dimension; W (out, in) Xavier-initialized, b zeros.
#[derive(Debug, Clone)]
pub struct Linear {
    pub w: Tensor,
    pub b: Option<Tensor>,
}

impl Linear {
    /// `{name}.weight` and, with `bias`, `{name}.bias`.
    pub fn new(p: &mut Params, name: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        Ok(Linear {
            w: p.get(&format!("{name}.weight"), &[d_out, d_in], Init::Xavier)?,
            b: match bias {
                true => Some(p.get(&format!("{name}.bias"), &[d_out], Init::Zeros)?),
                false => None,
            },
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let y = x
            .reshape(((), dims[dims.len() - 1]))?
            .matmul(&self.w.t()?)?;
        let y = match &self.b {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        *out.last_mut().expect("a tensor has a last dimension") = self.w.dim(0)?;
        Ok(y.reshape(out)?)
    }
}
