//! Command-line parsing and dispatch. Each subcommand validates its flags, calls one library
//! function and prints its result, human-readable or as JSON lines with `--json`. Any error is
//! one line with its cause chain on stderr and exit code 2; a closed pipe is success.
//!
//! Flags several commands share are defined once: `--json` and `--threads` on the top-level
//! parser (global), the model flags and the decoding flags in `args`. docs/cli.md lists the
//! flag names, which commands take them, and the old spellings kept as aliases.

mod args;
mod commands;
mod generate;
mod search;
mod serve;
mod tasks;
mod train;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use args::{Force, ModelArgs};
pub use generate::{ChatArgs, GenerateArgs};
pub use tasks::{AnswerArgs, MergeArgs, TaskArgs, TranslateArgs};
pub use train::{FinetuneArgs, QuickstartArgs, TrainArgs};

#[derive(Parser, Debug)]
#[command(
    name = "decodex",
    version,
    about = "Build, train and decode transformer language models"
)]
pub struct Cli {
    /// Worker threads for every kernel (default: all cores).
    #[arg(long, global = true, value_name = "N", display_order = 900)]
    pub threads: Option<usize>,
    /// Print JSON (one object per line) instead of human-readable text and progress bars.
    #[arg(long, global = true, display_order = 901)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Prepare Tiny Shakespeare, train the character-level preset, and print a sample.
    Quickstart(QuickstartArgs),
    /// Train or apply tokenizers.
    #[command(subcommand)]
    Tokenizer(TokenizerCmd),
    /// Encode corpora into token files.
    #[command(subcommand)]
    Data(DataCmd),
    /// Train a model from a TOML config.
    Train(TrainArgs),
    /// Generate text from a model: a GGUF file, a Hugging Face Llama or GPT-2 folder, or a
    /// decodex checkpoint.
    Generate(Box<GenerateArgs>),
    /// Chat with an instruct model: type a message, the reply streams; an empty line or EOF ends.
    Chat(Box<ChatArgs>),
    /// Export a model directory for other tools.
    Export(ExportArgs),
    /// Draw train/val loss curves from a metrics.jsonl file.
    Plot(PlotArgs),
    /// Measure speed.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Write a model's logits for a text to a safetensors file (for parity checks).
    Logits(LogitsArgs),
    /// Evaluate: perplexity of a model on a text, BLEU and chrF of translations, ROUGE of
    /// summaries, SQuAD exact match and F1 of answers, nDCG@10/MRR@10/Recall@100 of an index,
    /// STS correlation of embeddings.
    #[command(subcommand)]
    Eval(EvalCmd),
    /// Translate a file, one sentence per line, with a sequence-to-sequence model.
    Translate(Box<TranslateArgs>),
    /// Fine-tune a pretrained Llama-family decoder (GGUF or Hugging Face folder), with LoRA
    /// or in full, on prompt/completion JSONL; the loss covers completion tokens only.
    Finetune(Box<FinetuneArgs>),
    /// Summarize the "document" of each JSONL line (DialogSum) with an instruct model; with
    /// references in the file, print ROUGE against the first.
    Summarize(Box<TaskArgs>),
    /// Answer questions from their context: a SQuAD v1.1 file (its first --limit questions;
    /// EM/F1 printed), or one --question with a --context.
    Answer(Box<AnswerArgs>),
    /// Merge a LoRA adapter into its base and write a Hugging Face Llama folder.
    Merge(MergeArgs),
    /// Embed texts with an encoder (sentence-transformers BERT) or a decoder, into .npy or
    /// safetensors.
    Embed(search::EmbedArgs),
    /// Build, extend, query and measure vector indexes.
    #[command(subcommand)]
    Index(search::IndexCmd),
    /// Serve a model over the OpenAI HTTP API (chat, completions, embeddings), decoding
    /// concurrent requests together.
    Serve(Box<serve::ServeArgs>),
}

#[derive(Subcommand, Debug)]
pub enum EvalCmd {
    /// Perplexity of a model on a text file (per token and in bits per byte).
    Perplexity(PerplexityArgs),
    /// Corpus BLEU and chrF2 of a hypothesis file against reference files, as sacreBLEU 2.4.3
    /// computes them with its defaults (tokenizer 13a, exp smoothing; chrF over character
    /// 6-grams).
    Bleu(BleuArgs),
    /// ROUGE-1/2/L F-measure (mean over summaries, ×100) of a summary file against reference
    /// files, as Google's rouge-score 0.1.2 computes them (Porter stemming on by default).
    Rouge(RougeArgs),
    /// Exact match and F1 (×100) of SQuAD predictions, as the official v1.1 script computes them.
    Squad(SquadArgs),
    /// nDCG@10, MRR@10 and Recall@100 of an index on BEIR queries and qrels.
    Retrieval(search::RetrievalArgs),
    /// Spearman (and Pearson) correlation of embedding cosines with STS gold scores.
    Sts(search::StsArgs),
}

#[derive(Args, Debug)]
pub struct RougeArgs {
    /// Summaries to score: UTF-8 text, one summary per line.
    #[arg(long, value_name = "FILE")]
    pub hyp: PathBuf,
    /// References, one line per summary; repeat the flag for several references (each metric
    /// then takes the best-scoring one, as rouge-score's score_multi).
    #[arg(long = "ref", value_name = "FILE", required = true)]
    pub refs: Vec<PathBuf>,
    /// Turn Porter stemming off (rouge-score's use_stemmer=False).
    #[arg(long)]
    pub no_stemmer: bool,
}

#[derive(Args, Debug)]
pub struct SquadArgs {
    /// The dataset in SQuAD's JSON form, e.g. ../shared/data/qa/squad/dev-v1.1.json.
    #[arg(long, value_name = "FILE", alias = "data")]
    pub input: PathBuf,
    /// Predictions: one JSON object {question id: answer text}.
    #[arg(long, value_name = "FILE")]
    pub predictions: PathBuf,
}

#[derive(Args, Debug)]
pub struct BleuArgs {
    /// Hypotheses (system output): UTF-8 text, one segment per line.
    #[arg(long, value_name = "FILE")]
    pub hyp: PathBuf,
    /// References, one line per hypothesis line; repeat the flag for several references.
    #[arg(long = "ref", value_name = "FILE", required = true)]
    pub refs: Vec<PathBuf>,
    /// Lowercase before BLEU (sacreBLEU's -lc, signature case:lc); chrF stays cased, as in
    /// sacreBLEU.
    #[arg(long)]
    pub lowercase: bool,
}

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    /// Any decoder decodex loads: a decodex GPT checkpoint, a Hugging Face Llama folder or a GGUF
    /// file.
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Text file (.txt or .txt.gz) to score, e.g. ../shared/data/lm/gutenberg/valid.txt.
    #[arg(long, value_name = "FILE", alias = "text-file")]
    pub input: PathBuf,
    /// Windows scored per forward pass.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub batch_size: usize,
}

#[derive(Subcommand, Debug)]
pub enum TokenizerCmd {
    /// Train a tokenizer on a text file and save it as tokenizer.json.
    Train {
        /// Text corpus (.txt or .txt.gz).
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// The kind of tokenizer to train.
        #[arg(long, value_enum)]
        kind: Kind,
        /// Vocabulary size (bpe only).
        #[arg(long, value_name = "N")]
        vocab_size: Option<usize>,
        /// Output tokenizer.json.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        force: Force,
    },
    /// Encode text with a tokenizer.json and print the ids.
    Encode {
        /// The tokenizer.json to encode with.
        #[arg(long, value_name = "FILE", alias = "tokenizer")]
        tokenizer_file: PathBuf,
        /// The text to encode.
        #[arg(long)]
        text: String,
    },
}

/// A kind of tokenizer.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum Kind {
    /// One token per character of the training text.
    Char,
    /// Byte-level byte-pair encoding (GPT-2 style), trained to --vocab-size tokens.
    Bpe,
}

#[derive(Subcommand, Debug)]
pub enum DataCmd {
    /// Encode a corpus into train.bin/val.bin plus tokenizer.json and meta.json.
    Prepare {
        /// Text corpus (.txt or .txt.gz).
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// Train a tokenizer of this kind (or give --tokenizer-file).
        #[arg(
            long,
            value_enum,
            alias = "tokenizer",
            required_unless_present = "tokenizer_file"
        )]
        kind: Option<Kind>,
        /// Vocabulary size (required for bpe).
        #[arg(long, value_name = "N")]
        vocab_size: Option<usize>,
        /// Encode with this tokenizer.json (a pretrained model's) instead of training one.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["kind", "vocab_size"])]
        tokenizer_file: Option<PathBuf>,
        /// A separate validation text (default: the last --val-fraction of the input).
        #[arg(long, value_name = "FILE")]
        val_input: Option<PathBuf>,
        /// Fraction of the input held out for validation when there is no --val-input.
        #[arg(long, default_value_t = 0.1, value_name = "X")]
        val_fraction: f64,
        /// Output folder: train.bin, val.bin, tokenizer.json, meta.json.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        #[command(flatten)]
        force: Force,
    },
}

/// A format `decodex export` writes.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum ExportFormat {
    /// A Hugging Face folder that transformers loads as GPT2LMHeadModel.
    Hf,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A decodex checkpoint folder (GPT).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// The output format.
    #[arg(long, value_enum, default_value = "hf")]
    pub format: ExportFormat,
    /// The output folder.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub force: Force,
}

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// metrics.jsonl written by `decodex train`.
    pub metrics: PathBuf,
    /// Output .png or .svg.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub force: Force,
    /// The plot's title.
    #[arg(long, default_value = "decodex training")]
    pub title: String,
}

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Prompt-processing and generation tokens/s of a decoder (llama-bench's pp and tg), and
    /// beam search speed.
    Decode(BenchDecodeArgs),
    /// Sentences per second of an embedding model on a file of texts.
    Embed(search::BenchEmbedArgs),
    /// Load an OpenAI-compatible server (decodex serve, llama-server, vLLM) with concurrent
    /// streamed completions: requests/s, output tokens/s, time to first token and
    /// inter-token latency (p50, p99), as vLLM's benchmark_serving measures them.
    Serve(serve::BenchServeArgs),
    /// Median training tokens/s of full optimizer steps, and peak memory.
    Train {
        /// TOML config (see configs/).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Optimizer steps timed.
        #[arg(long, default_value_t = 50, value_name = "N", alias = "iters")]
        max_steps: usize,
        /// Steps run before the timed ones.
        #[arg(long, default_value_t = 5, value_name = "N")]
        warmup: usize,
    },
}

#[derive(Args, Debug)]
pub struct BenchDecodeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt test: a prompt of N tokens (llama-bench's `-p`); 0 skips it.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub prompt_tokens: usize,
    /// The generation test: N tokens generated one at a time (llama-bench's `-n`); 0 skips it.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub new_tokens: usize,
    /// Tokens already in the cache before each test, untimed (llama-bench's `-d`).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub depth: usize,
    /// Timed repetitions.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub reps: usize,
    /// Also time beam search with this many beams (32 new tokens); 1 skips it. `--beam` alone
    /// (the old boolean spelling) is 4 beams.
    #[arg(
        long,
        default_value_t = 1,
        value_name = "N",
        alias = "beam",
        num_args = 0..=1,
        default_missing_value = "4"
    )]
    pub num_beams: usize,
}

#[derive(Args, Debug)]
#[command(mut_arg("dequantize", |a| a.hide(true)))]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text whose logits are written.
    #[arg(long)]
    pub text: String,
    /// Output safetensors with `input_ids` (1, T) and `logits` (1, T, V).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    #[command(flatten)]
    pub force: Force,
}

/// Parses arguments, runs the command and returns the exit code.
pub fn run() -> i32 {
    use clap::{CommandFactory, FromArgMatches};
    // `--version` names the kernel tier and the CPU features it was chosen from.
    let version = format!(
        "{} ({})",
        env!("CARGO_PKG_VERSION"),
        decodex::kernels::isa::describe()
    );
    let parsed = Cli::command()
        .version(&*Box::leak(version.into_boxed_str()))
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => return parse_error(e),
    };
    // Ctrl-C and SIGTERM remove the temporary files of an interrupted write before exiting.
    decodex::train::progress::handle_signals();
    // A DECODEX_ISA the CPU cannot run is refused before anything loads.
    if let Err(e) = decodex::kernels::Isa::check() {
        eprintln!("error: {e}");
        return 2;
    }
    if let Some(n) = cli.threads {
        if n == 0 {
            eprintln!("error: --threads must be at least 1");
            return 2;
        }
    }
    let threads = cli.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // candle reads RAYON_NUM_THREADS for its own kernels; the fast path uses rayon's global pool.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
    // hnsw_rs logs the failures it also returns as errors: without DECODEX_LOG, only the one
    // error line decodex prints is shown.
    let filter = match std::env::var_os("DECODEX_LOG") {
        Some(_) => tracing_subscriber::EnvFilter::from_env("DECODEX_LOG"),
        None => tracing_subscriber::EnvFilter::new("error,hnsw_rs=off,anndists=off"),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    match commands::dispatch(cli.command, cli.json) {
        Ok(()) => 0,
        Err(e) => {
            if is_broken_pipe(&e) {
                return 0;
            }
            let mut msg = format!("error: {e}");
            for cause in e.chain().skip(1) {
                let c = cause.to_string();
                if !msg.contains(&c) {
                    msg.push_str(&format!(": {c}"));
                }
            }
            // One line: library messages (candle's with a backtrace under RUST_BACKTRACE) may
            // span several; the first names the problem.
            let line = msg
                .lines()
                .map(str::trim_end)
                .find(|l| !l.is_empty())
                .unwrap_or("error");
            eprintln!("{line}");
            2
        }
    }
}

/// Help and version go to stdout with exit code 0 (help without a subcommand to stderr, exit
/// code 2, as clap prints them); a flag error is one line on stderr, exit code 2.
fn parse_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {
            eprintln!("{}", error_line(&e));
            2
        }
    }
}

/// A clap error as one line: `--flag "value" is not one of "a", "b"` for a value outside a
/// closed set, else clap's message and tips without the usage.
fn error_line(e: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() == ErrorKind::InvalidValue {
        let flag = match e.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(s)) => s.split_whitespace().next().unwrap_or("").to_string(),
            _ => String::new(),
        };
        let value = match e.get(ContextKind::InvalidValue) {
            Some(ContextValue::String(s)) => s.clone(),
            _ => String::new(),
        };
        if let Some(ContextValue::Strings(valid)) = e
            .get(ContextKind::ValidValue)
            .filter(|v| !matches!(v, ContextValue::Strings(s) if s.is_empty()))
        {
            let valid: Vec<String> = valid.iter().map(|v| format!("{v:?}")).collect();
            return format!("error: {flag} {value:?} is not one of {}", valid.join(", "));
        }
    }
    let rendered = e.render().to_string();
    let parts: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    parts.join(" ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
