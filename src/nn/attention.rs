//! Scaled dot-product causal multi-head attention with an optional key/value cache.

use candle_core::{Device, Result, Tensor, D};
use rand::Rng;

/// Per-layer key/value cache for incremental decoding: k and v of shape (B, nh, T_past, hs).
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(n_layer: usize) -> Self {
        Self {
            layers: vec![None; n_layer],
        }
    }

    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dim(2).unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
    }
}

/// An additive mask (T_q, T_k): 0 where query i (at absolute position offset + i) may attend to
/// key j, -inf for future keys.
fn causal_mask(t_q: usize, t_k: usize, device: &Device) -> Result<Tensor> {
    let offset = t_k - t_q;
    let mask: Vec<f32> = (0..t_q)
        .flat_map(|i| {
            (0..t_k).map(move |j| {
                if j > i + offset {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (t_q, t_k), device)
}

/// q: (B, nh, T_q, hs), k, v: (B, nh, T_k, hs) with T_k >= T_q (the last T_q keys are the
/// queries' own positions). Returns (B, nh, T_q, hs). Softmax is the decomposed, differentiable
/// `candle_nn::ops::softmax`, never the fused kernel.
/// `attn_dropout` drops attention weights during training, as nanoGPT does.
pub fn causal_self_attention<R: Rng>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attn_dropout: Option<(f32, &mut R)>,
) -> Result<Tensor> {
    let hs = q.dim(D::Minus1)?;
    let (t_q, t_k) = (q.dim(2)?, k.dim(2)?);
    // (B, nh, T_q, hs) @ (B, nh, hs, T_k) -> (B, nh, T_q, T_k)
    let att = (q.matmul(&k.t()?)? / (hs as f64).sqrt())?;
    let att = if t_q > 1 || t_k > 1 {
        att.broadcast_add(&causal_mask(t_q, t_k, q.device())?.to_dtype(q.dtype())?)?
    } else {
        att
    };
    let mut att = candle_nn::ops::softmax(&att, D::Minus1)?;
    if let Some((p, rng)) = attn_dropout {
        att = super::layers::dropout(&att, p, rng)?;
    }
    // (B, nh, T_q, T_k) @ (B, nh, T_k, hs) -> (B, nh, T_q, hs)
    att.matmul(&v.contiguous()?)
}
