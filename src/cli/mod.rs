//! Command-line parsing and dispatch. Each subcommand validates its flags, calls one library
//! function and prints its result, human-readable or as JSON lines with `--json`. Any error is
//! one line with its cause chain on stderr and exit code 2; a closed pipe is success.

mod commands;
mod generate;
mod search;
mod tasks;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "decodex",
    version,
    about = "Build, train and decode transformer language models"
)]
pub struct Cli {
    /// Worker threads for every kernel (default: all cores).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
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
    /// Generate text from a model directory.
    Generate(Box<GenerateArgs>),
    /// Chat with an instruct model: type a message, the reply streams; an empty line or EOF ends.
    Chat(ChatArgs),
    /// Export a model directory for other tools.
    Export(ExportArgs),
    /// Draw train/val loss curves from a metrics.jsonl file.
    Plot(PlotArgs),
    /// Measure speed.
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Write a model's logits for a text to a safetensors file (for parity checks).
    Logits(LogitsArgs),
    /// Evaluate: a model's perplexity on a text, or translations' BLEU and chrF.
    #[command(subcommand)]
    Eval(EvalCmd),
    /// Translate a file, one sentence per line, with a sequence-to-sequence model.
    Translate(TranslateArgs),
    /// Fine-tune a pretrained Llama-family decoder (GGUF or Hugging Face folder), with LoRA
    /// or in full, on prompt/completion JSONL; the loss covers completion tokens only.
    Finetune(Box<FinetuneArgs>),
    /// Summarize the "document" of each JSONL line (DialogSum) with an instruct model; with
    /// references in the file, print ROUGE against the first.
    Summarize(TaskArgs),
    /// Answer questions from their context: a SQuAD v1.1 file (its first --limit questions;
    /// EM/F1 printed), or one --question with a --context.
    Answer(TaskArgs),
    /// Merge a LoRA adapter into its base and write a Hugging Face Llama folder.
    Merge(MergeArgs),
    /// Embed texts with an encoder (sentence-transformers BERT) or a decoder, into .npy or
    /// safetensors.
    Embed(search::EmbedArgs),
    /// Build, extend, query and measure vector indexes.
    #[command(subcommand)]
    Index(search::IndexCmd),
}

#[derive(Args, Debug)]
pub struct TaskArgs {
    /// A GGUF file or a Hugging Face Llama folder (an instruct model: the prompt goes through
    /// its chat template).
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// summarize: JSONL with "document" (and "summary" for ROUGE); answer: a SQuAD v1.1 JSON.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// answer: one question (with --context) instead of --input.
    #[arg(long)]
    pub question: Option<String>,
    #[arg(long)]
    pub context: Option<String>,
    /// Write the outputs here: summaries one per line; answers as SQuAD predictions JSON.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Only the first N documents or questions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// greedy or beam.
    #[arg(long, default_value = "greedy")]
    pub strategy: String,
    #[arg(long, default_value_t = 4)]
    pub num_beams: usize,
    #[arg(long, default_value_t = 1.0)]
    pub length_penalty: f64,
    #[arg(long, default_value_t = 0)]
    pub no_repeat_ngram_size: usize,
    #[arg(long, default_value_t = 96)]
    pub max_new_tokens: usize,
    /// Greedy decoding of this many prompts at once (left-padded).
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Run a GGUF model's matrices dequantized to f32 (always so with --adapter).
    #[arg(long)]
    pub dequantize: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The base: a GGUF file or a Hugging Face Llama folder.
    #[arg(long)]
    pub base: PathBuf,
    #[arg(long)]
    pub adapter: PathBuf,
    /// The output folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct FinetuneArgs {
    /// The base model: a GGUF file (dequantized to f32 for training) or a Hugging Face Llama
    /// folder.
    #[arg(long)]
    pub base: PathBuf,
    /// Training JSONL (plain or .gz): {"prompt","completion"} or {"messages"}; with --task,
    /// DialogSum or SQuAD records.
    #[arg(long)]
    pub data: PathBuf,
    /// Held-out JSONL for the eval loss (default: --eval-examples held out of --data).
    #[arg(long)]
    pub eval: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "raw")]
    pub task: decodex::train::finetune::data::Task,
    /// lora or full.
    #[arg(long, default_value = "lora")]
    pub method: String,
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    #[arg(long, default_value_t = 32.0)]
    pub alpha: f64,
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f32,
    /// Projections LoRA adapts, comma-separated: q,k,v,o,gate,up,down (or PEFT's q_proj, ...).
    #[arg(long, default_value = "q,k,v,o,gate,up,down")]
    pub targets: String,
    /// Output folder: the adapter (LoRA) or model (full), metrics.jsonl, loss.png, trainer state.
    #[arg(long)]
    pub out: PathBuf,
    /// Peak learning rate (default 2e-4 for LoRA, 2e-5 for full).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 20)]
    pub warmup_steps: usize,
    /// Tokens per batch (sequences packed without padding).
    #[arg(long, default_value_t = 4096)]
    pub batch_tokens: usize,
    #[arg(long, default_value_t = 1_000_000)]
    pub max_steps: usize,
    /// Stop after this many minutes of training (0: no limit).
    #[arg(long, default_value_t = 0.0)]
    pub time_limit_min: f64,
    /// Save and stop after this step, as if interrupted; the schedule still spans --max-steps
    /// and --resume continues.
    #[arg(long)]
    pub pause_at: Option<usize>,
    /// Longest example in tokens (capped by the model's context).
    #[arg(long, default_value_t = 1024)]
    pub max_len: usize,
    /// What happens to a longer example: skip it, or truncate its completion (both counted).
    #[arg(long, value_enum, default_value = "skip")]
    pub overlong: decodex::train::finetune::data::Overlong,
    /// Use only the first N training examples.
    #[arg(long)]
    pub train_examples: Option<usize>,
    /// Examples for the eval loss: the first of --eval, or held out of --data without it.
    #[arg(long, default_value_t = 100)]
    pub eval_examples: usize,
    #[arg(long, default_value_t = 50)]
    pub eval_every: usize,
    #[arg(long, default_value_t = 50)]
    pub save_every: usize,
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue the run in --out (weights, optimizer moments, step, data position, elapsed time).
    #[arg(long)]
    pub resume: bool,
    #[arg(long)]
    pub json: bool,
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
    /// One JSON object: rouge1, rouge2, rougeL, pairs, stemmer.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct SquadArgs {
    /// The dataset in SQuAD's JSON form, e.g. ../shared/data/qa/squad/dev-v1.1.json.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// Predictions: one JSON object {question id: answer text}.
    #[arg(long, value_name = "FILE")]
    pub predictions: PathBuf,
    /// One JSON object: exact_match, f1, total, answered.
    #[arg(long)]
    pub json: bool,
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
    /// One JSON object: bleu, chrf, signatures, precisions, bp, lengths.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// Text file (.txt or .txt.gz) to score, e.g. ../shared/data/lm/gutenberg/valid.txt.
    #[arg(long)]
    pub text_file: PathBuf,
    /// Windows scored per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct QuickstartArgs {
    /// Where the run's checkpoint and metrics go; a checkpoint already there is continued.
    #[arg(long, default_value = "runs/shakespeare-char")]
    pub out: PathBuf,
    /// The preset to train.
    #[arg(long, default_value = "configs/shakespeare-char.toml")]
    pub config: PathBuf,
    /// Stop after this step (the schedule is unchanged).
    #[arg(long)]
    pub max_iters: Option<usize>,
    /// One JSON object per line instead of a progress bar.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum TokenizerCmd {
    /// Train a tokenizer on a text file and save it as tokenizer.json.
    Train {
        /// Text corpus (.txt or .txt.gz).
        #[arg(long)]
        input: PathBuf,
        #[arg(long, value_enum)]
        kind: Kind,
        /// Vocabulary size (bpe only).
        #[arg(long)]
        vocab_size: Option<usize>,
        /// Output tokenizer.json.
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Encode text with a tokenizer.json and print the ids.
    Encode {
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long)]
        text: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum Kind {
    Char,
    Bpe,
}

#[derive(Subcommand, Debug)]
pub enum DataCmd {
    /// Encode a corpus into train.bin/val.bin plus tokenizer.json and meta.json.
    Prepare {
        /// Text corpus (.txt or .txt.gz).
        #[arg(long)]
        input: PathBuf,
        /// Train a tokenizer of this kind (or give --tokenizer-file).
        #[arg(long, value_enum, required_unless_present = "tokenizer_file")]
        tokenizer: Option<Kind>,
        /// Vocabulary size (required for bpe).
        #[arg(long)]
        vocab_size: Option<usize>,
        /// Encode with this tokenizer.json (a pretrained model's) instead of training one.
        #[arg(long, conflicts_with_all = ["tokenizer", "vocab_size"])]
        tokenizer_file: Option<PathBuf>,
        /// A separate validation text (default: the last --val-fraction of the input).
        #[arg(long)]
        val_input: Option<PathBuf>,
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// TOML config (see configs/).
    #[arg(long)]
    pub config: PathBuf,
    /// Output directory for checkpoint and metrics.
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
    /// Stop after step N without changing the learning-rate schedule.
    #[arg(long)]
    pub max_iters: Option<usize>,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// One JSON object per logged step instead of a progress bar.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A GGUF file (Llama architecture), a Hugging Face Llama or GPT-2 directory, or a decodex
    /// checkpoint directory.
    #[arg(long)]
    pub model: PathBuf,
    /// The prompt, used as is unless --chat.
    #[arg(long, conflicts_with = "prompts")]
    pub prompt: Option<String>,
    /// A JSONL file of prompts: one JSON string, or object with a "prompt" field, per line.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    #[arg(long, default_value_t = 200)]
    pub max_new_tokens: usize,
    /// greedy, sample or beam.
    #[arg(long, default_value = "sample")]
    pub strategy: String,
    /// Same as --strategy greedy.
    #[arg(long)]
    pub greedy: bool,
    #[arg(long, default_value_t = 4)]
    pub num_beams: usize,
    /// Sequences returned per prompt (beam search: the best ones; sampling: one per seed).
    #[arg(long, default_value_t = 1)]
    pub num_return_sequences: usize,
    #[arg(long, default_value_t = 1.0)]
    pub length_penalty: f64,
    /// true, false or never (Hugging Face's semantics).
    #[arg(long, default_value = "false")]
    pub early_stopping: String,
    /// Diverse beam search: groups of beams penalized for repeating other groups' tokens.
    #[arg(long, default_value_t = 1)]
    pub num_beam_groups: usize,
    #[arg(long, default_value_t = 0.0)]
    pub diversity_penalty: f32,
    #[arg(long, default_value_t = 0)]
    pub no_repeat_ngram_size: usize,
    #[arg(long, default_value_t = 0)]
    pub min_new_tokens: usize,
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub min_p: Option<f32>,
    #[arg(long)]
    pub typical_p: Option<f32>,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Token ids never generated (repeatable).
    #[arg(long)]
    pub ban: Vec<u32>,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Stop when this string is generated (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Recompute the whole window each step instead of using the KV cache (GPT models).
    #[arg(long)]
    pub no_cache: bool,
    /// Dequantize a GGUF model's matrices to f32 instead of running them quantized.
    #[arg(long)]
    pub dequantize: bool,
    /// Format the prompt as a user message with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Greedy or sampled decoding of --prompts in batches of this many (left-padded, one forward
    /// pass per step for the batch; Llama-family models).
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// A tokenizer.json to use instead of the model's own.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// A LoRA adapter folder (PEFT layout, as `decodex finetune` writes) merged into the model
    /// at load (the weights are then f32).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Report the log-probability of each generated token.
    #[arg(long)]
    pub logprobs: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    /// A GGUF file or a Hugging Face directory with a chat template.
    #[arg(long)]
    pub model: PathBuf,
    /// A system message opening the conversation.
    #[arg(long)]
    pub system: Option<String>,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// 0 decodes greedily.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f32,
    #[arg(long, default_value_t = 1.1)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    #[arg(long)]
    pub dequantize: bool,
    /// One JSON object per reply instead of streamed text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// `hf`: a directory that transformers loads as GPT2LMHeadModel.
    #[arg(long, default_value = "hf")]
    pub format: String,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PlotArgs {
    /// metrics.jsonl written by `decodex train`.
    pub metrics: PathBuf,
    /// Output .png or .svg.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "decodex training")]
    pub title: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Prompt-processing and generation tokens/s of a decoder (llama-bench's pp and tg), and
    /// beam search speed.
    Decode {
        #[arg(long)]
        model: PathBuf,
        /// Tokens in the prompt processed in one forward pass.
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        /// Tokens generated one at a time after it.
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        #[arg(long, default_value_t = 3)]
        reps: usize,
        #[arg(long)]
        dequantize: bool,
        /// Also time beam search (4 beams, 32 new tokens).
        #[arg(long)]
        beam: bool,
        #[arg(long)]
        json: bool,
    },
    /// Sentences per second of an embedding model on a file of texts.
    Embed(search::BenchEmbedArgs),
    /// Median training tokens/s of full optimizer steps, and peak memory.
    Train {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, default_value_t = 50)]
        iters: usize,
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long)]
    pub text: String,
    /// Output safetensors with `input_ids` (1, T) and `logits` (1, T, V).
    #[arg(long)]
    pub out: PathBuf,
    /// A LoRA adapter folder merged into a Llama-family model (GGUF or Hugging Face folder).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

/// Parses arguments, runs the command and returns the exit code.
pub fn run() -> i32 {
    let cli = Cli::parse();
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
    match commands::dispatch(cli.command) {
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

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[derive(Args, Debug)]
pub struct TranslateArgs {
    /// A model directory written by `decodex train` on a seq2seq config.
    #[arg(long)]
    pub model: PathBuf,
    /// Source sentences, one per line; an empty line translates to an empty line.
    #[arg(long)]
    pub input: PathBuf,
    /// Beams; 1 is greedy search.
    #[arg(long, default_value_t = 1)]
    pub beam: usize,
    /// Beam scores are log-probability / length^this.
    #[arg(long, default_value_t = 1.0)]
    pub length_penalty: f64,
    /// Beam search: translations printed per line, best first (JSON: "nbest" holds all).
    #[arg(long, default_value_t = 1)]
    pub n_best: usize,
    /// Sample each token (with --beam 1) instead of taking the most likely one.
    #[arg(long)]
    pub sample: bool,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Sampling: keep the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sampling: keep the smallest set of tokens whose probability reaches p (1 = all).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Sampling seed (line i of a batch uses seed + i).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Greedy search and sampling: sentences decoded together.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Draw the attention weights of one translated line as a heatmap (.png or .svg).
    #[arg(long, value_name = "FILE")]
    pub attention_png: Option<PathBuf>,
    /// The input line (1-based) whose attention --attention-png draws.
    #[arg(long, default_value_t = 1)]
    pub attention_line: usize,
    /// One JSON object per input line: {"text": ...}.
    #[arg(long)]
    pub json: bool,
}
