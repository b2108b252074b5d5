//! The fine-tuning loop: load the base (dequantized to f32), tokenize the data, train with
//! AdamW over the trained parameters only, evaluate, save, resume.
//!
//! Precision: f32 throughout (weights, activations, gradients, optimizer). A GGUF base's
//! Q4_1/Q8_0 blocks dequantize to f32 exactly, so training starts from the very function the
//! quantized file computes; bf16 matmuls would halve the time on AMX/AVX512-BF16 CPUs but move
//! the frozen base off that function, so they are not the default.
//!
//! Batches: examples are shuffled each epoch (seeded), cut into pools of 64, each pool sorted
//! by length and split into batches of at most `batch_tokens` tokens (length-bucketed); a batch
//! is packed without padding (`model::Packed`). The loss is the mean cross-entropy over the
//! batch's completion tokens. The learning rate warms up linearly, then follows a cosine to 10%
//! over the run, whose progress is the larger of step / max_steps and elapsed / time limit, so a
//! run bounded by time still anneals.
//!
//! Output folder: the adapter (LoRA, PEFT layout) or the whole model (full: `config.json`,
//! `model.safetensors`, `tokenizer.json`, a Hugging Face Llama folder), `metrics.jsonl`,
//! `loss.png`, and `trainer_state.safetensors` (AdamW moments, step, elapsed time) for
//! `--resume`.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::data::{self, Example, Overlong, Task};
use crate::error::{write_atomic, Error, Result};
use crate::models::llama::adapter;
use crate::models::llama::fast::{FtModel, Method, Packed};
use crate::models::llama::lora::{base_shapes, init_lora, LoraSpec};
use crate::models::llama::LlamaConfig;
use crate::models::pretrained::{self, Network, Pretrained};
use crate::nn::params::Flat;
use crate::nn::tensor_io;
use crate::train::driver::{self, Metrics, Plan, Run, Update};
use crate::train::optim::{AdamW, Decay, Schedule};
use crate::train::progress::{Clock, Event};

#[derive(Debug, Clone)]
pub struct FinetuneOptions {
    pub base: PathBuf,
    pub data: PathBuf,
    pub eval: Option<PathBuf>,
    pub task: Task,
    /// None: full fine-tuning.
    pub lora: Option<LoraSpec>,
    pub out: PathBuf,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_steps: usize,
    pub batch_tokens: usize,
    pub max_steps: usize,
    pub time_limit_min: f64,
    /// Save and stop after this step (the schedule still spans `max_steps`).
    pub pause_at: Option<usize>,
    pub max_len: usize,
    pub overlong: Overlong,
    pub train_examples: Option<usize>,
    /// Examples for the eval loss: the first of `eval`, or (without it) held out of the
    /// training file.
    pub eval_examples: usize,
    pub eval_every: usize,
    pub save_every: usize,
    pub grad_clip: f64,
    pub seed: u64,
    pub resume: bool,
}

/// Loads a Llama-family base as a trainable model in Hugging Face's layout.
pub fn load_base(path: &Path) -> Result<(Pretrained, Flat)> {
    let model = pretrained::load(path, true, None)?;
    let Network::Llama(llama) = &model.network else {
        return Err(Error::UnsupportedModel {
            path: path.to_path_buf(),
            msg: "fine-tuning needs a Llama-family base (GGUF or Hugging Face folder); a decodex GPT checkpoint continues training with `decodex train --init`".into(),
        });
    };
    let tensors: HashMap<String, candle_core::Tensor> = llama.hf_tensors()?.into_iter().collect();
    let mut flat = Flat::zeros(&base_shapes(&llama.cfg));
    for e in flat.entries.clone() {
        let t = &tensors[&e.name];
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        flat.data[e.offset..e.offset + e.len].copy_from_slice(&v);
    }
    Ok((model, flat))
}

fn cfg_of(model: &Pretrained) -> crate::models::llama::LlamaConfig {
    match &model.network {
        Network::Llama(l) => l.cfg.clone(),
        Network::Gpt(_) => unreachable!("load_base accepts Llama only"),
    }
}

/// Length-bucketed batches of example indices for one epoch.
pub fn epoch_batches(
    examples: &[Example],
    batch_tokens: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.shuffle(rng);
    let mut batches = Vec::new();
    for pool in order.chunks(64) {
        let mut pool = pool.to_vec();
        pool.sort_by_key(|&i| examples[i].tokens.len());
        let mut cur: Vec<usize> = Vec::new();
        let mut toks = 0;
        for i in pool {
            let n = examples[i].tokens.len();
            if !cur.is_empty() && toks + n > batch_tokens {
                batches.push(std::mem::take(&mut cur));
                toks = 0;
            }
            cur.push(i);
            toks += n;
        }
        if !cur.is_empty() {
            batches.push(cur);
        }
    }
    batches.shuffle(rng);
    batches
}

fn pack(examples: &[Example], idx: &[usize]) -> Packed {
    let mut p = Packed::default();
    for &i in idx {
        p.push(&examples[i].tokens, examples[i].first_target);
    }
    p
}

/// Mean completion-token loss over `examples`, in batches of `batch_tokens`.
pub fn eval_loss(model: &FtModel, examples: &[Example], batch_tokens: usize) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    let mut idx: Vec<usize> = (0..examples.len()).collect();
    idx.sort_by_key(|&i| examples[i].tokens.len());
    let mut cur = Vec::new();
    let mut toks = 0;
    let mut flush = |cur: &mut Vec<usize>| {
        let p = pack(examples, cur);
        let (l, _) = model.forward(&p, None, false);
        sum += l;
        n += p.targets.len();
        cur.clear();
    };
    for i in idx {
        if !cur.is_empty() && toks + examples[i].tokens.len() > batch_tokens {
            flush(&mut cur);
            toks = 0;
        }
        toks += examples[i].tokens.len();
        cur.push(i);
    }
    if !cur.is_empty() {
        flush(&mut cur);
    }
    sum / n.max(1) as f64
}

/// Linear warm-up, then a cosine to 10% of the peak by the larger of step / max_steps and the
/// time fraction.
fn schedule(o: &FinetuneOptions) -> Schedule {
    Schedule {
        peak: o.lr,
        warmup: o.warmup_steps,
        warmup_div: o.warmup_steps,
        decay: Decay::Cosine {
            min: 0.1 * o.lr,
            end: o.max_steps,
            from: 0,
            ahead: 0,
        },
    }
}

fn checksum(x: &[f32]) -> u64 {
    // FNV-1a over the bits: enough to tell whether any frozen weight moved.
    let mut h: u64 = 0xcbf29ce484222325;
    for v in x {
        for b in v.to_bits().to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

const STATE_FILE: &str = "trainer_state.safetensors";

/// Runs a fine-tuning; `on_event` sees each event, whose JSON lines are `start`, `step`, `eval`,
/// `saved` and `done` objects. Returns the `done` object.
pub fn finetune(o: &FinetuneOptions, mut on_event: impl FnMut(&Event)) -> Result<Value> {
    if o.lora.is_none() && o.resume && !o.out.join("model.safetensors").exists() {
        return Err(Error::Invalid(format!(
            "nothing to resume in {}",
            o.out.display()
        )));
    }
    if let Some(spec) = &o.lora {
        spec.validate()?;
    }
    let t_load = Instant::now();
    let d = prepare(o)?;
    let base_sum = o.lora.is_some().then(|| checksum(&d.base.data));
    let model = build_model(o, &d.cfg, d.base.clone())?;
    let n_params = model.params().data.len();
    let (mut opt, step, elapsed0) = optimizer(o, n_params)?;
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let start = json!({"event": "start", "method": if o.lora.is_some() {"lora"} else {"full"},
        "trainable_params": n_params, "base_params": model.base.data.len(),
        "train": json!(d.rep), "eval": json!(d.eval_rep), "eval_examples": d.evals.len(), "train_examples": d.train.len(),
        "max_len": d.max_len, "load_seconds": t_load.elapsed().as_secs_f64(), "resumed_at_step": step});
    on_event(&Event::Start {
        done: step,
        end: o.max_steps,
        text: format!(
            "fine-tuning {n_params} parameters ({}), {} train / {} eval examples; data: {}",
            start["method"].as_str().unwrap_or(""),
            d.train.len(),
            d.evals.len(),
            d.rep
        ),
        json: Some(start.to_string()),
    });
    let plan = Plan {
        end: o.max_steps,
        pause_at: o.pause_at,
        clock: Clock::new(elapsed0, o.time_limit_min * 60.0),
        schedule: schedule(o),
        grad_clip: o.grad_clip,
    };
    let mut ft = Ft::new(o, &d, model, step, plan.clock, on_event);
    let (step, stop) = driver::run(&mut ft, &mut opt, &plan, step)?;
    let (o, evals) = (ft.o, &ft.d.evals);
    if ft.last_eval.is_none() && !evals.is_empty() {
        ft.last_eval = Some(eval_loss(&ft.model, evals, o.batch_tokens));
    }
    ft.save(&opt, step)?;
    let clock = ft.clock;
    let mut done = json!({"event": "done", "steps": step, "stop": stop.name(), "eval_loss": ft.last_eval,
        "tokens": ft.tokens_seen, "train_seconds": ft.train_secs,
        "tokens_per_sec": ft.tokens_seen as f64 / ft.train_secs.max(1e-9),
        "elapsed": clock.elapsed(),
        "peak_rss_mb": crate::train::bench::peak_rss_mb(), "out": o.out});
    done["base_unchanged"] = json!(base_sum.map(|s| s == checksum(&ft.model.base.data)));
    let text = format!(
        "{step} steps ({}), eval loss {}, {:.0} tok/s; saved in {}",
        stop.name(),
        ft.last_eval.map_or("-".into(), |v| format!("{v:.4}")),
        done["tokens_per_sec"].as_f64().unwrap_or(0.0),
        o.out.display()
    );
    let json = done.to_string();
    (ft.on_event)(&Event::Done { text, json });
    Ok(done)
}

/// The data and the base model of a run.
struct Prepared {
    pre: Pretrained,
    base: Flat,
    cfg: LlamaConfig,
    train: Vec<Example>,
    evals: Vec<Example>,
    rep: data::LoadReport,
    eval_rep: Option<data::LoadReport>,
    max_len: usize,
}

/// Reads and tokenizes the data (data errors first: they need no model) and loads the base.
fn prepare(o: &FinetuneOptions) -> Result<Prepared> {
    // Data errors first: they need no model.
    let train_records = data::read_records(
        &o.data,
        o.task,
        o.train_examples.map(|n| n + o.eval_examples),
    )?;
    let eval_records = match &o.eval {
        Some(p) => Some(data::read_records(p, o.task, Some(o.eval_examples))?),
        None => None,
    };
    let (pre, base) = load_base(&o.base)?;
    let cfg = cfg_of(&pre);
    let max_len = o.max_len.min(cfg.max_position_embeddings);
    let (mut train, rep) = data::tokenize(&pre, &train_records, max_len, o.overlong, &o.data)?;
    let (evals, eval_rep) = match &o.eval {
        Some(p) => {
            let r = eval_records.as_deref().expect("read above");
            let (e, rep) = data::tokenize(&pre, r, max_len, o.overlong, p)?;
            (e, Some(rep))
        }
        None => {
            // Hold out the last `eval_examples` of a seeded shuffle.
            let mut rng = ChaCha8Rng::seed_from_u64(o.seed ^ 0xe7a1);
            train.shuffle(&mut rng);
            let k = o.eval_examples.min(train.len() / 10);
            let e = train.split_off(train.len() - k);
            (e, None)
        }
    };
    if let Some(n) = o.train_examples {
        train.truncate(n);
    }
    Ok(Prepared {
        pre,
        base,
        cfg,
        train,
        evals,
        rep,
        eval_rep,
        max_len,
    })
}

/// The model to train: LoRA adapters (new, or resumed from `out`) or every base weight (resumed
/// from `out`'s model.safetensors).
fn build_model(o: &FinetuneOptions, cfg: &LlamaConfig, base: Flat) -> Result<FtModel> {
    let method = match &o.lora {
        Some(spec) if o.resume => {
            let (s, p) = adapter::load(&o.out, cfg)?;
            if s.rank != spec.rank || s.targets != spec.targets {
                return Err(Error::Invalid(format!(
                    "{} holds an adapter of rank {} on {:?}; resume with the same settings",
                    o.out.display(),
                    s.rank,
                    s.targets
                )));
            }
            Method::Lora {
                spec: spec.clone(),
                params: p,
            }
        }
        Some(spec) => {
            let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
            Method::Lora {
                spec: spec.clone(),
                params: init_lora(cfg, spec, &mut rng),
            }
        }
        None => Method::Full,
    };
    let mut model = FtModel::new(cfg.clone(), base, method)?;
    if o.lora.is_none() && o.resume {
        let loaded = tensor_io::load_tensors(&o.out.join("model.safetensors"))?;
        for e in model.base.entries.clone() {
            let (_, d) = loaded
                .tensors
                .get(&e.name)
                .ok_or_else(|| Error::CorruptCheckpoint {
                    path: o.out.join("model.safetensors"),
                    msg: format!("tensor {} is missing", e.name),
                })?;
            model.base.data[e.offset..e.offset + e.len].copy_from_slice(d);
        }
    }
    Ok(model)
}

/// AdamW, with its moments, step and the elapsed time restored on resume.
fn optimizer(o: &FinetuneOptions, n_params: usize) -> Result<(AdamW, usize, f64)> {
    let mut opt = AdamW::new(
        n_params,
        0.9,
        0.999,
        1e-8,
        o.weight_decay,
        vec![(0, n_params)],
    );
    if !o.resume {
        return Ok((opt, 0, 0.0));
    }
    let meta = opt.load_moments(&o.out.join(STATE_FILE), "adam.")?;
    let get = |k: &str| meta.get(k).and_then(|s| s.parse::<f64>().ok());
    let step = get("step").unwrap_or(0.0) as usize;
    opt.step = step as u64;
    Ok((opt, step, get("elapsed").unwrap_or(0.0)))
}

/// A fine-tuning run inside the training loop.
struct Ft<'a, F> {
    o: &'a FinetuneOptions,
    d: &'a Prepared,
    model: FtModel,
    grads: Vec<f32>,
    /// The data order: epochs of seeded batches.
    data_rng: ChaCha8Rng,
    queue: VecDeque<Vec<usize>>,
    epoch: usize,
    drop_rng: ChaCha8Rng,
    clock: Clock,
    tokens_seen: usize,
    train_secs: f64,
    last_eval: Option<f64>,
    metrics: Metrics,
    on_event: F,
}

impl<'a, F: FnMut(&Event)> Ft<'a, F> {
    /// The run at `step` steps done: a resumed run skips the batches already seen.
    fn new(
        o: &'a FinetuneOptions,
        d: &'a Prepared,
        model: FtModel,
        step: usize,
        clock: Clock,
        on_event: F,
    ) -> Self {
        let mut ft = Ft {
            o,
            d,
            grads: vec![0f32; model.params().data.len()],
            model,
            data_rng: ChaCha8Rng::seed_from_u64(o.seed.wrapping_add(1)),
            queue: VecDeque::new(),
            epoch: 0,
            drop_rng: ChaCha8Rng::seed_from_u64(o.seed.wrapping_add(2 + step as u64)),
            clock,
            tokens_seen: 0,
            train_secs: 0.0,
            last_eval: None,
            metrics: Metrics::open(&o.out, o.resume),
            on_event,
        };
        for _ in 0..step {
            ft.next_batch();
        }
        ft
    }

    fn next_batch(&mut self) -> Vec<usize> {
        if self.queue.is_empty() {
            self.epoch += 1;
            let b = epoch_batches(&self.d.train, self.o.batch_tokens, &mut self.data_rng);
            self.queue.extend(b);
        }
        self.queue.pop_front().expect("non-empty epoch")
    }

    /// Saves the adapter (or full model), the optimizer state, the metrics and the loss plot.
    fn save(&mut self, opt: &AdamW, step: usize) -> Result<()> {
        let (o, state_path) = (self.o, self.o.out.join(STATE_FILE));
        let base_name = o.base.display().to_string();
        match &self.model.method {
            Method::Lora { spec, params } => {
                adapter::save(&o.out, &self.d.cfg, spec, params, &base_name)?
            }
            Method::Full => save_full(&o.out, &self.d.pre, &self.model.base)?,
        }
        let meta = HashMap::from([
            ("step".to_string(), step.to_string()),
            ("elapsed".to_string(), self.clock.elapsed().to_string()),
        ]);
        opt.save_moments(&state_path, "adam.", meta)?;
        self.metrics.write()?;
        if let Ok(points) = crate::plot::read_metrics(self.metrics.path()) {
            if points.iter().any(|p| p.train_loss.is_some()) {
                let _ =
                    crate::plot::plot_losses(&points, "fine-tuning loss", &o.out.join("loss.png"));
            }
        }
        Ok(())
    }

    /// Adds `line` to the metrics and reports it.
    fn log(&mut self, line: Value, event: impl FnOnce(Option<String>) -> Event) -> Result<()> {
        self.metrics.push(&line)?;
        (self.on_event)(&event(Some(line.to_string())));
        Ok(())
    }
}

impl<F: FnMut(&Event)> Run for Ft<'_, F> {
    /// (summed loss, completion tokens, tokens) of the step's batch.
    type Stats = (f64, usize, usize);

    fn forward_backward(&mut self, _step: usize) -> Result<Self::Stats> {
        let idx = self.next_batch();
        let batch = pack(&self.d.train, &idx);
        self.grads.iter_mut().for_each(|g| *g = 0.0);
        let (loss, acts) = self.model.forward(&batch, Some(&mut self.drop_rng), true);
        let ntg = batch.targets.len().max(1);
        let acts = acts.expect("saved");
        self.model
            .backward(&batch, acts, 1.0 / ntg as f32, &mut self.grads);
        Ok((loss, ntg, batch.ids.len()))
    }

    fn params_and_grads(&mut self) -> (&mut [f32], &[f32]) {
        (&mut self.model.params_mut().data, &self.grads)
    }

    /// Logs the step, evaluates every `eval_every` steps and at the end, saves every
    /// `save_every` steps (the end's save follows the loop).
    fn after_step(
        &mut self,
        (loss, ntg, ntok): Self::Stats,
        u: &Update,
        opt: &AdamW,
    ) -> Result<()> {
        let (o, step) = (self.o, u.step);
        self.train_secs += u.secs;
        self.tokens_seen += ntok;
        let (train_loss, tokens_per_sec) = (loss / ntg as f64, ntok as f64 / u.secs);
        let status = format!(
            "loss {train_loss:.4} lr {:.2e} {tokens_per_sec:.0} tok/s",
            u.lr
        );
        self.log(
            json!({"event": "step", "step": step, "epoch": self.epoch, "train_loss": train_loss,
            "lr": u.lr, "grad_norm": u.grad_norm, "tokens": ntok, "targets": ntg,
            "tokens_per_sec": tokens_per_sec, "elapsed": self.clock.elapsed()}),
            |json| Event::Step { step, status, json },
        )?;
        let at_end = u.stop.is_some();
        let evals = &self.d.evals;
        if !evals.is_empty() && (o.eval_every > 0 && step.is_multiple_of(o.eval_every) || at_end) {
            let ev = eval_loss(&self.model, evals, o.batch_tokens);
            self.last_eval = Some(ev);
            let text = Some(format!("step {step}: eval loss {ev:.4}"));
            self.log(json!({"event": "eval", "step": step, "val_loss": ev, "elapsed": self.clock.elapsed()}),
                |json| Event::Note { text, json })?;
        }
        if o.save_every > 0 && step.is_multiple_of(o.save_every) && !at_end {
            self.save(opt, step)?;
            let json = Some(json!({"event": "saved", "step": step, "dir": o.out}).to_string());
            (self.on_event)(&Event::Note { text: None, json });
        }
        Ok(())
    }
}

/// Writes a Hugging Face Llama folder: `config.json`, `model.safetensors`, `tokenizer.json`.
pub fn save_full(dir: &Path, pre: &Pretrained, base: &Flat) -> Result<()> {
    let cfg = cfg_of(pre);
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    tensor_io::save_tensors(&dir.join("model.safetensors"), &base.tensors(), meta)?;
    let mut config = serde_json::to_value(&cfg).expect("json");
    config["model_type"] = json!("llama");
    config["architectures"] = json!(["LlamaForCausalLM"]);
    config["hidden_act"] = json!("silu");
    config["torch_dtype"] = json!("float32");
    config["head_dim"] = json!(cfg.head_dim());
    write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config)
            .expect("json")
            .as_bytes(),
    )?;
    pre.tokenizer.save(&dir.join("tokenizer.json"))?;
    let mut tc = json!({"tokenizer_class": "PreTrainedTokenizerFast"});
    if let Some(t) = &pre.chat_template {
        tc["chat_template"] = json!(t);
    }
    if let Some(t) = &pre.bos_token {
        tc["bos_token"] = json!(t);
    }
    if let Some(t) = &pre.eos_token {
        tc["eos_token"] = json!(t);
    }
    write_atomic(
        &dir.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&tc).expect("json").as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An epoch's batches hold every example once, stay within the token budget (a longer
    /// example alone), and group similar lengths.
    #[test]
    fn epoch_batches_cover_each_example_once_within_budget() {
        let lens = [5usize, 300, 40, 41, 7, 120, 119, 6, 2000, 39, 8, 121];
        let examples: Vec<Example> = (0..200)
            .map(|i| Example {
                tokens: vec![1; lens[i % lens.len()]],
                first_target: 1,
            })
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let batches = epoch_batches(&examples, 512, &mut rng);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..200).collect::<Vec<_>>());
        for b in &batches {
            let toks: usize = b.iter().map(|&i| examples[i].tokens.len()).sum();
            assert!(toks <= 512 || b.len() == 1, "batch of {toks} tokens");
        }
        // Length bucketing: within a batch, lengths span far less than the whole range.
        let spread: Vec<usize> = batches
            .iter()
            .filter(|b| b.len() > 1)
            .map(|b| {
                let l: Vec<usize> = b.iter().map(|&i| examples[i].tokens.len()).collect();
                l.iter().max().unwrap() - l.iter().min().unwrap()
            })
            .collect();
        assert!(spread.iter().all(|&s| s <= 300), "{spread:?}");
        // Another seed, another order; the same seed, the same batches.
        let again = epoch_batches(&examples, 512, &mut ChaCha8Rng::seed_from_u64(3));
        assert_eq!(again, batches);
    }
}
