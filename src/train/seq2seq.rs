//! Training sequence-to-sequence models on a parallel corpus.
//!
//! `train_seq2seq` reads the TOML config (`configs/multi30k-*.toml`): the corpus, a joint
//! byte-level BPE trained on the training pairs with `tokenizers`, length-bucketed batches of
//! at most `max_tokens` padded tokens, AdamW with warm-up then inverse-square-root or cosine
//! decay, label-smoothed cross-entropy, and a validation pass each epoch. The checkpoint with
//! the lowest validation loss is kept: `model.safetensors`, `config.json`, `tokenizer.json`,
//! beside `metrics.jsonl`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::parallel::{self, PairSource, Pairs};
use crate::error::{write_atomic, Error, Result};
use crate::models::seq2seq::{ModelConfig, Seq2Seq};
use crate::nn::loss::smoothed_cross_entropy;
use crate::nn::params::{add_var_grads, set_vars, Params};
use crate::tokenizer::Tokenizer;
use crate::train::config::data_dir;
use crate::train::driver::{self, Metrics, Plan, Run, Update};
use crate::train::optim::{AdamW, Decay, Order, Schedule};
use crate::train::progress::{json_line, Clock, Event};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seq2SeqTrainConfig {
    pub data: ParallelDataConfig,
    pub model: ModelConfig,
    pub train: Seq2SeqOptim,
}

/// The corpus: separate train/valid(/test) files, or one corpus split by seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParallelDataConfig {
    pub train: PairSource,
    #[serde(default)]
    pub valid: Option<PairSource>,
    #[serde(default)]
    pub test: Option<PairSource>,
    /// Translate target → source (a TSV of English<TAB>French read as fr→en, say).
    #[serde(default)]
    pub reverse: bool,
    /// Without `valid`: pairs held out of `train` by a seeded permutation.
    #[serde(default)]
    pub split: Option<SplitConfig>,
    /// Joint BPE vocabulary size.
    pub vocab_size: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    pub seed: u64,
    pub valid: usize,
    pub test: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seq2SeqOptim {
    /// Padded tokens per batch (rows × longest side).
    pub max_tokens: usize,
    pub epochs: usize,
    /// Stop after this many minutes of training (0 = no limit); the epoch in progress ends early.
    #[serde(default)]
    pub max_minutes: f64,
    pub learning_rate: f64,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default)]
    pub schedule: LrDecay,
    #[serde(default)]
    pub min_lr: f64,
    #[serde(default = "default_smoothing")]
    pub label_smoothing: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default)]
    pub grad_clip: f64,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "default_log")]
    pub log_interval: usize,
}

/// The learning rate after warm-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrDecay {
    /// lr·√(warmup/step), the original Transformer's.
    #[default]
    InverseSqrt,
    /// Cosine from lr to min_lr over the run: its progress is the larger of steps done over
    /// the steps of `epochs` and time spent over `max_minutes`, so a time-limited run still
    /// ends annealed.
    Cosine,
}
fn default_smoothing() -> f64 {
    0.1
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.98
}
fn default_eps() -> f64 {
    1e-9
}
fn default_seed() -> u64 {
    1337
}
fn default_log() -> usize {
    50
}

impl Seq2SeqTrainConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Self = toml::from_str(&text).map_err(|e| Error::BadConfig {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        if cfg.train.epochs == 0 || cfg.train.log_interval == 0 || cfg.train.max_tokens == 0 {
            return Err(Error::BadConfig {
                path: path.to_path_buf(),
                msg: "epochs, log_interval and max_tokens must be at least 1".into(),
            });
        }
        cfg.model.validate().map_err(|e| Error::BadConfig {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        Ok(cfg)
    }
}

/// The train/valid/test pairs a config names.
pub fn load_splits(cfg: &ParallelDataConfig) -> Result<(Pairs, Pairs, Option<Pairs>)> {
    let root = data_dir();
    let orient = |p: Pairs| if cfg.reverse { p.reversed() } else { p };
    let all = orient(cfg.train.read(&root)?);
    match (&cfg.valid, &cfg.split) {
        (Some(v), _) => {
            let test = cfg
                .test
                .as_ref()
                .map(|t| t.read(&root))
                .transpose()?
                .map(orient);
            Ok((all, orient(v.read(&root)?), test))
        }
        (None, Some(s)) => {
            let (tr, v, t) = parallel::split_indices(all.len(), s.seed, s.valid, s.test)?;
            let test = (s.test > 0).then(|| all.select(&t));
            Ok((all.select(&tr), all.select(&v), test))
        }
        (None, None) => Err(Error::Invalid(
            "[data] needs a valid corpus or a split { seed, valid, test }".into(),
        )),
    }
}

/// One line of metrics.jsonl.
#[derive(Debug, Clone, Serialize)]
pub struct Seq2SeqLog {
    pub step: usize,
    pub epoch: usize,
    /// Mean NLL per target token since the last line (comparable with `val_loss`).
    pub train_loss: Option<f64>,
    /// The optimized objective: label-smoothed cross-entropy.
    pub train_objective: Option<f64>,
    pub val_loss: Option<f64>,
    pub val_ppl: Option<f64>,
    pub lr: f64,
    pub tokens_per_sec: f64,
    pub elapsed_s: f64,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize)]
pub struct Seq2SeqSummary {
    pub out_dir: PathBuf,
    pub steps: usize,
    pub epochs_done: f64,
    pub best_val_loss: f64,
    pub best_val_ppl: f64,
    pub train_pairs: usize,
    pub dropped_empty: usize,
    pub dropped_long: usize,
    pub params: usize,
    pub tokens_per_sec: f64,
    pub elapsed_s: f64,
    pub peak_rss_mb: f64,
}

impl Seq2SeqOptim {
    /// Linear warm-up, then inverse square root or cosine over `total` steps (by steps or time).
    fn schedule(&self, total: usize) -> Schedule {
        Schedule {
            peak: self.learning_rate,
            warmup: self.warmup_steps,
            warmup_div: self.warmup_steps,
            decay: match self.schedule {
                LrDecay::Cosine => Decay::Cosine {
                    min: self.min_lr,
                    end: total,
                    from: self.warmup_steps,
                    ahead: 1,
                },
                LrDecay::InverseSqrt => Decay::InverseSqrt,
            },
        }
    }
}

/// A batch as tensors: source ids and key mask, decoder inputs (start token + target), targets
/// (target + end token) and their weights (0 on padding).
struct Batch {
    src: Vec<Vec<u32>>,
    tgt_in: Tensor,
    targets: Vec<u32>,
    weights: Vec<f32>,
    tokens: usize,
}

fn make_batch(
    src: &[Vec<u32>],
    tgt: &[Vec<u32>],
    idx: &[usize],
    cfg: &ModelConfig,
    device: &Device,
) -> Result<Batch> {
    let (bos_id, eos_id, pad_id) = cfg.ids();
    let rows: Vec<Vec<u32>> = idx.iter().map(|&i| src[i].clone()).collect();
    let t = idx.iter().map(|&i| tgt[i].len() + 1).max().unwrap_or(1);
    let (mut tin, mut tout, mut w) = (Vec::new(), Vec::new(), Vec::new());
    for &i in idx {
        let y = &tgt[i];
        let mut a = vec![bos_id];
        a.extend_from_slice(y);
        let mut b = y.clone();
        b.push(eos_id);
        let pad = t - a.len();
        w.extend(std::iter::repeat_n(1f32, a.len()).chain(std::iter::repeat_n(0.0, pad)));
        a.extend(std::iter::repeat_n(pad_id, pad));
        b.extend(std::iter::repeat_n(pad_id, pad));
        tin.extend(a);
        tout.extend(b);
    }
    let n = idx.len();
    let tokens = idx.iter().map(|&i| src[i].len() + tgt[i].len() + 1).sum();
    Ok(Batch {
        src: rows,
        tgt_in: Tensor::from_vec(tin, (n, t), device)?,
        targets: tout,
        weights: w,
        tokens,
    })
}

/// Mean validation (NLL, per target token) of `model` over the pairs.
fn validate(
    model: &Seq2Seq,
    src: &[Vec<u32>],
    tgt: &[Vec<u32>],
    max_tokens: usize,
    device: &Device,
) -> Result<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (mut sum, mut n) = (0f64, 0f64);
    for idx in parallel::token_batches(src, tgt, max_tokens, &mut rng) {
        let b = make_batch(src, tgt, &idx, &model.config(), device)?;
        let logits = model.forward(&b.src, &b.tgt_in, None)?;
        let v = logits.dim(2)?;
        let (_, nll) =
            smoothed_cross_entropy(&logits.reshape(((), v))?, &b.targets, &b.weights, 0.0)?;
        let count = b.weights.iter().sum::<f32>() as f64;
        sum += nll * count;
        n += count;
    }
    Ok(sum / n.max(1.0))
}

/// Saves the model's parameters, config and tokenizer to `dir` (each file written atomically).
fn save(dir: &Path, params: &Params, cfg: &ModelConfig, tok: &Tokenizer) -> Result<()> {
    let tensors: HashMap<String, Tensor> = params
        .vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    // candle writes the file; a unique temporary name, synced, then renamed over the old one.
    let path = dir.join("model.safetensors");
    let tmp = dir.join(format!(".model.safetensors.tmp{}", std::process::id()));
    let _registered = crate::error::TempPath::register(&tmp);
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
    let json = serde_json::to_vec_pretty(cfg).map_err(|e| Error::Invalid(e.to_string()))?;
    write_atomic(&dir.join("config.json"), &json)?;
    write_atomic(&dir.join("tokenizer.json"), tok.to_json()?.as_bytes())
}

/// The splits (the held-out ones written to `out` as plain files), the joint BPE learned on the
/// training pairs, the model config with its vocabulary, and the tokenized, length-filtered
/// training and validation pairs.
fn prepare_data(
    cfg: &Seq2SeqTrainConfig,
    out: &Path,
) -> Result<(Tokenizer, ModelConfig, parallel::Encoded, parallel::Encoded)> {
    let (train, valid, test) = load_splits(&cfg.data)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // The held-out pairs as plain files, for `decodex translate` and `decodex eval bleu`.
    for (name, pairs) in [("valid", Some(&valid)), ("test", test.as_ref())] {
        if let Some(p) = pairs {
            write_atomic(
                &out.join(format!("{name}.src")),
                (p.src.join("\n") + "\n").as_bytes(),
            )?;
            write_atomic(
                &out.join(format!("{name}.ref")),
                (p.tgt.join("\n") + "\n").as_bytes(),
            )?;
        }
    }
    // The joint vocabulary, learned from the training pairs only.
    let texts: Vec<&str> = train
        .src
        .iter()
        .chain(&train.tgt)
        .map(|s| s.as_str())
        .collect();
    let joined = texts.join("\n");
    let tok = Tokenizer::train_bpe(&[joined.as_str()], cfg.data.vocab_size)?;
    let special = tok
        .eos_id()
        .ok_or_else(|| Error::Invalid("the BPE has no end token".into()))?;
    let mut mcfg = cfg.model.clone();
    mcfg.set_vocab(tok.vocab_size(), special);
    let encode = |lines: &[String]| -> Result<Vec<Vec<u32>>> {
        lines.iter().map(|l| tok.encode(l.trim())).collect()
    };
    let tr = parallel::clean(encode(&train.src)?, encode(&train.tgt)?, mcfg.max_len());
    let va = parallel::clean(encode(&valid.src)?, encode(&valid.tgt)?, mcfg.max_len());
    if va.src.is_empty() {
        return Err(Error::Invalid(
            "no validation pair survives the length filter; the best checkpoint is chosen on them"
                .into(),
        ));
    }
    mcfg.validate()?;
    if tr.src.is_empty() {
        return Err(Error::Invalid(
            "no training pair survives the length filter".into(),
        ));
    }
    Ok((tok, mcfg, tr, va))
}

/// Trains from `config` into `out`; `on_event` sees the start, each metrics line and the summary.
pub fn train_seq2seq(
    config: &Path,
    out: &Path,
    mut on_event: impl FnMut(&Event),
) -> Result<Seq2SeqSummary> {
    let cfg = Seq2SeqTrainConfig::from_file(config)?;
    let device = Device::Cpu;
    let t0 = Instant::now();
    let (tok, mcfg, tr, va) = prepare_data(&cfg, out)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let o = &cfg.train;
    let mut params = Params::init(ChaCha8Rng::seed_from_u64(o.seed), &device);
    let model = Seq2Seq::new(&mcfg, &mut params, &device)?;
    let flat = params
        .vars
        .iter()
        .map(|(_, v)| Ok(v.as_tensor().flatten_all()?.to_vec1::<f32>()?))
        .collect::<Result<Vec<_>>>()?
        .concat();
    let n = flat.len();
    // candle-nn's AdamW, as this trainer always used: every parameter decays.
    let mut opt = AdamW::new(n, o.beta1, o.beta2, o.eps, o.weight_decay, vec![(0, n)]);
    opt.order = Order::Candle;
    let batch_rng = ChaCha8Rng::seed_from_u64(o.seed);
    let per_epoch =
        parallel::token_batches(&tr.src, &tr.tgt, o.max_tokens, &mut batch_rng.clone()).len();
    let plan = Plan {
        end: per_epoch * o.epochs,
        pause_at: None,
        clock: Clock::new(0.0, o.max_minutes * 60.0),
        schedule: o.schedule(per_epoch * o.epochs),
        grad_clip: o.grad_clip,
    };
    on_event(&Event::Start {
        done: 0,
        end: plan.end,
        text: format!(
            "training {:.2}M parameters on {} pairs, {} steps",
            n as f64 / 1e6,
            tr.src.len(),
            plan.end
        ),
        json: None,
    });
    let mut run = S2s {
        o,
        out,
        mcfg: &mcfg,
        tok: &tok,
        data: (&tr, &va),
        model,
        params: &params,
        device,
        flat,
        grads: vec![0.0; n],
        norm: 0.0,
        drop_rng: RefCell::new(ChaCha8Rng::seed_from_u64(o.seed ^ 0x5eed)),
        batch_rng,
        batches: Vec::new(),
        plan,
        window: Window::new(),
        train_tokens: 0,
        train_start: Instant::now(),
        epochs_done: 0.0,
        best: f64::INFINITY,
        metrics: Metrics::open(out, false),
        t0,
        on_event,
    };
    let (steps, _) = driver::run(&mut run, &mut opt, &plan, 0)?;
    let best = run.best;
    let summary = Seq2SeqSummary {
        out_dir: out.to_path_buf(),
        steps,
        epochs_done: run.epochs_done,
        best_val_loss: best,
        best_val_ppl: best.exp(),
        train_pairs: tr.src.len(),
        dropped_empty: tr.dropped_empty,
        dropped_long: tr.dropped_long,
        params: n,
        tokens_per_sec: run.train_tokens as f64 / run.train_start.elapsed().as_secs_f64(),
        elapsed_s: t0.elapsed().as_secs_f64(),
        peak_rss_mb: crate::train::bench::peak_rss_mb(),
    };
    let text = format!(
        "trained {:.2}M parameters for {} steps ({:.2} epochs) in {:.0} s: best val loss {:.4} (ppl {:.2}), {:.0} tok/s, peak RSS {:.0} MiB; model in {}",
        summary.params as f64 / 1e6,
        summary.steps,
        summary.epochs_done,
        summary.elapsed_s,
        summary.best_val_loss,
        summary.best_val_ppl,
        summary.tokens_per_sec,
        summary.peak_rss_mb,
        summary.out_dir.display()
    );
    let json = json_line(&serde_json::json!({"event": "done", "summary": summary}));
    (run.on_event)(&Event::Done { text, json });
    Ok(summary)
}

/// The training sums since the last logged line.
struct Window {
    start: Instant,
    tokens: usize,
    objective: f64,
    nll: f64,
    batches: usize,
}

impl Window {
    fn new() -> Self {
        Window {
            start: Instant::now(),
            tokens: 0,
            objective: 0.0,
            nll: 0.0,
            batches: 0,
        }
    }
}

/// A sequence-to-sequence run inside the training loop: candle autograd, its parameters
/// mirrored in one flat vector for AdamW.
struct S2s<'a, F> {
    o: &'a Seq2SeqOptim,
    out: &'a Path,
    mcfg: &'a ModelConfig,
    tok: &'a Tokenizer,
    /// The tokenized training and validation pairs.
    data: (&'a parallel::Encoded, &'a parallel::Encoded),
    model: Seq2Seq,
    params: &'a Params,
    device: Device,
    /// The parameters in `params.vars` order, and their gradients.
    flat: Vec<f32>,
    grads: Vec<f32>,
    /// The step's gradient norm, as candle sums it (tensor by tensor); 0 without clipping.
    norm: f64,
    drop_rng: RefCell<ChaCha8Rng>,
    batch_rng: ChaCha8Rng,
    /// The epoch's batches (pair indices).
    batches: Vec<Vec<usize>>,
    plan: Plan,
    window: Window,
    train_tokens: usize,
    train_start: Instant,
    epochs_done: f64,
    best: f64,
    metrics: Metrics,
    t0: Instant,
    on_event: F,
}

impl<F: FnMut(&Event)> S2s<'_, F> {
    fn emit(&mut self, log: Seq2SeqLog) -> Result<()> {
        self.metrics.push(&log)?;
        self.metrics.write()?;
        let json = Some(json_line(&log));
        (self.on_event)(&if let Some(v) = log.val_loss {
            let text = format!(
                "epoch {} step {}: val loss {v:.4} (ppl {:.2}), {:.0} tok/s, {:.0} s",
                log.epoch,
                log.step,
                v.exp(),
                log.tokens_per_sec,
                log.elapsed_s
            );
            Event::Note {
                text: Some(text),
                json,
            }
        } else {
            let status = format!(
                "epoch {}: loss {:.4}, lr {:.2e}, {:.0} tok/s",
                log.epoch,
                log.train_loss.unwrap_or(f64::NAN),
                log.lr,
                log.tokens_per_sec
            );
            Event::Step {
                step: log.step,
                status,
                json,
            }
        });
        Ok(())
    }

    /// Validates, keeps the checkpoint if it is the best so far, and logs.
    fn evaluate(&mut self, step: usize, epoch: usize) -> Result<()> {
        let va = self.data.1;
        let vl = validate(
            &self.model,
            &va.src,
            &va.tgt,
            self.o.max_tokens,
            &self.device,
        )?;
        if vl < self.best {
            self.best = vl;
            save(self.out, self.params, self.mcfg, self.tok)?;
        }
        let log = Seq2SeqLog {
            step,
            epoch,
            train_loss: None,
            train_objective: None,
            val_loss: Some(vl),
            val_ppl: Some(vl.exp()),
            lr: self.plan.schedule.lr(step, self.plan.clock.fraction()),
            tokens_per_sec: self.train_tokens as f64 / self.train_start.elapsed().as_secs_f64(),
            elapsed_s: self.t0.elapsed().as_secs_f64(),
        };
        self.emit(log)
    }
}

impl<F: FnMut(&Event)> Run for S2s<'_, F> {
    /// (the smoothed objective, the plain NLL, the tokens) of the batch.
    type Stats = (f64, f64, usize);

    /// Forward with dropout, label-smoothed cross-entropy, backward; a new epoch's batches first.
    fn forward_backward(&mut self, step: usize) -> Result<Self::Stats> {
        let (o, tr) = (self.o, self.data.0);
        let per_epoch = self.plan.end / o.epochs;
        if step.is_multiple_of(per_epoch) {
            self.batches =
                parallel::token_batches(&tr.src, &tr.tgt, o.max_tokens, &mut self.batch_rng);
        }
        let idx = &self.batches[step % per_epoch];
        let b = make_batch(&tr.src, &tr.tgt, idx, self.mcfg, &self.device)?;
        let logits = self
            .model
            .forward(&b.src, &b.tgt_in, Some(&self.drop_rng))?;
        let v = logits.dim(2)?;
        let logits = logits.reshape(((), v))?;
        let (loss, nll) =
            smoothed_cross_entropy(&logits, &b.targets, &b.weights, o.label_smoothing)?;
        let grads = loss.backward()?;
        self.grads.fill(0.0);
        add_var_grads(&self.params.vars, &grads, 1.0, &mut self.grads)?;
        // The norm as candle sums it, tensor by tensor.
        let mut sq = 0f64;
        if o.grad_clip > 0.0 {
            for (_, var) in &self.params.vars {
                let g = grads.get(var.as_tensor()).expect("checked above");
                sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        self.norm = sq.sqrt();
        Ok((loss.to_scalar::<f32>()? as f64, nll, b.tokens))
    }

    fn params_and_grads(&mut self) -> (&mut [f32], &[f32]) {
        (&mut self.flat, &self.grads)
    }

    fn grad_norm(&mut self) -> Result<f64> {
        Ok(self.norm)
    }

    fn params_updated(&mut self) -> Result<()> {
        set_vars(&self.params.vars, &self.flat)
    }

    /// Logs every `log_interval` steps (the window's means); validates at each epoch's end and
    /// when the run stops early.
    fn after_step(
        &mut self,
        (objective, nll, tokens): Self::Stats,
        u: &Update,
        _: &AdamW,
    ) -> Result<()> {
        let w = &mut self.window;
        (w.objective, w.nll, w.batches, w.tokens) = (
            w.objective + objective,
            w.nll + nll,
            w.batches + 1,
            w.tokens + tokens,
        );
        self.train_tokens += tokens;
        let per_epoch = self.plan.end / self.o.epochs;
        let (epoch, bi) = ((u.step - 1) / per_epoch, (u.step - 1) % per_epoch);
        self.epochs_done = epoch as f64 + (bi + 1) as f64 / per_epoch as f64;
        if u.step.is_multiple_of(self.o.log_interval) {
            let w = std::mem::replace(&mut self.window, Window::new());
            let log = Seq2SeqLog {
                step: u.step,
                epoch,
                train_loss: Some(w.nll / w.batches as f64),
                train_objective: Some(w.objective / w.batches as f64),
                val_loss: None,
                val_ppl: None,
                lr: u.lr,
                tokens_per_sec: w.tokens as f64 / w.start.elapsed().as_secs_f64(),
                elapsed_s: self.t0.elapsed().as_secs_f64(),
            };
            self.emit(log)?;
        }
        if bi + 1 == per_epoch || u.stop.is_some() {
            self.evaluate(u.step, epoch)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn optim(schedule: &str) -> Seq2SeqOptim {
        toml::from_str(&format!(
            "max_tokens = 100\nepochs = 1\nlearning_rate = 1e-3\nmin_lr = 1e-5\nwarmup_steps = 10\nschedule = \"{schedule}\""
        ))
        .unwrap()
    }

    #[test]
    fn schedules_warm_up_then_decay_by_steps_or_time() {
        let s = optim("cosine").schedule(100);
        assert!((s.lr(4, 0.0) - 5e-4).abs() < 1e-12);
        assert!((s.lr(9, 0.0) - 1e-3).abs() < 1e-12);
        assert!((s.lr(99, 0.0) - 1e-5).abs() < 1e-9);
        // Half the time spent anneals as far as half the steps would.
        let by_time = s.lr(20, 0.5);
        let by_steps = s.lr(54, 0.0);
        assert!((by_time - by_steps).abs() < 1e-9 && by_time < 6e-4);
        let s = optim("inverse_sqrt").schedule(100);
        assert!((s.lr(39, 0.0) - 1e-3 * (10f64 / 40.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn batches_shift_targets_and_weight_out_padding() {
        let cfg: ModelConfig = serde_json::from_str(
            r#"{"arch": "rnn-seq2seq", "cell": "gru", "attention": "bahdanau", "emb_dim": 4,
                "enc_hidden": 4, "dec_hidden": 4, "bos_id": 1, "eos_id": 2, "pad_id": 0}"#,
        )
        .unwrap();
        let src = vec![vec![5, 6], vec![7]];
        let tgt = vec![vec![8, 9, 10], vec![11]];
        let b = make_batch(&src, &tgt, &[0, 1], &cfg, &Device::Cpu).unwrap();
        assert_eq!(
            b.tgt_in.to_vec2::<u32>().unwrap(),
            vec![vec![1, 8, 9, 10], vec![1, 11, 0, 0]]
        );
        assert_eq!(b.targets, vec![8, 9, 10, 2, 11, 2, 0, 0]);
        assert_eq!(b.weights, vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
        assert_eq!(b.src, src);
        assert_eq!(b.tokens, 2 + 3 + 1 + 1 + 1 + 1);
    }
}
