//! The parameter stores. `Flat`: named tensors in one f32 buffer, as the hand-written forward
//! and backward passes and AdamW use them. `Params`: named parameters for models built on candle
//! autograd, created from a seeded RNG (so a run is reproducible, which candle's own CPU
//! initializers are not) or read from a checkpoint's tensors; training keeps each one as a `Var`
//! for the optimizer, inference keeps plain tensors.

use std::collections::HashMap;
use std::ops::Range;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// Named tensors in one flat f32 buffer, in a fixed order.
#[derive(Debug, Clone, Default)]
pub struct Flat {
    pub data: Vec<f32>,
    pub entries: Vec<Entry>,
    index: HashMap<String, usize>,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub len: usize,
}

impl Flat {
    /// Lays out `shapes` in order, zero-filled.
    pub fn zeros(shapes: &[(String, Vec<usize>)]) -> Self {
        let mut f = Flat::default();
        let mut off = 0;
        for (name, shape) in shapes {
            let len = shape.iter().product();
            f.index.insert(name.clone(), f.entries.len());
            f.entries.push(Entry {
                name: name.clone(),
                shape: shape.clone(),
                offset: off,
                len,
            });
            off += len;
        }
        f.data = vec![0.0; off];
        f
    }

    pub fn id(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    pub fn get(&self, id: usize) -> &[f32] {
        let e = &self.entries[id];
        &self.data[e.offset..e.offset + e.len]
    }

    pub fn get_mut(&mut self, id: usize) -> &mut [f32] {
        let e = &self.entries[id];
        &mut self.data[e.offset..e.offset + e.len]
    }

    /// Where tensor `name` lies in `data`.
    pub fn range(&self, name: &str) -> Option<Range<usize>> {
        let e = &self.entries[self.id(name)?];
        Some(e.offset..e.offset + e.len)
    }

    /// Copies `values` into tensor `name`, checking that it exists and the length matches its
    /// shape.
    pub fn set(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let Some(id) = self.id(name) else {
            return Err(Error::Invalid(format!(
                "the model has no parameter named {name:?}"
            )));
        };
        let e = &self.entries[id];
        if values.len() != e.len {
            return Err(Error::Invalid(format!(
                "parameter {name} has shape {:?} ({} values), got {} values",
                e.shape,
                e.len,
                values.len()
            )));
        }
        self.get_mut(id).copy_from_slice(values);
        Ok(())
    }

    /// (name, shape, values) of every tensor, in order: what `tensor_io::save_tensors` writes.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let view = |e: &Entry| {
            (
                e.name.clone(),
                e.shape.clone(),
                &self.data[e.offset..][..e.len],
            )
        };
        self.entries.iter().map(view).collect()
    }

    /// A zeroed buffer of the same layout (for gradients).
    pub fn zeros_like(&self) -> Vec<f32> {
        vec![0.0; self.data.len()]
    }
}

/// Adds `scale` × the gradient of each of `vars` to `grads`, which is laid out flat in `vars`
/// order. candle leaves out parameters the loss does not reach; here that is an error, since it
/// is a bug in the graph.
pub fn add_var_grads(
    vars: &[(String, Var)],
    store: &GradStore,
    scale: f32,
    grads: &mut [f32],
) -> Result<()> {
    let mut off = 0;
    for (name, var) in vars {
        let g = store.get(var.as_tensor()).ok_or_else(|| {
            Error::Invalid(format!(
                "parameter {name} received no gradient (the graph does not reach it)"
            ))
        })?;
        let g = g.flatten_all()?.to_vec1::<f32>()?;
        for (acc, gi) in grads[off..off + g.len()].iter_mut().zip(&g) {
            *acc += scale * gi;
        }
        off += g.len();
    }
    Ok(())
}

/// Sets each of `vars` from `values`, laid out flat in `vars` order (after a flat optimizer step).
pub fn set_vars(vars: &[(String, Var)], values: &[f32]) -> Result<()> {
    let mut off = 0;
    for (_, var) in vars {
        let n = var.elem_count();
        var.set(&Tensor::from_slice(
            &values[off..off + n],
            var.shape(),
            var.device(),
        )?)?;
        off += n;
    }
    Ok(())
}

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
