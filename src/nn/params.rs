//! Named parameters for models built on candle autograd: created from a seeded RNG (so a run is
//! reproducible, which candle's own CPU initializers are not) or read from a checkpoint's
//! tensors. Training keeps each one as a `Var` for the optimizer; inference keeps plain tensors.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// How a new parameter is drawn.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    Zeros,
    Ones,
    /// Normal with this standard deviation.
    Normal(f32),
    /// Uniform on [-bound, bound].
    Uniform(f32),
    /// Glorot/Xavier uniform for a (fan_out, fan_in) matrix: bound √(6 / (fan_in + fan_out)).
    Xavier,
}

enum Source {
    Init(Box<ChaCha8Rng>),
    Load(HashMap<String, Tensor>),
}

/// A model's parameters by name, in creation order.
pub struct Params {
    source: Source,
    device: Device,
    /// Whether parameters are trainable `Var`s.
    train: bool,
    pub vars: Vec<(String, Var)>,
    pub names: Vec<String>,
}

impl Params {
    /// New parameters drawn from `rng`, trainable.
    pub fn init(rng: ChaCha8Rng, device: &Device) -> Self {
        Params {
            source: Source::Init(Box::new(rng)),
            device: device.clone(),
            train: true,
            vars: Vec::new(),
            names: Vec::new(),
        }
    }

    /// Parameters read from `tensors` (a checkpoint); trainable `Var`s when `train`.
    pub fn load(tensors: HashMap<String, Tensor>, device: &Device, train: bool) -> Self {
        Params {
            source: Source::Load(tensors),
            device: device.clone(),
            train,
            vars: Vec::new(),
            names: Vec::new(),
        }
    }

    /// The parameter `name` of `shape`: drawn with `init`, or loaded and checked.
    pub fn get(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let t = match &mut self.source {
            Source::Init(rng) => {
                let n: usize = shape.iter().product();
                let v: Vec<f32> = match init {
                    Init::Zeros => vec![0.0; n],
                    Init::Ones => vec![1.0; n],
                    Init::Normal(std) => (0..n).map(|_| normal(rng) * std).collect(),
                    Init::Uniform(b) => (0..n).map(|_| rng.gen_range(-b..=b)).collect(),
                    Init::Xavier => {
                        let (out, inp) = (shape[0], shape[1..].iter().product::<usize>());
                        let b = (6.0 / (out + inp) as f32).sqrt();
                        (0..n).map(|_| rng.gen_range(-b..=b)).collect()
                    }
                };
                Tensor::from_vec(v, shape, &self.device)?
            }
            Source::Load(map) => {
                let t = map.get(name).ok_or_else(|| {
                    Error::Invalid(format!("the checkpoint has no tensor {name}"))
                })?;
                if t.dims() != shape {
                    return Err(Error::Invalid(format!(
                        "tensor {name} has shape {:?}, the config wants {shape:?}",
                        t.dims()
                    )));
                }
                t.to_dtype(DType::F32)?.to_device(&self.device)?
            }
        };
        self.names.push(name.to_string());
        if self.train {
            let var = Var::from_tensor(&t)?;
            let t = var.as_tensor().clone();
            self.vars.push((name.to_string(), var));
            Ok(t)
        } else {
            Ok(t)
        }
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
    let u2: f32 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}
