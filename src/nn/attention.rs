//! Scaled dot-product attention (multi-head, grouped-query, masked) and the key/value cache.

use candle_core::{Device, Result, Tensor, D};
use rand_chacha::ChaCha8Rng;

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

/// An additive mask (T_q, T_k) for T_q queries at the last T_q of T_k positions: 0 where query
/// i may attend to key j, `masked` (−∞, or a large negative) for later keys.
pub fn causal_mask(t_q: usize, t_k: usize, masked: f32, device: &Device) -> Result<Tensor> {
    let offset = t_k - t_q;
    let mask: Vec<f32> = (0..t_q)
        .flat_map(|i| (0..t_k).map(move |j| if j > i + offset { masked } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (t_q, t_k), device)
}

/// softmax(q kᵀ/√d + mask) v, the attention of every candle model: q (B, nh, T_q, d), k and v
/// (B, nkv, T_k, d) with nh a multiple of nkv (grouped-query attention: each key/value head
/// serves nh/nkv query heads, folded into the query axis so that keys are never copied); `mask`
/// additive, (T_q, T_k). Returns (B, nh, T_q, d). Softmax is the decomposed, differentiable
/// `candle_nn::ops::softmax`, never the fused kernel, which has no backward. `attn_dropout` drops
/// attention weights during training, as nanoGPT does.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    attn_dropout: Option<(f32, &mut ChaCha8Rng)>,
) -> Result<Tensor> {
    let (b, nh, t_q, d) = q.dims4()?;
    let (nkv, t_k) = (k.dim(1)?, k.dim(2)?);
    let group = nh / nkv;
    let q = q.reshape((b, nkv, group * t_q, d))?;
    // (B, nkv, group·T_q, d) @ (B, nkv, d, T_k) -> (B, nkv, group·T_q, T_k)
    let mut att = (q.matmul(&k.t()?)? * (1.0 / (d as f64).sqrt()))?;
    if let Some(mask) = mask {
        // (T_q, T_k) repeated over the group: rows are (head in group, query).
        let m = mask
            .to_dtype(att.dtype())?
            .unsqueeze(0)?
            .broadcast_as((group, t_q, t_k))?
            .reshape((group * t_q, t_k))?;
        att = att.broadcast_add(&m)?;
    }
    let mut att = candle_nn::ops::softmax(&att, D::Minus1)?;
    if let Some((p, rng)) = attn_dropout {
        att = super::layers::dropout(&att, p, rng)?;
    }
    att.matmul(&v.contiguous()?)?.reshape((b, nh, t_q, d))
}
