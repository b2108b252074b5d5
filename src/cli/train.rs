//! `decodex quickstart`, `decodex train` (language-model and sequence-to-sequence configs) and
//! `decodex finetune`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use decodex::models::gpt::checkpoint;
use decodex::train::{self, Event, TrainOptions};

use super::{Force, GenerateArgs};

#[derive(Args, Debug)]
pub struct QuickstartArgs {
    /// Where the run's checkpoint and metrics go; a checkpoint already there is continued.
    #[arg(long, default_value = "runs/shakespeare-char", value_name = "DIR")]
    pub out: PathBuf,
    /// The preset to train.
    #[arg(
        long,
        default_value = "configs/shakespeare-char.toml",
        value_name = "FILE"
    )]
    pub config: PathBuf,
    /// Stop after this step (the schedule is unchanged).
    #[arg(long, value_name = "N", alias = "max-iters")]
    pub max_steps: Option<usize>,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// TOML config (see configs/).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Output directory for checkpoint and metrics.
    #[arg(long, default_value = "runs/train", value_name = "DIR")]
    pub out: PathBuf,
    /// Stop after step N without changing the learning-rate schedule.
    #[arg(long, value_name = "N", alias = "max-iters")]
    pub max_steps: Option<usize>,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub force: Force,
}

/// How `decodex finetune` trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// Low-rank adapters on the --targets projections; the base stays frozen.
    Lora,
    /// Every weight of the model.
    Full,
}

/// What happens to an example longer than --max-len.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Overlong {
    /// Leave it out (counted).
    Skip,
    /// Cut its completion to fit (counted).
    Truncate,
}

impl From<Overlong> for decodex::train::finetune::data::Overlong {
    fn from(o: Overlong) -> Self {
        match o {
            Overlong::Skip => Self::Skip,
            Overlong::Truncate => Self::Truncate,
        }
    }
}

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// The base model: a GGUF file (dequantized to f32 for training) or a Hugging Face Llama
    /// folder.
    #[arg(long, value_name = "PATH", visible_alias = "base")]
    pub model: PathBuf,
    /// Training JSONL (plain or .gz): {"prompt","completion"} or {"messages"}; with --task,
    /// DialogSum or SQuAD records.
    #[arg(long, value_name = "FILE", alias = "data")]
    pub input: PathBuf,
    /// Held-out JSONL for the eval loss (default: --eval-examples held out of --input).
    #[arg(long, value_name = "FILE")]
    pub eval: Option<PathBuf>,
    /// How records are read.
    #[arg(long, value_enum, default_value = "raw")]
    pub task: decodex::train::finetune::data::Task,
    /// LoRA adapters or full fine-tuning.
    #[arg(long, value_enum, default_value = "lora")]
    pub method: Method,
    /// LoRA rank.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub rank: usize,
    /// LoRA alpha (the update is scaled by alpha / rank).
    #[arg(long, default_value_t = 32.0, value_name = "X")]
    pub alpha: f64,
    /// LoRA dropout on the adapters' input.
    #[arg(long, default_value_t = 0.0, value_name = "P")]
    pub dropout: f32,
    /// Projections LoRA adapts, comma-separated: q,k,v,o,gate,up,down (or PEFT's q_proj, ...).
    #[arg(long, default_value = "q,k,v,o,gate,up,down", value_name = "LIST")]
    pub targets: String,
    /// Output folder: the adapter (LoRA) or model (full), metrics.jsonl, loss.png, trainer state.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Peak learning rate (default 2e-4 for LoRA, 2e-5 for full).
    #[arg(long, value_name = "X")]
    pub lr: Option<f64>,
    /// Weight decay of the optimizer.
    #[arg(long, default_value_t = 0.0, value_name = "X")]
    pub weight_decay: f64,
    /// Steps of linear learning-rate warmup.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub warmup_steps: usize,
    /// Tokens per batch (sequences packed without padding).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub batch_tokens: usize,
    /// Optimizer steps in all (the learning-rate schedule spans them).
    #[arg(long, default_value_t = 1_000_000, value_name = "N")]
    pub max_steps: usize,
    /// Stop after this many minutes of training (0: no limit).
    #[arg(long, default_value_t = 0.0, value_name = "MIN")]
    pub time_limit_min: f64,
    /// Save and stop after this step, as if interrupted; the schedule still spans --max-steps
    /// and --resume continues.
    #[arg(long, value_name = "N")]
    pub pause_at: Option<usize>,
    /// Longest example in tokens (capped by the model's context).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_len: usize,
    /// What happens to a longer example.
    #[arg(long, value_enum, default_value = "skip")]
    pub overlong: Overlong,
    /// Use only the first N training examples.
    #[arg(long, value_name = "N")]
    pub train_examples: Option<usize>,
    /// Examples for the eval loss: the first of --eval, or held out of --input without it.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub eval_examples: usize,
    /// Compute the eval loss every N steps.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub eval_every: usize,
    /// Save the weights and trainer state every N steps.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub save_every: usize,
    /// Clip the gradient's global norm to this.
    #[arg(long, default_value_t = 1.0, value_name = "X")]
    pub grad_clip: f64,
    /// Seed of data order, dropout and LoRA initialization.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub seed: u64,
    /// Continue the run in --out (weights, optimizer moments, step, data position, elapsed time).
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub force: Force,
}

pub(super) fn quickstart(a: QuickstartArgs, json: bool) -> Result<()> {
    let out = a.out.clone();
    // Running quickstart again continues (or, when finished, just samples from) the same run.
    let resume = out.join(checkpoint::STATE_FILE).exists();
    let t = TrainArgs {
        config: a.config,
        out: a.out,
        max_steps: a.max_steps,
        resume,
        force: Force::default(),
    };
    train_cmd(&t, json)?;
    /// The sampling command's arguments, parsed like the command line.
    #[derive(clap::Parser)]
    struct Sample {
        #[command(flatten)]
        args: GenerateArgs,
    }
    let model = out.to_string_lossy().into_owned();
    // A char model starts from a newline, as nanoGPT's sample.py starts from token 0.
    let mut argv = vec!["generate", "--model", &model, "--prompt", "\n"];
    argv.extend([
        "--max-new-tokens",
        "500",
        "--temperature",
        "0.8",
        "--top-k",
        "200",
    ]);
    let mut g = <Sample as clap::Parser>::parse_from(argv).args;
    g.json = json;
    if !json {
        println!("\n--- sample (temperature 0.8, top-k 200) ---");
    }
    super::generate::generate_cmd(&g)
}

/// `decodex train`: the trainer of the config's `[model] arch`.
pub(super) fn train_any(a: &TrainArgs, json: bool) -> Result<()> {
    match train::config::Arch::of_config(&a.config) {
        train::config::Arch::Gpt => train_cmd(a, json).map(|_| ()),
        train::config::Arch::RnnSeq2seq | train::config::Arch::TransformerSeq2seq => {
            train_seq2seq_cmd(a, json)
        }
    }
}

/// Shows a run's events: each event's JSON line with `--json`, else a progress bar with
/// evaluation lines above it (stderr) and the summary (stdout). Holds the first error writing stdout.
struct Progress {
    json: bool,
    bar: Option<indicatif::ProgressBar>,
    write_err: Option<std::io::Error>,
}

impl Progress {
    fn new(json: bool) -> Self {
        Progress {
            json,
            bar: None,
            write_err: None,
        }
    }

    fn show(&mut self, ev: &Event) {
        if self.json {
            if let Some(line) = ev.json() {
                if let Err(e) = writeln!(std::io::stdout(), "{line}") {
                    self.write_err.get_or_insert(e);
                }
            }
            return;
        }
        match ev {
            Event::Start {
                done, end, text, ..
            } => {
                eprintln!("{text}");
                // A run without a known end (a time limit) shows a spinner.
                let (len, template) = if *end < 1_000_000 {
                    (
                        *end as u64,
                        "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
                    )
                } else {
                    (0, "{spinner} step {pos} {elapsed_precise} {msg}")
                };
                let pb = indicatif::ProgressBar::new(len);
                pb.set_position(*done as u64);
                pb.set_style(
                    indicatif::ProgressStyle::with_template(template).expect("valid template"),
                );
                self.bar = Some(pb);
            }
            Event::Step { step, status, .. } => {
                if let Some(pb) = &self.bar {
                    pb.set_position(*step as u64);
                    pb.set_message(status.clone());
                }
            }
            // A bar that is hidden (stderr is not a terminal) prints nothing, so then the line
            // goes to stderr directly.
            Event::Note { text: Some(t), .. } => match &self.bar {
                Some(pb) if !pb.is_hidden() => pb.println(t),
                _ => eprintln!("{t}"),
            },
            Event::Note { text: None, .. } => {}
            Event::Done { text, .. } => {
                if let Some(pb) = self.bar.take() {
                    pb.finish_and_clear();
                }
                println!("{text}");
            }
        }
    }

    /// The run's result, or the first error writing its lines.
    fn finish<T>(self, r: decodex::Result<T>) -> Result<T> {
        if let Some(pb) = self.bar {
            pb.finish_and_clear();
        }
        let r = r?;
        match self.write_err {
            Some(e) => Err(e.into()),
            None => Ok(r),
        }
    }
}

pub(super) fn train_cmd(a: &TrainArgs, json: bool) -> Result<train::TrainSummary> {
    if a.max_steps == Some(0) {
        bail!("--max-steps must be at least 1");
    }
    a.force.check_run(&a.out, a.resume)?;
    train::progress::stop_on_ctrl_c();
    let opts = TrainOptions {
        config: a.config.clone(),
        out: a.out.clone(),
        max_iters: a.max_steps,
        resume: a.resume,
        overwrite: a.force.force,
    };
    let mut p = Progress::new(json);
    let r = train::train(&opts, |ev| p.show(ev));
    p.finish(r)
}

/// `decodex train` on a sequence-to-sequence config.
pub(super) fn train_seq2seq_cmd(a: &TrainArgs, json: bool) -> Result<()> {
    if a.resume || a.max_steps.is_some() {
        bail!("--resume and --max-steps apply to language-model configs; a seq2seq config sets epochs and max_minutes");
    }
    a.force.check(&a.out, "--out")?;
    train::progress::stop_on_ctrl_c();
    let mut p = Progress::new(json);
    let r = train::seq2seq::train_seq2seq(&a.config, &a.out, |ev| p.show(ev));
    p.finish(r).map(|_| ())
}

pub(super) fn finetune_cmd(a: &FinetuneArgs, json: bool) -> Result<()> {
    use decodex::models::llama::lora::{LoraSpec, Proj};
    use decodex::train::finetune::run::{finetune, FinetuneOptions};
    a.force.check_run(&a.out, a.resume)?;
    decodex::train::progress::stop_on_ctrl_c();
    let lora = match a.method {
        Method::Lora => {
            let targets = a
                .targets
                .split(',')
                .map(|t| {
                    Proj::parse(t).ok_or_else(|| {
                        anyhow::anyhow!(
                            "unknown LoRA target {t:?} (choose from q,k,v,o,gate,up,down)"
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let spec = LoraSpec {
                rank: a.rank,
                alpha: a.alpha,
                dropout: a.dropout,
                targets,
            };
            spec.validate()?;
            Some(spec)
        }
        Method::Full => None,
    };
    let opts = FinetuneOptions {
        base: a.model.clone(),
        data: a.input.clone(),
        eval: a.eval.clone(),
        task: a.task,
        lr: a.lr.unwrap_or(if lora.is_some() { 2e-4 } else { 2e-5 }),
        lora,
        out: a.out.clone(),
        weight_decay: a.weight_decay,
        warmup_steps: a.warmup_steps,
        batch_tokens: a.batch_tokens,
        max_steps: a.max_steps,
        time_limit_min: a.time_limit_min,
        pause_at: a.pause_at,
        max_len: a.max_len,
        overlong: a.overlong.into(),
        train_examples: a.train_examples,
        eval_examples: a.eval_examples,
        eval_every: a.eval_every,
        save_every: a.save_every,
        grad_clip: a.grad_clip,
        seed: a.seed,
        resume: a.resume,
    };
    let mut p = Progress::new(json);
    let r = finetune(&opts, |ev| p.show(ev));
    p.finish(r).map(|_| ())
}
