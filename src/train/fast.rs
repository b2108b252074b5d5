//! The fast CPU training path for GPT-2: a hand-written forward and backward over preallocated
//! f32 buffers, in the manner of llm.c's `train_gpt2.c`. No autograd and no allocation in the
//! steady state (gemm's own packing buffers aside).
//!
//! It computes exactly the function of `models::gpt` and Hugging Face's `GPT2LMHeadModel`
//! (without dropout): x = wte[idx] + wpe[pos]; per block x += attn(ln_1(x)), x += mlp(ln_2(x));
//! logits = ln_f(x) @ wteᵀ; loss = mean cross-entropy. Parameters live in one flat buffer in the
//! order and layout of `GptConfig::param_shapes()` (Conv1D weights as (in, out)), so a
//! checkpoint's named tensors copy in without any transpose.
//!
//! Precision: the linear layers' matmuls run in f32 through `gemm`, or, with `Precision::Bf16`,
//! with bf16 inputs and f32 sums through `bf16::gemm` (AVX512-BF16); parameters, gradients and
//! every other kernel stay f32.
//!
//! Threads: every matmul is split over rayon's current pool, and the other
//! kernels (LayerNorm, GELU, attention per (batch, head), cross-entropy) run on the same pool.
//! Size it before the first call, with `RAYON_NUM_THREADS` or
//! `rayon::ThreadPoolBuilder::build_global`, or call `forward`/`backward` inside
//! `ThreadPool::install`.
//!
//! Memory: besides parameters and gradients, about L·B·T·(16C + nh) floats of activations.
//! Attention keeps only its output and one log-sum-exp per row and head, and recomputes the
//! probabilities tile by tile in the backward (FlashAttention), so no (T, T) matrix is stored.
//!
//! The kernels are in `kernels` (each forward beside its backward) and `simd` (vectorizable
//! exp, GELU, erfc); the tests compare against `reference`, a scalar f64 forward.

mod bf16;
/// The GPT-2 kernels, public only for the criterion benches in `benches/`: not a stable API.
#[doc(hidden)]
pub mod kernels;
pub mod llama_kernels;
#[cfg(test)]
mod reference;
pub(crate) mod simd;

use std::ops::Range;

use crate::config::GptConfig;
use crate::error::{Error, Result};

use kernels::{AttShape, Norm, NormIn, NormOut, Op};

/// The arithmetic of the matmuls. Everything else (LayerNorm, softmax, GELU, cross-entropy,
/// reductions, the optimizer) is f32 either way, and the parameters stay f32 (the master
/// weights).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 inputs, f32 products and sums.
    #[default]
    F32,
    /// Inputs rounded to bf16 (nearest even), products summed in f32, like PyTorch's CPU
    /// autocast to bfloat16. Fast with AVX512-BF16; other CPUs compute the same bits in a
    /// software emulation, far slower than f32, which the trainer refuses (`check_supported`).
    Bf16,
}

impl Precision {
    /// The config spelling: "fp32" or "bf16".
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            _ => Err(Error::Invalid(format!(
                "precision {s:?} must be \"fp32\" or \"bf16\""
            ))),
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

/// Where each parameter tensor of one block sits in the flat buffer; biases are `None` when
/// `cfg.bias` is off.
struct BlockParams {
    ln_1_w: Range<usize>,
    ln_1_b: Option<Range<usize>>,
    attn_w: Range<usize>,
    attn_b: Option<Range<usize>>,
    attn_proj_w: Range<usize>,
    attn_proj_b: Option<Range<usize>>,
    ln_2_w: Range<usize>,
    ln_2_b: Option<Range<usize>>,
    fc_w: Range<usize>,
    fc_b: Option<Range<usize>>,
    fc_proj_w: Range<usize>,
    fc_proj_b: Option<Range<usize>>,
}

/// The parameter ranges of the whole model.
struct ParamLayout {
    wte: Range<usize>,
    wpe: Range<usize>,
    blocks: Vec<BlockParams>,
    ln_f_w: Range<usize>,
    ln_f_b: Option<Range<usize>>,
}

impl ParamLayout {
    fn new(offsets: &[(String, Vec<usize>, usize)]) -> Self {
        let find = |name: &str| {
            offsets
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, shape, off)| *off..*off + shape.iter().product::<usize>())
        };
        let get =
            |name: &str| find(name).unwrap_or_else(|| panic!("param_shapes() lists no {name}"));
        let n_layer = offsets
            .iter()
            .filter(|(n, _, _)| n.ends_with(".ln_1.weight"))
            .count();
        let blocks = (0..n_layer)
            .map(|l| {
                let p = |s: &str| format!("transformer.h.{l}.{s}");
                BlockParams {
                    ln_1_w: get(&p("ln_1.weight")),
                    ln_1_b: find(&p("ln_1.bias")),
                    attn_w: get(&p("attn.c_attn.weight")),
                    attn_b: find(&p("attn.c_attn.bias")),
                    attn_proj_w: get(&p("attn.c_proj.weight")),
                    attn_proj_b: find(&p("attn.c_proj.bias")),
                    ln_2_w: get(&p("ln_2.weight")),
                    ln_2_b: find(&p("ln_2.bias")),
                    fc_w: get(&p("mlp.c_fc.weight")),
                    fc_b: find(&p("mlp.c_fc.bias")),
                    fc_proj_w: get(&p("mlp.c_proj.weight")),
                    fc_proj_b: find(&p("mlp.c_proj.bias")),
                }
            })
            .collect();
        Self {
            wte: get("transformer.wte.weight"),
            wpe: get("transformer.wpe.weight"),
            blocks,
            ln_f_w: get("transformer.ln_f.weight"),
            ln_f_b: find("transformer.ln_f.bias"),
        }
    }
}

/// The activations the backward needs, for the largest (B, T). N = B·T rows; per-block buffers
/// hold L slots of the current N rows each.
struct Activations {
    /// The residual stream at its 2L + 1 points: slot 0 = embeddings, slot 2l + 1 = after block
    /// l's attention, slot 2l + 2 = after its MLP. (2L + 1, N, C)
    residual: Vec<f32>,
    ln_1: Vec<f32>,      // (L, N, C)
    ln_1_mean: Vec<f32>, // (L, N)
    ln_1_rstd: Vec<f32>, // (L, N)
    qkv: Vec<f32>,       // (L, N, 3C)
    att_lse: Vec<f32>,   // (L, B, nh, T) log-sum-exp of each row of attention scores
    atty: Vec<f32>,      // (L, N, C) attention output before c_proj
    ln_2: Vec<f32>,      // (L, N, C)
    ln_2_mean: Vec<f32>, // (L, N)
    ln_2_rstd: Vec<f32>, // (L, N)
    gelu_grad: Vec<f32>, // (L, N, 4C) gelu′ at the c_fc output: all the backward needs of it
    gelu_out: Vec<f32>,  // (L, N, 4C)
    ln_f: Vec<f32>,      // (N, C)
    ln_f_mean: Vec<f32>, // (N)
    ln_f_rstd: Vec<f32>, // (N)
    logits: Vec<f32>,    // (N, V)
    lse: Vec<f32>,       // (N) log-sum-exp of each logits row
}

/// Gradients of activations, reused from block to block.
struct Workspace {
    dresidual: Vec<f32>, // (N, C) gradient of the residual stream at the current point
    dln: Vec<f32>,       // (N, C) gradient of a LayerNorm output
    datty: Vec<f32>,     // (N, C)
    dqkv: Vec<f32>,      // (N, 3C)
    dfch: Vec<f32>,      // (N, 4C)
    dlogits: Vec<f32>,   // (N, V)
}

/// GPT-2 with a hand-written forward and backward; see the module documentation.
///
/// ```
/// use decodex::config::GptConfig;
/// use decodex::train::fast::FastGpt;
///
/// let cfg = GptConfig {
///     vocab_size: 11,
///     block_size: 8,
///     n_layer: 1,
///     n_head: 2,
///     n_embd: 8,
///     dropout: 0.0,
///     bias: true,
///     activation: "gelu_new".into(),
///     layer_norm_epsilon: 1e-5,
/// };
/// let mut model = FastGpt::new(cfg, 2, 8)?; // buffers for (B, T) up to (2, 8)
/// model.set_param("transformer.wte.weight", &[0.02; 11 * 8])?;
/// model.zero_grad();
/// let (x, y) = ([1u32; 16], [2u32; 16]); // (B, T) = (2, 8), row-major
/// let loss = model.forward(&x, &y, 2, 8);
/// model.backward(1.0); // grads += d loss / d params
/// assert!((loss - 11f32.ln()).abs() < 1e-3); // near-uniform logits
/// # Ok::<(), decodex::Error>(())
/// ```
pub struct FastGpt {
    pub cfg: GptConfig,
    /// All parameters, flat, in `GptConfig::param_shapes()` order.
    pub params: Vec<f32>,
    /// Gradients, laid out like `params`; `backward` adds to them.
    pub grads: Vec<f32>,
    offsets: Vec<(String, Vec<usize>, usize)>,
    layout: ParamLayout,
    max_batch: usize,
    max_t: usize,
    acts: Activations,
    work: Workspace,
    inputs: Vec<u32>,
    targets: Vec<u32>,
    /// (B, T) of the last forward; `None` before the first.
    last: Option<(usize, usize)>,
    /// The arithmetic of the matmuls (f32 unless `set_precision` says otherwise).
    precision: Precision,
}

impl FastGpt {
    /// A model with zeroed parameters and buffers for batches up to (max_batch, max_t).
    /// Fails on an invalid config, on dropout (not supported here) or when max_t > block_size.
    pub fn new(cfg: GptConfig, max_batch: usize, max_t: usize) -> Result<Self> {
        cfg.validate()?;
        if cfg.dropout > 0.0 {
            return Err(Error::Invalid(format!(
                "the fast CPU path does not support dropout ({}); set dropout = 0 or use the \
                 candle backend",
                cfg.dropout
            )));
        }
        if max_batch == 0 || max_t == 0 || max_t > cfg.block_size {
            return Err(Error::Invalid(format!(
                "fast path buffers for batch {max_batch} x {max_t} tokens: both must be positive \
                 and the length at most block_size ({})",
                cfg.block_size
            )));
        }
        let mut offsets = Vec::new();
        let mut n = 0;
        for (name, shape) in cfg.param_shapes() {
            let len: usize = shape.iter().product();
            offsets.push((name, shape, n));
            n += len;
        }
        let layout = ParamLayout::new(&offsets);
        let (l, c, v, nh) = (cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.n_head);
        let rows = max_batch * max_t;
        let z = |len: usize| vec![0f32; len];
        let acts = Activations {
            residual: z((2 * l + 1) * rows * c),
            ln_1: z(l * rows * c),
            ln_1_mean: z(l * rows),
            ln_1_rstd: z(l * rows),
            qkv: z(l * rows * 3 * c),
            att_lse: z(l * max_batch * nh * max_t),
            atty: z(l * rows * c),
            ln_2: z(l * rows * c),
            ln_2_mean: z(l * rows),
            ln_2_rstd: z(l * rows),
            gelu_grad: z(l * rows * 4 * c),
            gelu_out: z(l * rows * 4 * c),
            ln_f: z(rows * c),
            ln_f_mean: z(rows),
            ln_f_rstd: z(rows),
            logits: z(rows * v),
            lse: z(rows),
        };
        let work = Workspace {
            dresidual: z(rows * c),
            dln: z(rows * c),
            datty: z(rows * c),
            dqkv: z(rows * 3 * c),
            dfch: z(rows * 4 * c),
            dlogits: z(rows * v),
        };
        Ok(Self {
            cfg,
            params: z(n),
            grads: z(n),
            offsets,
            layout,
            max_batch,
            max_t,
            acts,
            work,
            inputs: vec![0; rows],
            targets: vec![0; rows],
            last: None,
            precision: Precision::F32,
        })
    }

    /// Sets the arithmetic of the matmuls for the following forward and backward passes.
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// The arithmetic of the matmuls.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// (name, shape, offset into `params`) of every parameter tensor, in `param_shapes()` order.
    pub fn offsets(&self) -> &[(String, Vec<usize>, usize)] {
        &self.offsets
    }

    fn range(&self, name: &str) -> Option<Range<usize>> {
        self.offsets
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, shape, off)| *off..*off + shape.iter().product::<usize>())
    }

    /// The parameter tensor `name` (a Hugging Face name), flattened row-major.
    pub fn param(&self, name: &str) -> Option<&[f32]> {
        self.range(name).map(|r| &self.params[r])
    }

    pub fn param_mut(&mut self, name: &str) -> Option<&mut [f32]> {
        self.range(name).map(|r| &mut self.params[r])
    }

    /// The gradient of the parameter tensor `name`.
    pub fn grad(&self, name: &str) -> Option<&[f32]> {
        self.range(name).map(|r| &self.grads[r])
    }

    /// Copies `data` into the parameter tensor `name`, checking that it exists and the length
    /// matches its shape.
    pub fn set_param(&mut self, name: &str, data: &[f32]) -> Result<()> {
        let (shape, r) = match self.offsets.iter().find(|(n, _, _)| n == name) {
            Some((_, shape, off)) => (shape.clone(), *off..*off + shape.iter().product::<usize>()),
            None => {
                return Err(Error::Invalid(format!(
                    "the model has no parameter named {name:?}"
                )))
            }
        };
        if data.len() != r.len() {
            return Err(Error::Invalid(format!(
                "parameter {name} has shape {shape:?} ({} values), got {} values",
                r.len(),
                data.len()
            )));
        }
        self.params[r].copy_from_slice(data);
        Ok(())
    }

    /// The largest batch and sequence length the buffers hold.
    pub fn capacity(&self) -> (usize, usize) {
        (self.max_batch, self.max_t)
    }

    pub fn zero_grad(&mut self) {
        self.grads.fill(0.0);
    }

    /// Logits of the last forward, (B, T, V) row-major.
    pub fn logits(&self) -> &[f32] {
        let (b, t) = self.last.unwrap_or((0, 0));
        &self.acts.logits[..b * t * self.cfg.vocab_size]
    }

    /// Forward on a (B, T) batch of token ids with their next-token targets (both row-major, B·T
    /// long); returns the mean cross-entropy loss and keeps the activations for `backward`.
    ///
    /// # Panics
    /// If B or T exceed the capacity given to `new`, the slices are not B·T long, or an id is
    /// outside the vocabulary.
    pub fn forward(&mut self, inputs: &[u32], targets: &[u32], b: usize, t: usize) -> f32 {
        let v = self.cfg.vocab_size;
        assert!(
            (1..=self.max_batch).contains(&b) && (1..=self.max_t).contains(&t),
            "batch {b} x {t} exceeds the fast path's buffers ({} x {})",
            self.max_batch,
            self.max_t
        );
        let n = b * t;
        assert!(
            inputs.len() == n && targets.len() == n,
            "inputs and targets must hold B*T = {n} ids"
        );
        if let Some(&bad) = inputs.iter().chain(targets).find(|&&id| id as usize >= v) {
            panic!("token id {bad} is outside the vocabulary (vocab_size {v})");
        }
        self.inputs[..n].copy_from_slice(inputs);
        self.targets[..n].copy_from_slice(targets);
        self.last = Some((b, t));
        // Run on a worker of the current rayon pool: the parallel regions below then start
        // without a hand-off from an outside thread each.
        rayon::scope(|_| self.forward_on_pool(b, t))
    }

    fn forward_on_pool(&mut self, b: usize, t: usize) -> f32 {
        let (c, v, nh) = (self.cfg.n_embd, self.cfg.vocab_size, self.cfg.n_head);
        let (n, eps) = (b * t, self.cfg.layer_norm_epsilon as f32);
        let exact_gelu = self.cfg.activation == "gelu";
        let prec = self.precision;
        let (p, a, lay) = (&self.params, &mut self.acts, &self.layout);
        let (nc, nlse) = (n * c, b * nh * t);
        let w = |r: &Range<usize>| &p[r.clone()];
        let ob = |r: &Option<Range<usize>>| r.as_ref().map(|r| &p[r.clone()]);
        let (wte, wpe) = (w(&lay.wte), w(&lay.wpe));

        // Each block reads the residual stream at slot 2l (x) and writes its two projections
        // without bias into slots 2l + 1 and 2l + 2; the LayerNorm that reads a slot next first
        // completes it: slot += x + bias.
        kernels::encoder_forward(&mut a.residual[..nc], &self.inputs[..n], wte, wpe, t);
        let mut skip_bias = None;
        for (l, bp) in lay.blocks.iter().enumerate() {
            let (ln, mlp) = (l * nc..(l + 1) * nc, 4 * l * nc..4 * (l + 1) * nc);
            let stats = l * n..(l + 1) * n;
            let qkv = &mut a.qkv[3 * l * nc..3 * (l + 1) * nc];
            let atty = &mut a.atty[ln.clone()];

            // Attention: (N, C) -> ln_1 -> (N, 3C) = [q | k | v] -> attention (N, C) -> c_proj
            let (prev, x, out) = residual_triple(&mut a.residual, 2 * l, nc);
            let skip = prev.map(|x| kernels::Skip { x, bias: skip_bias });
            let o = NormOut {
                out: &mut a.ln_1[ln.clone()],
                mean: &mut a.ln_1_mean[stats.clone()],
                rstd: &mut a.ln_1_rstd[stats.clone()],
            };
            kernels::layernorm_forward(
                o,
                x,
                skip,
                Norm {
                    w: w(&bp.ln_1_w),
                    b: ob(&bp.ln_1_b),
                    eps,
                },
            );
            kernels::matmul_with(
                prec,
                (n, 3 * c, c),
                qkv,
                false,
                Op::N(&a.ln_1[ln.clone()]),
                Op::N(w(&bp.attn_w)),
                1.0,
            );
            let lse = &mut a.att_lse[l * nlse..(l + 1) * nlse];
            kernels::attention_forward(
                atty,
                lse,
                qkv,
                ob(&bp.attn_b),
                AttShape { b, t, c, nh },
                prec,
            );
            kernels::matmul_with(
                prec,
                (n, c, c),
                out,
                false,
                Op::N(atty),
                Op::N(w(&bp.attn_proj_w)),
                1.0,
            );

            // MLP: (N, C) -> ln_2 -> c_fc (N, 4C) -> GELU -> c_proj (N, C)
            let (prev, x, out) = residual_triple(&mut a.residual, 2 * l + 1, nc);
            let skip = prev.map(|x| kernels::Skip {
                x,
                bias: ob(&bp.attn_proj_b),
            });
            let o = NormOut {
                out: &mut a.ln_2[ln.clone()],
                mean: &mut a.ln_2_mean[stats.clone()],
                rstd: &mut a.ln_2_rstd[stats],
            };
            kernels::layernorm_forward(
                o,
                x,
                skip,
                Norm {
                    w: w(&bp.ln_2_w),
                    b: ob(&bp.ln_2_b),
                    eps,
                },
            );
            let (h, g) = (&mut a.gelu_grad[mlp.clone()], &mut a.gelu_out[mlp]);
            kernels::matmul_with(
                prec,
                (n, 4 * c, c),
                h,
                false,
                Op::N(&a.ln_2[ln]),
                Op::N(w(&bp.fc_w)),
                1.0,
            );
            kernels::bias_gelu_forward(h, g, ob(&bp.fc_b), 4 * c, exact_gelu);
            kernels::matmul_with(
                prec,
                (n, c, 4 * c),
                out,
                false,
                Op::N(g),
                Op::N(w(&bp.fc_proj_w)),
                1.0,
            );
            skip_bias = ob(&bp.fc_proj_b);
        }
        let top = 2 * lay.blocks.len();
        let (prev, x, _) = residual_triple(&mut a.residual, top, nc);
        let skip = prev.map(|x| kernels::Skip { x, bias: skip_bias });
        let o = NormOut {
            out: &mut a.ln_f[..nc],
            mean: &mut a.ln_f_mean[..n],
            rstd: &mut a.ln_f_rstd[..n],
        };
        kernels::layernorm_forward(
            o,
            x,
            skip,
            Norm {
                w: w(&lay.ln_f_w),
                b: ob(&lay.ln_f_b),
                eps,
            },
        );
        // Tied head: (N, C) @ wteᵀ (C, V) -> (N, V)
        let logits = &mut a.logits[..n * v];
        kernels::matmul_with(
            prec,
            (n, v, c),
            logits,
            false,
            Op::N(&a.ln_f[..nc]),
            Op::T(wte),
            1.0,
        );
        kernels::cross_entropy_forward(logits, &mut a.lse[..n], &self.targets[..n], v)
    }

    /// Backward of the last forward: adds the gradients of `scale` · loss to `grads` (use
    /// 1/grad_accum_steps to average micro-batches). Activations are kept, so calling it twice
    /// adds twice.
    ///
    /// # Panics
    /// If no forward ran before.
    pub fn backward(&mut self, scale: f32) {
        let (b, t) = self.last.expect("backward called before forward");
        rayon::scope(|_| self.backward_on_pool(b, t, scale));
    }

    fn backward_on_pool(&mut self, b: usize, t: usize, scale: f32) {
        let (c, v, nh) = (self.cfg.n_embd, self.cfg.vocab_size, self.cfg.n_head);
        let (n, prec) = (b * t, self.precision);
        let (nc, nlse) = (n * c, b * nh * t);
        let (p, g, a, ws, lay) = (
            &self.params,
            &mut self.grads,
            &self.acts,
            &mut self.work,
            &self.layout,
        );
        let w = |r: &Range<usize>| &p[r.clone()];
        let (dres, dln) = (&mut ws.dresidual[..nc], &mut ws.dln[..nc]);
        let slot = |i: usize| &a.residual[i * nc..(i + 1) * nc];

        // Loss and tied head; the loss is the mean over N rows, hence scale / N.
        let dlogits = &mut ws.dlogits[..n * v];
        let (logits, lse) = (&a.logits[..n * v], &a.lse[..n]);
        kernels::cross_entropy_backward(dlogits, logits, lse, &self.targets[..n], scale / n as f32);
        let (dwte, ln_f) = (&mut g[lay.wte.clone()], &a.ln_f[..nc]);
        let dlogits = &*dlogits;
        rayon::join(
            || {
                kernels::matmul_with(
                    prec,
                    (n, c, v),
                    dln,
                    false,
                    Op::N(dlogits),
                    Op::N(w(&lay.wte)),
                    1.0,
                )
            },
            || {
                kernels::matmul_with(
                    prec,
                    (v, c, n),
                    dwte,
                    true,
                    Op::T(dlogits),
                    Op::N(ln_f),
                    1.0,
                )
            },
        );
        let (dw, db) = grad_pair(g, &lay.ln_f_w, &lay.ln_f_b);
        let s = NormIn {
            x: slot(2 * lay.blocks.len()),
            mean: &a.ln_f_mean[..n],
            rstd: &a.ln_f_rstd[..n],
        };
        kernels::layernorm_backward(dres, dw, db, dln, s, w(&lay.ln_f_w), false);

        for (l, bp) in lay.blocks.iter().enumerate().rev() {
            let (ln, mlp, stats) = (
                l * nc..(l + 1) * nc,
                4 * l * nc..4 * (l + 1) * nc,
                l * n..(l + 1) * n,
            );
            let dfch = &mut ws.dfch[..4 * nc];
            let (datty, dqkv) = (&mut ws.datty[..nc], &mut ws.dqkv[..3 * nc]);

            // MLP; dres holds the gradient of the block's output.
            let (dw, db) = grad_pair(g, &bp.fc_proj_w, &bp.fc_proj_b);
            kernels::linear_backward(
                dfch,
                Some(&a.gelu_grad[mlp.clone()]),
                dw,
                db,
                dres,
                &a.gelu_out[mlp],
                w(&bp.fc_proj_w),
                (4 * c, c),
                prec,
            );
            let (dw, db) = grad_pair(g, &bp.fc_w, &bp.fc_b);
            kernels::linear_backward(
                dln,
                None,
                dw,
                db,
                dfch,
                &a.ln_2[ln.clone()],
                w(&bp.fc_w),
                (c, 4 * c),
                prec,
            );
            let (dw, db) = grad_pair(g, &bp.ln_2_w, &bp.ln_2_b);
            let s = NormIn {
                x: slot(2 * l + 1),
                mean: &a.ln_2_mean[stats.clone()],
                rstd: &a.ln_2_rstd[stats.clone()],
            };
            kernels::layernorm_backward(dres, dw, db, dln, s, w(&bp.ln_2_w), true);

            // Attention; dres now holds the gradient of the attention's residual output.
            let (dw, db) = grad_pair(g, &bp.attn_proj_w, &bp.attn_proj_b);
            kernels::linear_backward(
                datty,
                None,
                dw,
                db,
                dres,
                &a.atty[ln.clone()],
                w(&bp.attn_proj_w),
                (c, c),
                prec,
            );
            let (qkv, lse) = (
                &a.qkv[3 * l * nc..3 * (l + 1) * nc],
                &a.att_lse[l * nlse..(l + 1) * nlse],
            );
            let shape = AttShape { b, t, c, nh };
            kernels::attention_backward(dqkv, datty, qkv, &a.atty[ln.clone()], lse, shape, prec);
            let (dw, db) = grad_pair(g, &bp.attn_w, &bp.attn_b);
            kernels::linear_backward(
                dln,
                None,
                dw,
                db,
                dqkv,
                &a.ln_1[ln],
                w(&bp.attn_w),
                (c, 3 * c),
                prec,
            );
            let (dw, db) = grad_pair(g, &bp.ln_1_w, &bp.ln_1_b);
            let s = NormIn {
                x: slot(2 * l),
                mean: &a.ln_1_mean[stats.clone()],
                rstd: &a.ln_1_rstd[stats],
            };
            kernels::layernorm_backward(dres, dw, db, dln, s, w(&bp.ln_1_w), true);
        }

        // Embeddings: wte receives both the head's and the embedding's gradient (tied).
        let (dwte, dwpe) = split_pair(g, &lay.wte, &lay.wpe);
        kernels::encoder_backward(dwte, &mut dwpe[..t * c], dres, &self.inputs[..n], t);
    }
}

/// (slot i − 1 if i > 0, slot i, slot i + 1) of the residual buffer, slots of `len` values; the
/// last is empty for the top slot.
fn residual_triple(
    buf: &mut [f32],
    i: usize,
    len: usize,
) -> (Option<&[f32]>, &mut [f32], &mut [f32]) {
    let (lo, hi) = buf.split_at_mut(i * len);
    let (x, rest) = hi.split_at_mut(len);
    let prev = (i > 0).then(|| &lo[(i - 1) * len..]);
    let next_len = len.min(rest.len());
    (prev, x, &mut rest[..next_len])
}

/// Two disjoint parameter ranges of `g`, mutably.
fn split_pair<'a>(
    g: &'a mut [f32],
    a: &Range<usize>,
    b: &Range<usize>,
) -> (&'a mut [f32], &'a mut [f32]) {
    if a.start < b.start {
        assert!(a.end <= b.start);
        let (lo, hi) = g.split_at_mut(b.start);
        (&mut lo[a.clone()], &mut hi[..b.len()])
    } else {
        let (y, x) = split_pair(g, b, a);
        (x, y)
    }
}

/// The gradients of a weight and its optional bias.
fn grad_pair<'a>(
    g: &'a mut [f32],
    w: &Range<usize>,
    b: &Option<Range<usize>>,
) -> (&'a mut [f32], Option<&'a mut [f32]>) {
    match b {
        Some(b) => {
            let (w, b) = split_pair(g, w, b);
            (w, Some(b))
        }
        None => (&mut g[w.clone()], None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn tiny(bias: bool, activation: &str) -> GptConfig {
        GptConfig {
            vocab_size: 11,
            block_size: 8,
            n_layer: 2,
            n_head: 2,
            n_embd: 16,
            dropout: 0.0,
            bias,
            activation: activation.into(),
            layer_norm_epsilon: 1e-5,
        }
    }

    /// Random parameters large enough that attention, GELU and LayerNorm are far from linear:
    /// weights and biases ~ U(−0.3, 0.3), embeddings ~ U(−0.5, 0.5), LayerNorm gains 1 ± 0.3.
    fn randomize(m: &mut FastGpt, seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for (name, shape, off) in m.offsets.clone() {
            let len: usize = shape.iter().product();
            let (center, half) = match name.as_str() {
                n if n.contains("wte") || n.contains("wpe") => (0.0, 0.5),
                n if n.contains("ln_") && n.ends_with("weight") => (1.0, 0.3),
                _ => (0.0, 0.3),
            };
            for p in &mut m.params[off..off + len] {
                *p = center + rng.gen_range(-half..half);
            }
        }
    }

    fn batch(v: usize, n: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut ids = || {
            (0..n)
                .map(|_| rng.gen_range(0..v as u32))
                .collect::<Vec<_>>()
        };
        (ids(), ids())
    }

    fn to_f64(x: &[f32]) -> Vec<f64> {
        x.iter().map(|&v| v as f64).collect()
    }

    /// One forward and backward of a 2-layer, 64-wide model at `precision`: (loss, grads).
    fn step_at(precision: Precision) -> (f32, Vec<f32>, FastGpt) {
        let cfg = GptConfig {
            n_embd: 64,
            n_head: 4,
            block_size: 32,
            ..tiny(true, "gelu_new")
        };
        let (b, t) = (3, 32);
        let mut m = FastGpt::new(cfg.clone(), b, t).unwrap();
        m.set_precision(precision);
        randomize(&mut m, 11);
        let (x, y) = batch(cfg.vocab_size, b * t, 5);
        let loss = m.forward(&x, &y, b, t);
        m.backward(1.0);
        (loss, m.grads.clone(), m)
    }

    /// bf16 matmuls (f32 sums) stay within bf16 rounding of the f32 step: the loss to 1e-2
    /// relative, every gradient tensor to 5e-2 in relative L2 norm. Bitwise reproducible.
    #[test]
    fn bf16_step_tracks_f32_step() {
        let (loss32, g32, m) = step_at(Precision::F32);
        let (loss16, g16, _) = step_at(Precision::Bf16);
        let rel = ((loss16 - loss32) / loss32).abs();
        println!("loss f32 {loss32} bf16 {loss16} (rel {rel:.1e})");
        assert!(rel < 1e-2, "loss f32 {loss32} vs bf16 {loss16}");
        assert_ne!(loss16, loss32, "the bf16 path did not run");
        for (name, shape, off) in m.offsets() {
            let len: usize = shape.iter().product();
            let (a, b) = (&g32[*off..off + len], &g16[*off..off + len]);
            let diff: f64 = a
                .iter()
                .zip(b)
                .map(|(&x, &y)| ((x - y) as f64).powi(2))
                .sum();
            let norm: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum();
            let rel = (diff / norm.max(1e-30)).sqrt();
            println!("TENSOR OK {name} bf16 vs f32 rel L2 {rel:.1e}");
            assert!(
                rel < 5e-2,
                "{name}: bf16 gradient off by {rel:e} (relative L2)"
            );
        }
        let (again, g_again, _) = step_at(Precision::Bf16);
        assert_eq!(again.to_bits(), loss16.to_bits());
        assert!(g_again
            .iter()
            .zip(&g16)
            .all(|(x, y)| x.to_bits() == y.to_bits()));
    }

    #[test]
    fn precision_parses_config_spellings() {
        assert_eq!(Precision::parse("fp32").unwrap(), Precision::F32);
        assert_eq!(Precision::parse("bf16").unwrap(), Precision::Bf16);
        assert!(Precision::parse("fp16").is_err());
    }

    /// Loss and logits against the f64 reference, then, for a sample of entries of every named
    /// tensor, the analytic gradient against central differences of the f64 reference. Prints
    /// llm.c-style `TENSOR OK` lines. Before the checked (b, t) batch, a full-capacity batch
    /// runs so that stale buffer contents would show.
    fn check_against_reference(cfg: &GptConfig, b: usize, t: usize, samples: usize) {
        let (cap_b, cap_t) = (b + 1, cfg.block_size);
        let mut m = FastGpt::new(cfg.clone(), cap_b, cap_t).unwrap();
        randomize(&mut m, 7);
        let (x, y) = batch(cfg.vocab_size, cap_b * cap_t, 1);
        m.forward(&x, &y, cap_b, cap_t);
        m.backward(1.0);
        m.zero_grad();

        let (x, y) = batch(cfg.vocab_size, b * t, 2);
        let loss = m.forward(&x, &y, b, t);
        m.backward(1.0);
        let params = to_f64(&m.params);
        let (ref_loss, ref_logits) = reference::forward(cfg, &params, &x, &y, b, t);
        assert!(
            (loss as f64 - ref_loss).abs() < 1e-5 * ref_loss.abs(),
            "loss {loss} vs f64 {ref_loss}"
        );
        let logit_diff = m
            .logits()
            .iter()
            .zip(&ref_logits)
            .map(|(&a, &r)| (a as f64 - r).abs())
            .fold(0.0, f64::max);
        assert_eq!(m.logits().len(), ref_logits.len());
        println!("TENSOR OK logits maxdiff {logit_diff:.2e}; loss {loss} vs f64 {ref_loss}");
        assert!(
            logit_diff < 1e-4,
            "logits differ from the f64 reference by {logit_diff}"
        );

        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let h = 1e-5;
        for (name, shape, off) in m.offsets() {
            let len: usize = shape.iter().product();
            let mut idx: Vec<usize> = (0..samples).map(|_| rng.gen_range(0..len)).collect();
            idx.extend([0, len - 1]);
            let (mut max_err, mut max_g) = (0f64, 0f64);
            for i in idx {
                let mut p = params.clone();
                p[off + i] += h;
                let up = reference::forward(cfg, &p, &x, &y, b, t).0;
                p[off + i] -= 2.0 * h;
                let down = reference::forward(cfg, &p, &x, &y, b, t).0;
                let fd = (up - down) / (2.0 * h);
                let g = m.grads[off + i] as f64;
                let err = (g - fd).abs();
                assert!(
                    err <= 1e-3 * fd.abs() + 1e-6,
                    "{name}[{i}]: analytic {g:e} vs central difference {fd:e} (cfg {cfg:?})"
                );
                max_err = max_err.max(err);
                max_g = max_g.max(fd.abs());
            }
            println!("TENSOR OK {name} maxdiff {max_err:.2e} (max |grad| {max_g:.2e})");
        }
    }

    #[test]
    fn gradients_match_f64_central_differences() {
        for bias in [true, false] {
            for act in ["gelu_new", "gelu"] {
                check_against_reference(&tiny(bias, act), 2, 5, 8);
            }
        }
        // Widths that are no multiple of the 16-lane loops: C = 12, heads of size 4, V = 7.
        let odd = GptConfig {
            vocab_size: 7,
            n_embd: 12,
            n_head: 3,
            ..tiny(true, "gelu")
        };
        check_against_reference(&odd, 3, 7, 6);
    }

    /// The parallel kernels split work by rows, columns and (batch, head); none of that may
    /// change the result beyond rounding.
    #[test]
    fn results_do_not_depend_on_thread_count() {
        let cfg = GptConfig {
            n_head: 4,
            block_size: 70,
            ..tiny(true, "gelu_new")
        };
        let (b, t) = (3, 70);
        let (x, y) = batch(cfg.vocab_size, b * t, 4);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut m = FastGpt::new(cfg.clone(), b, t).unwrap();
                randomize(&mut m, 8);
                let loss = m.forward(&x, &y, b, t);
                m.backward(1.0);
                (loss, m.logits().to_vec(), m.grads.clone())
            })
        };
        let (loss_1, logits_1, grads_1) = run(1);
        for threads in [2, 3] {
            let (loss, logits, grads) = run(threads);
            assert!(
                (loss - loss_1).abs() <= 1e-6 * loss_1.abs(),
                "{threads} threads: loss"
            );
            assert!(
                max_abs_diff(&logits, &logits_1) <= 1e-5,
                "{threads} threads: logits"
            );
            let scale = grads_1.iter().fold(0f32, |a, g| a.max(g.abs()));
            let diff = max_abs_diff(&grads, &grads_1);
            assert!(
                diff <= 1e-5 * scale,
                "{threads} threads: gradients differ by {diff}"
            );
        }
    }

    /// T = 2·ATT_TILE + 2 = 130 spans three query tiles and, for the last rows, three key tiles
    /// (64 + 64 + 2): the online softmax rescales the output twice and the backward adds dK and
    /// dV over several query tiles. Heads of size 8.
    #[test]
    fn gradients_match_across_attention_blocks() {
        let t = 2 * kernels::ATT_TILE + 2;
        let cfg = GptConfig {
            block_size: t,
            n_layer: 1,
            ..tiny(true, "gelu_new")
        };
        check_against_reference(&cfg, 1, t, 3);
    }

    /// T = ATT_TILE + 37 = 101 ends in a partial tile on both the query and the key side, with
    /// two sequences and four heads (of size 4) per call, so several (b, h) tasks run their tiles.
    #[test]
    fn gradients_match_with_a_partial_last_attention_tile() {
        let t = kernels::ATT_TILE + 37;
        let cfg = GptConfig {
            block_size: t,
            n_layer: 1,
            n_head: 4,
            ..tiny(false, "gelu")
        };
        check_against_reference(&cfg, 2, t, 3);
    }

    #[test]
    fn logits_match_f64_reference() {
        for bias in [true, false] {
            for act in ["gelu_new", "gelu"] {
                let cfg = GptConfig {
                    n_head: 4,
                    ..tiny(bias, act)
                };
                let (b, t) = (3, 8);
                let mut m = FastGpt::new(cfg.clone(), b, t).unwrap();
                randomize(&mut m, 11);
                let (x, y) = batch(cfg.vocab_size, b * t, 12);
                m.forward(&x, &y, b, t);
                let (_, want) = reference::forward(&cfg, &to_f64(&m.params), &x, &y, b, t);
                let diff = m
                    .logits()
                    .iter()
                    .zip(&want)
                    .map(|(&a, &r)| (a as f64 - r).abs())
                    .fold(0.0, f64::max);
                assert!(diff < 1e-4, "bias {bias}, {act}: logits differ by {diff}");
            }
        }
    }

    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, crate::testutil::nan_max)
    }

    #[test]
    fn backward_accumulates_scaled_gradients() {
        let cfg = tiny(true, "gelu_new");
        let (b, t) = (2, 8);
        let mut m = FastGpt::new(cfg.clone(), b, t).unwrap();
        randomize(&mut m, 5);
        let (x1, y1) = batch(cfg.vocab_size, b * t, 6);
        let (x2, y2) = batch(cfg.vocab_size, b * t, 7);

        m.forward(&x1, &y1, b, t);
        m.backward(1.0);
        let once = m.grads.clone();
        m.zero_grad();
        m.backward(0.5);
        m.backward(0.5);
        let scale = once.iter().fold(0f32, |a, g| a.max(g.abs()));
        assert!(
            max_abs_diff(&once, &m.grads) <= 1e-6 * scale,
            "two half steps differ from one whole"
        );

        // Two micro-batches with scale 1/2 each give the average of their gradients.
        m.zero_grad();
        m.forward(&x2, &y2, b, t);
        m.backward(1.0);
        let second = m.grads.clone();
        m.zero_grad();
        m.forward(&x1, &y1, b, t);
        m.backward(0.5);
        m.forward(&x2, &y2, b, t);
        m.backward(0.5);
        let mean: Vec<f32> = once
            .iter()
            .zip(&second)
            .map(|(a, b)| 0.5 * (a + b))
            .collect();
        assert!(
            max_abs_diff(&mean, &m.grads) <= 1e-6 * scale,
            "accumulated micro-batches differ from their mean"
        );
        assert!(m.grads.iter().all(|g| g.is_finite()));
    }

    #[test]
    fn every_tensor_receives_a_gradient() {
        let cfg = tiny(true, "gelu");
        let mut m = FastGpt::new(cfg.clone(), 2, 8).unwrap();
        randomize(&mut m, 9);
        let (x, y) = batch(cfg.vocab_size, 16, 10);
        m.forward(&x, &y, 2, 8);
        m.backward(1.0);
        for (name, _, _) in m.offsets() {
            let g = m.grad(name).unwrap();
            assert!(g.iter().any(|&v| v != 0.0), "{name} received no gradient");
        }
    }

    #[test]
    fn named_parameters_follow_param_shapes() {
        let cfg = tiny(true, "gelu_new");
        let mut m = FastGpt::new(cfg.clone(), 1, 4).unwrap();
        let names: Vec<_> = m
            .offsets()
            .iter()
            .map(|(n, s, _)| (n.clone(), s.clone()))
            .collect();
        assert_eq!(names, cfg.param_shapes());
        assert_eq!(m.params.len(), cfg.num_params());
        let w: Vec<f32> = (0..16 * 48).map(|i| i as f32).collect();
        m.set_param("transformer.h.1.attn.c_attn.weight", &w)
            .unwrap();
        assert_eq!(
            m.param("transformer.h.1.attn.c_attn.weight").unwrap(),
            &w[..]
        );
        assert!(m
            .set_param("transformer.h.1.attn.c_attn.weight", &w[1..])
            .is_err());
        assert!(m.set_param("lm_head.weight", &w).is_err());
        m.param_mut("transformer.ln_f.bias").unwrap()[3] = 2.0;
        assert_eq!(m.param("transformer.ln_f.bias").unwrap()[3], 2.0);
    }

    #[test]
    fn new_rejects_dropout_and_oversized_buffers() {
        let err = FastGpt::new(
            GptConfig {
                dropout: 0.1,
                ..tiny(true, "gelu_new")
            },
            1,
            8,
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("dropout"), "{err}");
        assert!(FastGpt::new(tiny(true, "gelu_new"), 1, 9).is_err());
        assert!(FastGpt::new(tiny(true, "gelu_new"), 0, 8).is_err());
    }
}
