//! The two ways decodex computes a training step's gradients, behind one small trait:
//! `FastBackend`, the hand-written CPU forward/backward of `models::gpt::fast` (the default on CPU), and
//! `CandleBackend`, candle's autograd over the model of `models::gpt` (dropout, other devices, and
//! the reference the fast path is checked against).

use candle_core::{Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::models::gpt::fast::FastGpt;
use crate::models::gpt::GptConfig;
use crate::models::Gpt;
use crate::nn::params::{add_var_grads, set_vars};

pub trait Backend {
    /// Forward and backward on one (B, T) micro-batch; gradients of `scale * loss` are added to
    /// the gradient buffer. Returns the (unscaled) mean loss.
    fn forward_backward(
        &mut self,
        x: &[u32],
        y: &[u32],
        b: usize,
        t: usize,
        scale: f32,
    ) -> Result<f32>;
    /// Mean loss without gradients (no dropout).
    fn eval_loss(&mut self, x: &[u32], y: &[u32], b: usize, t: usize) -> Result<f32>;
    fn zero_grad(&mut self);
    /// The flat parameters and gradients (in `GptConfig::param_shapes()` order).
    fn params_and_grads(&mut self) -> (&mut [f32], &mut [f32]);
    fn params(&self) -> &[f32];
    /// Called after the optimizer changed the parameters.
    fn params_updated(&mut self) -> Result<()>;
    /// RNG state of dropout, for checkpoints: (seed, word position).
    fn rng_state(&self) -> (u64, u128) {
        (0, 0)
    }
    fn set_rng_state(&mut self, _seed: u64, _pos: u128) {}
    fn name(&self) -> &'static str;
}

/// The fast CPU path.
pub struct FastBackend {
    pub model: FastGpt,
}

impl FastBackend {
    pub fn new(cfg: &GptConfig, params: &[f32], batch: usize) -> Result<Self> {
        let mut model = FastGpt::new(cfg.clone(), batch, cfg.block_size)?;
        model.params.data.copy_from_slice(params);
        Ok(Self { model })
    }
}

impl Backend for FastBackend {
    fn forward_backward(
        &mut self,
        x: &[u32],
        y: &[u32],
        b: usize,
        t: usize,
        scale: f32,
    ) -> Result<f32> {
        let loss = self.model.forward(x, y, b, t);
        self.model.backward(scale);
        Ok(loss)
    }

    fn eval_loss(&mut self, x: &[u32], y: &[u32], b: usize, t: usize) -> Result<f32> {
        Ok(self.model.forward(x, y, b, t))
    }

    fn zero_grad(&mut self) {
        self.model.zero_grad();
    }

    fn params_and_grads(&mut self) -> (&mut [f32], &mut [f32]) {
        (&mut self.model.params.data, &mut self.model.grads)
    }

    fn params(&self) -> &[f32] {
        &self.model.params.data
    }

    fn params_updated(&mut self) -> Result<()> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "fast"
    }
}

/// candle autograd over `models::Gpt`.
pub struct CandleBackend {
    cfg: GptConfig,
    device: Device,
    vars: Vec<(String, Var)>,
    model: Gpt,
    params: Vec<f32>,
    grads: Vec<f32>,
    rng: ChaCha8Rng,
    rng_seed: u64,
}

impl CandleBackend {
    pub fn new(cfg: &GptConfig, params: &[f32], device: &Device, seed: u64) -> Result<Self> {
        let tensors = crate::models::gpt::flat_to_tensors(cfg, params, device)?;
        let mut vars = Vec::new();
        let mut var_tensors = std::collections::HashMap::new();
        for (name, _) in cfg.param_shapes() {
            let var = Var::from_tensor(&tensors[&name])?;
            var_tensors.insert(name.clone(), var.as_tensor().clone());
            vars.push((name, var));
        }
        let model = Gpt::from_tensors(var_tensors, cfg, device)?;
        Ok(Self {
            cfg: cfg.clone(),
            device: device.clone(),
            vars,
            model,
            params: params.to_vec(),
            grads: vec![0.0; params.len()],
            rng: ChaCha8Rng::seed_from_u64(seed),
            rng_seed: seed,
        })
    }

    fn batch(&self, x: &[u32], b: usize, t: usize) -> Result<Tensor> {
        Ok(Tensor::from_slice(x, (b, t), &self.device)?)
    }
}

impl Backend for CandleBackend {
    fn forward_backward(
        &mut self,
        x: &[u32],
        y: &[u32],
        b: usize,
        t: usize,
        scale: f32,
    ) -> Result<f32> {
        let (xt, yt) = (self.batch(x, b, t)?, self.batch(y, b, t)?);
        let train = if self.cfg.dropout > 0.0 {
            Some(&mut self.rng)
        } else {
            None
        };
        let loss = self.model.loss(&xt, &yt, train)?;
        add_var_grads(&self.vars, &loss.backward()?, scale, &mut self.grads)?;
        Ok(loss.to_scalar::<f32>()?)
    }

    fn eval_loss(&mut self, x: &[u32], y: &[u32], b: usize, t: usize) -> Result<f32> {
        let (xt, yt) = (self.batch(x, b, t)?, self.batch(y, b, t)?);
        Ok(self.model.loss(&xt, &yt, None)?.to_scalar::<f32>()?)
    }

    fn zero_grad(&mut self) {
        self.grads.iter_mut().for_each(|g| *g = 0.0);
    }

    fn params_and_grads(&mut self) -> (&mut [f32], &mut [f32]) {
        (&mut self.params, &mut self.grads)
    }

    fn params(&self) -> &[f32] {
        &self.params
    }

    fn params_updated(&mut self) -> Result<()> {
        set_vars(&self.vars, &self.params)
    }

    fn rng_state(&self) -> (u64, u128) {
        (self.rng_seed, self.rng.get_word_pos())
    }

    fn set_rng_state(&mut self, seed: u64, pos: u128) {
        self.rng = ChaCha8Rng::seed_from_u64(seed);
        self.rng.set_word_pos(pos);
        self.rng_seed = seed;
    }

    fn name(&self) -> &'static str {
        "candle"
    }
}
