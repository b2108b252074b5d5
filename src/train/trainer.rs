//! The training loop: data preparation on first use, AdamW with warm-up and cosine decay,
//! gradient accumulation and clipping, periodic evaluation, JSON-lines metrics, and checkpoints
//! that resume bit for bit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::data::{self, Batcher, Meta, PrepareOptions, TokenFile};
use crate::error::{write_atomic, Error, Result};
use crate::kernels::Precision;
use crate::models::gpt::checkpoint::{self, OPTIMIZER_FILE, STATE_FILE, TOKENIZER_FILE};
use crate::models::gpt::GptConfig;
use crate::nn::tensor_io;
use crate::tokenizer::Tokenizer;
use crate::train::backend::{Backend, CandleBackend, FastBackend};
use crate::train::config::{cache_dir, resolve_data_path, BackendKind, TrainConfig};
use crate::train::driver::{self, Metrics, Plan, Run, Stop, Update};
use crate::train::optim::{decay_ranges, AdamW};
use crate::train::progress::{json_line, Clock, Event};

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub config: PathBuf,
    pub out: PathBuf,
    /// Stop after this step without changing the schedule the config defines.
    pub max_iters: Option<usize>,
    pub resume: bool,
    /// Start a fresh run over a checkpoint already in `out` (else refused, unless `resume`).
    pub overwrite: bool,
}

/// One logged step. `val_loss` is present on evaluation steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepLog {
    pub step: usize,
    pub train_loss: f32,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_sec: f64,
    pub elapsed_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub step: usize,
    pub final_train_loss: Option<f32>,
    pub final_val_loss: Option<f32>,
    pub out: PathBuf,
    pub elapsed_s: f64,
    pub interrupted: bool,
}

/// Everything a checkpoint needs besides weights and optimizer moments.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub step: usize,
    pub adam_step: u64,
    pub data_rng: (u64, u128),
    pub dropout_rng: (u64, u128),
    pub config: TrainConfig,
    pub last_val_loss: Option<f32>,
}

/// Prepares (or reuses) the token files for `cfg.data` in the cache and returns their folder.
pub fn prepared_data(cfg: &TrainConfig) -> Result<PathBuf> {
    use sha2::Digest;
    let corpus = resolve_data_path(&cfg.data.corpus);
    let val = cfg.data.val_corpus.as_deref().map(resolve_data_path);
    let tokenizer_file = cfg.tokenizer_path();
    // Key the cache on the corpus contents and the tokenization settings (a given tokenizer.json
    // by its contents).
    let mut h = sha2::Sha256::new();
    for p in std::iter::once(&corpus)
        .chain(val.iter())
        .chain(tokenizer_file.iter())
    {
        let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
        h.update(&bytes);
        h.update([0u8]);
    }
    h.update(
        format!(
            "{:?}|{:?}|{}",
            cfg.data.tokenizer, cfg.data.vocab_size, cfg.data.val_fraction
        )
        .as_bytes(),
    );
    let key = h
        .finalize()
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let stem = corpus
        .file_name()
        .map(|s| s.to_string_lossy().replace('.', "_"))
        .unwrap_or_default();
    let dir = cache_dir().join("data").join(format!("{stem}-{key}"));
    if Meta::load(&dir).is_ok() {
        return Ok(dir);
    }
    data::prepare(&PrepareOptions {
        input: corpus,
        val_input: val,
        tokenizer: cfg.data.tokenizer,
        vocab_size: cfg.data.vocab_size,
        val_fraction: cfg.data.val_fraction,
        tokenizer_file,
        out: dir.clone(),
    })?;
    Ok(dir)
}

/// The model config completed with the data's vocabulary, and checked against it.
pub fn model_config(cfg: &TrainConfig, meta: &Meta, tok_path: &Path) -> Result<GptConfig> {
    let mut m = cfg.model.clone();
    if m.vocab_size == 0 {
        m.vocab_size = match &cfg.train.init_from {
            // A checkpoint's vocabulary may be padded beyond its tokenizer's.
            Some(dir) => checkpoint::load_config(dir)?
                .vocab_size
                .max(meta.vocab_size),
            None => meta.vocab_size,
        };
    } else if m.vocab_size < meta.vocab_size {
        return Err(Error::VocabMismatch {
            path: tok_path.to_path_buf(),
            tokenizer: meta.vocab_size,
            model: m.vocab_size,
        });
    }
    m.validate()?;
    Ok(m)
}

pub fn make_backend(cfg: &TrainConfig, m: &GptConfig, params: &[f32]) -> Result<Box<dyn Backend>> {
    let use_fast = match cfg.train.backend {
        BackendKind::Fast => {
            if m.dropout > 0.0 {
                return Err(Error::Invalid(
                    "backend = \"fast\" does not support dropout > 0; use \"candle\" or \"auto\""
                        .into(),
                ));
            }
            true
        }
        BackendKind::Candle => false,
        BackendKind::Auto => m.dropout == 0.0,
    };
    let precision = cfg.train.precision;
    if use_fast {
        precision.check_supported()?;
        let mut fast = FastBackend::new(m, params, cfg.train.batch_size)?;
        fast.model.set_precision(precision);
        Ok(Box::new(fast))
    } else if precision != Precision::F32 {
        Err(Error::Invalid(format!(
            "precision = {:?} needs the fast path (backend \"fast\" or \"auto\" with dropout = 0); \
             the candle backend trains in fp32",
            cfg.train.precision.name()
        )))
    } else {
        Ok(Box::new(CandleBackend::new(
            m,
            params,
            &candle_core::Device::Cpu,
            cfg.train.seed ^ 0x5eed,
        )?))
    }
}

/// The weights a fresh run starts from: the `init_from` checkpoint's, which must have the same
/// architecture, or a random init.
fn initial_params(cfg: &TrainConfig, m: &GptConfig) -> Result<Vec<f32>> {
    let Some(dir) = &cfg.train.init_from else {
        return Ok(crate::models::gpt::init_params(m, cfg.train.seed));
    };
    let base = checkpoint::load_config(dir)?;
    // Dropout is a training setting, not part of the architecture.
    let arch = |c: &GptConfig| GptConfig {
        dropout: 0.0,
        ..c.clone()
    };
    if arch(&base) != arch(m) {
        return Err(Error::BadConfig {
            path: dir.join(checkpoint::CONFIG_FILE),
            msg: format!(
                "init_from: the checkpoint's architecture ({}) differs from [model] ({}); \
                 give [model] the checkpoint's n_layer, n_head, n_embd, block_size, bias, \
                 activation and vocab_size",
                describe(&base),
                describe(m)
            ),
        });
    }
    Ok(checkpoint::load_model(dir)?.params)
}

fn describe(c: &GptConfig) -> String {
    format!(
        "n_layer {}, n_head {}, n_embd {}, block_size {}, vocab {}, bias {}, {}, eps {}",
        c.n_layer,
        c.n_head,
        c.n_embd,
        c.block_size,
        c.vocab_size,
        c.bias,
        c.activation,
        c.layer_norm_epsilon
    )
}

/// Runs (or resumes) a training run. `on_event` sees every step; metrics are appended to
/// `OUT/metrics.jsonl`, and a checkpoint is written on evaluation steps and whenever the run
/// stops (at `max_iters`, at the end, or on Ctrl-C).
pub fn train(opts: &TrainOptions, mut on_event: impl FnMut(&Event)) -> Result<TrainSummary> {
    let t0 = Instant::now();
    let (cfg, resume_state) = open_run(opts)?;
    let data_dir = prepared_data(&cfg)?;
    let meta = Meta::load(&data_dir)?;
    let tok_path = data_dir.join(TOKENIZER_FILE);
    let tokenizer = Tokenizer::from_file(&tok_path)?;
    let m = model_config(&cfg, &meta, &tok_path)?;
    let (b, t) = (cfg.train.batch_size, m.block_size);

    let train_file = TokenFile::open(&data_dir.join("train.bin"), &meta.dtype)?;
    let mut batcher = Batcher::new(train_file, b, t, cfg.train.seed)?;
    let val_path = data_dir.join("val.bin");
    // Fail early if the validation split is too short.
    Batcher::new(TokenFile::open(&val_path, &meta.dtype)?, b, t, 0)?;

    let (mut opt, start, params, last_val) =
        restore(opts, &cfg, &m, resume_state.as_ref(), &mut batcher)?;
    let mut backend = make_backend(&cfg, &m, &params)?;
    if let Some(state) = &resume_state {
        backend.set_rng_state(state.dropout_rng.0, state.dropout_rng.1);
    }
    let end = opts
        .max_iters
        .map_or(cfg.train.max_iters, |x| x.min(cfg.train.max_iters));
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let (params, name) = (m.num_params(), backend.name());
    let text = if start >= end {
        format!("the run is already at step {start} of {end}; nothing to train")
    } else {
        format!(
            "training {:.2}M parameters ({name} backend), steps {}..{end}, data in {}",
            params as f64 / 1e6,
            start + 1,
            data_dir.display()
        )
    };
    let json = json!({"event": "start", "start_step": start, "end_step": end, "params": params,
        "backend": name, "data": data_dir});
    on_event(&Event::Start {
        done: start,
        end,
        text,
        json: Some(json_line(&json)),
    });
    let plan = Plan {
        end,
        pause_at: None,
        clock: Clock::new(0.0, 0.0),
        schedule: cfg.schedule(),
        grad_clip: cfg.train.grad_clip,
    };
    let mut lm = Lm {
        out: &opts.out,
        cfg: &cfg,
        m: &m,
        tokenizer: &tokenizer,
        backend,
        batcher,
        batch: (Vec::new(), Vec::new()),
        val: (&val_path, &meta.dtype),
        first: true,
        last_train: None,
        last_val,
        metrics: Metrics::open(&opts.out, true),
        t0,
        on_event,
    };
    let (step, stop) = driver::run(&mut lm, &mut opt, &plan, start)?;
    if step == start && resume_state.is_none() {
        lm.save(step, &opt)?;
    }
    let summary = TrainSummary {
        step,
        final_train_loss: lm.last_train,
        final_val_loss: lm.last_val,
        out: opts.out.clone(),
        elapsed_s: t0.elapsed().as_secs_f64(),
        interrupted: stop == Stop::Interrupted,
    };
    let text = format!(
        "step {}: val loss {}, checkpoint in {} ({:.0} s){}",
        summary.step,
        summary
            .final_val_loss
            .map_or("-".into(), |v| format!("{v:.4}")),
        summary.out.display(),
        summary.elapsed_s,
        if summary.interrupted {
            " (interrupted)"
        } else {
            ""
        }
    );
    let json = json_line(&json!({"event": "done", "summary": summary}));
    (lm.on_event)(&Event::Done { text, json });
    Ok(summary)
}

/// A language-model run inside the training loop.
struct Lm<'a, F> {
    out: &'a Path,
    cfg: &'a TrainConfig,
    m: &'a GptConfig,
    tokenizer: &'a Tokenizer,
    backend: Box<dyn Backend>,
    batcher: Batcher,
    /// The micro-batch buffers (inputs, targets), reused across steps.
    batch: (Vec<u32>, Vec<u32>),
    /// The validation tokens and their dtype.
    val: (&'a Path, &'a str),
    first: bool,
    last_train: Option<f32>,
    last_val: Option<f32>,
    metrics: Metrics,
    t0: Instant,
    on_event: F,
}

impl<F: FnMut(&Event)> Run for Lm<'_, F> {
    type Stats = f32;

    /// `grad_accum` micro-batches forward and backward; returns the loss. The first step of a
    /// run checks that every parameter received a gradient.
    fn forward_backward(&mut self, step: usize) -> Result<f32> {
        let (b, t, accum) = (
            self.cfg.train.batch_size,
            self.m.block_size,
            self.cfg.train.grad_accum,
        );
        let loss = accumulate(
            self.backend.as_mut(),
            &mut self.batcher,
            &mut self.batch,
            (b, t, accum),
        )?;
        if std::mem::take(&mut self.first) {
            check_gradients(self.m, self.backend.params_and_grads().1)?;
        }
        if !loss.is_finite() {
            return Err(Error::Invalid(format!(
                "the loss became {loss} at step {}; lower the learning rate",
                step + 1
            )));
        }
        Ok(loss)
    }

    fn params_and_grads(&mut self) -> (&mut [f32], &[f32]) {
        let (p, g) = self.backend.params_and_grads();
        (p, g)
    }

    fn params_updated(&mut self) -> Result<()> {
        self.backend.params_updated()
    }

    /// Evaluates every `eval_interval` steps and at the end, logs every `log_interval` steps and
    /// on evaluations, and saves a checkpoint on evaluations and when the run stops.
    fn after_step(&mut self, loss: f32, u: &Update, opt: &AdamW) -> Result<()> {
        let tr = &self.cfg.train;
        let (b, t) = (tr.batch_size, self.m.block_size);
        self.last_train = Some(loss);
        let is_eval = u.step.is_multiple_of(tr.eval_interval) || u.stop == Some(Stop::End);
        let val_loss = if is_eval {
            let (path, dtype) = self.val;
            let v = evaluate(
                self.backend.as_mut(),
                path,
                dtype,
                b,
                t,
                tr.eval_iters,
                tr.seed,
            )?;
            self.last_val = Some(v);
            Some(v)
        } else {
            None
        };
        let log = StepLog {
            step: u.step,
            train_loss: loss,
            lr: u.lr,
            grad_norm: u.grad_norm,
            tokens_per_sec: (b * t * tr.grad_accum) as f64 / u.secs,
            elapsed_s: self.t0.elapsed().as_secs_f64(),
            val_loss,
        };
        if is_eval || u.step.is_multiple_of(tr.log_interval) {
            self.metrics.push(&log)?;
            self.metrics.write()?;
        }
        (self.on_event)(&Event::Step {
            step: u.step,
            status: format!(
                "loss {:.4}, {:.0} tok/s, lr {:.2e}",
                log.train_loss, log.tokens_per_sec, log.lr
            ),
            json: Some(json_line(&log)),
        });
        if let Some(v) = val_loss {
            let text = format!("step {:>6}: train loss {loss:.4}, val loss {v:.4}", u.step);
            (self.on_event)(&Event::Note {
                text: Some(text),
                json: None,
            });
        }
        if is_eval || u.stop.is_some() {
            self.save(u.step, opt)?;
        }
        Ok(())
    }
}

/// Zeroes the gradients, then runs forward and backward over `accum` micro-batches of (B, T)
/// from `batcher` (through the reused buffers `batch`), each scaled by 1/accum; returns the
/// mean loss.
pub fn accumulate(
    backend: &mut dyn Backend,
    batcher: &mut Batcher,
    (x, y): &mut (Vec<u32>, Vec<u32>),
    (b, t, accum): (usize, usize, usize),
) -> Result<f32> {
    backend.zero_grad();
    let mut loss = 0.0f32;
    for _ in 0..accum {
        batcher.next_batch(x, y);
        loss += backend.forward_backward(x, y, b, t, 1.0 / accum as f32)? / accum as f32;
    }
    Ok(loss)
}

/// The run's config, and its trainer state when resuming (which must have been written with the
/// same config); a fresh run refuses an `out` that already holds a checkpoint unless `overwrite`.
fn open_run(opts: &TrainOptions) -> Result<(TrainConfig, Option<TrainerState>)> {
    let state_path = opts.out.join(STATE_FILE);
    Ok(if opts.resume {
        let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
        let state: TrainerState =
            serde_json::from_str(&text).map_err(|e| Error::CorruptCheckpoint {
                path: state_path.clone(),
                msg: e.to_string(),
            })?;
        let cfg = TrainConfig::load(&opts.config)?;
        if cfg != state.config {
            return Err(Error::BadConfig {
                path: opts.config.clone(),
                msg: format!(
                    "differs from the config of the checkpoint in {}; resume with the same config",
                    opts.out.display()
                ),
            });
        }
        (cfg, Some(state))
    } else {
        if state_path.exists() && !opts.overwrite {
            return Err(Error::Invalid(format!(
                "{} already holds a training checkpoint; pass --resume to continue it, --force to start over, or choose another --out",
                opts.out.display()
            )));
        }
        (TrainConfig::load(&opts.config)?, None)
    })
}

/// AdamW, the first step, the parameters and the last validation loss: from the checkpoint in
/// `opts.out` when resuming (also restoring the data order), else fresh.
fn restore(
    opts: &TrainOptions,
    cfg: &TrainConfig,
    m: &GptConfig,
    resume_state: Option<&TrainerState>,
    batcher: &mut Batcher,
) -> Result<(AdamW, usize, Vec<f32>, Option<f32>)> {
    let n = m.num_params();
    let mut opt = AdamW::new(
        n,
        cfg.train.beta1,
        cfg.train.beta2,
        cfg.train.eps,
        cfg.train.weight_decay,
        decay_ranges(m),
    );
    let (start, params, last_val) = match resume_state {
        Some(state) => {
            let model_path = opts.out.join(checkpoint::MODEL_FILE);
            let loaded = tensor_io::load_tensors(&model_path)?;
            check_step(&loaded.metadata, state.step, &model_path)?;
            let params = checkpoint::flat_params(m, &loaded, &model_path)?;
            let opt_path = opts.out.join(OPTIMIZER_FILE);
            let meta = opt.load_moments(&opt_path, "")?;
            check_step(&meta, state.step, &opt_path)?;
            opt.step = state.adam_step;
            batcher.set_rng_state(state.data_rng.0, state.data_rng.1);
            (state.step, params, state.last_val_loss)
        }
        None => (0, initial_params(cfg, m)?, None),
    };
    Ok((opt, start, params, last_val))
}

fn check_step(meta: &HashMap<String, String>, step: usize, path: &Path) -> Result<()> {
    match meta.get("step").and_then(|s| s.parse::<usize>().ok()) {
        Some(s) if s == step => Ok(()),
        other => Err(Error::CorruptCheckpoint {
            path: path.to_path_buf(),
            msg: format!("it holds step {other:?} but trainer_state.json says step {step}"),
        }),
    }
}

/// On the first step, every parameter tensor must have received a finite, non-zero gradient.
fn check_gradients(m: &GptConfig, grads: &[f32]) -> Result<()> {
    let mut off = 0;
    for (name, shape) in m.param_shapes() {
        let n: usize = shape.iter().product();
        let g = &grads[off..off + n];
        if g.iter().any(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "parameter {name} received a non-finite gradient on the first step"
            )));
        }
        if g.iter().all(|&v| v == 0.0) {
            return Err(Error::Invalid(format!(
                "parameter {name} received no gradient on the first step"
            )));
        }
        off += n;
    }
    Ok(())
}

/// Mean val loss over `iters` batches drawn with a fixed seed, so every evaluation sees the same
/// batches and training's data order is untouched.
pub fn evaluate(
    backend: &mut dyn Backend,
    val: &Path,
    dtype: &str,
    b: usize,
    t: usize,
    iters: usize,
    seed: u64,
) -> Result<f32> {
    let mut batcher = Batcher::new(
        TokenFile::open(val, dtype)?,
        b,
        t,
        seed.wrapping_add(0xe7a1),
    )?;
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut total = 0.0f64;
    for _ in 0..iters {
        batcher.next_batch(&mut x, &mut y);
        total += backend.eval_loss(&x, &y, b, t)? as f64;
    }
    Ok((total / iters as f64) as f32)
}

impl<F> Lm<'_, F> {
    /// The checkpoint after `step` steps: weights, tokenizer, AdamW moments and trainer state.
    fn save(&self, step: usize, opt: &AdamW) -> Result<()> {
        let out = self.out;
        checkpoint::save_model(
            out,
            self.m,
            self.backend.params(),
            self.tokenizer.eos_id(),
            Some(step as u64),
            false,
        )?;
        self.tokenizer.save(&out.join(TOKENIZER_FILE))?;
        let meta = HashMap::from([("step".to_string(), step.to_string())]);
        opt.save_moments(&out.join(OPTIMIZER_FILE), "", meta)?;
        let state = TrainerState {
            step,
            adam_step: opt.step,
            data_rng: self.batcher.rng_state(),
            dropout_rng: self.backend.rng_state(),
            config: self.cfg.clone(),
            last_val_loss: self.last_val,
        };
        write_atomic(
            &out.join(STATE_FILE),
            serde_json::to_string_pretty(&state)
                .expect("state serializes")
                .as_bytes(),
        )
    }
}
