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

#[cfg(test)]
mod reference;

use std::ops::Range;

use crate::error::{Error, Result};
use crate::models::gpt::GptConfig;
use crate::nn::params::Flat;

use crate::kernels::{self, AttShape, Norm, NormIn, NormOut, Op, Precision};

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
    fn new(params: &Flat) -> Self {
        let find = |name: &str| params.range(name);
        let get =
            |name: &str| find(name).unwrap_or_else(|| panic!("param_shapes() lists no {name}"));
        let n_layer = params
            .entries
            .iter()
            .filter(|e| e.name.ends_with(".ln_1.weight"))
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
/// use decodex::models::gpt::GptConfig;
/// use decodex::models::gpt::fast::FastGpt;
///
/// let cfg = GptConfig {
///     vocab_size: 11,
///     block_size: 8,
///     n_layer: 1,
///     n_head: 2,
///     n_embd: 8,
///     dropout: 0.0,
///     bias: true,
///     activation: decodex::models::gpt::Activation::GeluNew,
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
    pub params: Flat,
    /// Gradients, laid out like `params`; `backward` adds to them.
    pub grads: Vec<f32>,
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
        let params = Flat::zeros(&cfg.param_shapes());
        let layout = ParamLayout::new(&params);
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
            grads: params.zeros_like(),
            params,
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

    /// The parameter tensor `name` (a Hugging Face name), flattened row-major.
    pub fn param(&self, name: &str) -> Option<&[f32]> {
        self.params.range(name).map(|r| &self.params.data[r])
    }

    pub fn param_mut(&mut self, name: &str) -> Option<&mut [f32]> {
        self.params.range(name).map(|r| &mut self.params.data[r])
    }

    /// The gradient of the parameter tensor `name`.
    pub fn grad(&self, name: &str) -> Option<&[f32]> {
        self.params.range(name).map(|r| &self.grads[r])
    }

    /// Copies `data` into the parameter tensor `name`, checking that it exists and the length
    /// matches its shape.
    pub fn set_param(&mut self, name: &str, data: &[f32]) -> Result<()> {
        self.params.set(name, data)
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
        let exact_gelu = self.cfg.activation == crate::models::gpt::Activation::Gelu;
        let prec = self.precision;
        let (p, a, lay) = (&self.params.data, &mut self.acts, &self.layout);
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
        let targets = &self.targets[..n];
        head_forward(p, a, lay, targets, skip_bias, (n, c, v), eps, prec)
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
            &self.params.data,
            &mut self.grads,
            &self.acts,
            &mut self.work,
            &self.layout,
        );
        let w = |r: &Range<usize>| &p[r.clone()];
        let slot = |i: usize| &a.residual[i * nc..(i + 1) * nc];

        head_backward(p, g, a, ws, lay, &self.targets[..n], (n, c, v), scale, prec);
        let (dres, dln) = (&mut ws.dresidual[..nc], &mut ws.dln[..nc]);
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

/// The top of the forward: the final LayerNorm (completing the residual slot), the tied head
/// (N, C) @ wteᵀ and the mean cross-entropy of `targets`.
#[allow(clippy::too_many_arguments)]
fn head_forward(
    p: &[f32],
    a: &mut Activations,
    lay: &ParamLayout,
    targets: &[u32],
    skip_bias: Option<&[f32]>,
    (n, c, v): (usize, usize, usize),
    eps: f32,
    prec: Precision,
) -> f32 {
    let nc = n * c;
    let w = |r: &Range<usize>| &p[r.clone()];
    let ob = |r: &Option<Range<usize>>| r.as_ref().map(|r| &p[r.clone()]);
    let wte = w(&lay.wte);
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
    kernels::cross_entropy_forward(logits, &mut a.lse[..n], targets, v)
}

/// The top of the backward: cross-entropy, the tied head (into dwte) and the final LayerNorm;
/// leaves the gradient of the top residual slot in `ws.dresidual`.
#[allow(clippy::too_many_arguments)]
fn head_backward(
    p: &[f32],
    g: &mut [f32],
    a: &Activations,
    ws: &mut Workspace,
    lay: &ParamLayout,
    targets: &[u32],
    (n, c, v): (usize, usize, usize),
    scale: f32,
    prec: Precision,
) {
    let nc = n * c;
    let w = |r: &Range<usize>| &p[r.clone()];
    let (dres, dln) = (&mut ws.dresidual[..nc], &mut ws.dln[..nc]);
    let slot = |i: usize| &a.residual[i * nc..(i + 1) * nc];
    // Loss and tied head; the loss is the mean over N rows, hence scale / N.
    let dlogits = &mut ws.dlogits[..n * v];
    let (logits, lse) = (&a.logits[..n * v], &a.lse[..n]);
    kernels::cross_entropy_backward(dlogits, logits, lse, targets, scale / n as f32);
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
mod tests;
