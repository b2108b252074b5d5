//! `decodex generate` and `decodex bench decode`: decoding any supported model with greedy
//! search, sampling or beam search.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use decodex::decode::bench::{self, BEAM_NEW, BEAM_PROMPT};
use decodex::decode::generate::{check_context, generate, GenerateOptions, Generated};
use decodex::decode::{self, BeamConfig, SamplingConfig};
use decodex::models::pretrained::{self, Network, Pretrained};

use super::args::{self, given, DecodingArgs, ModelArgs, PromptArgs, StrategyArg};
use super::commands::emit;
use super::BenchDecodeArgs;

#[derive(Args, Debug)]
#[command(mut_args(args::for_generate))]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    /// A JSONL file of prompts: one JSON string, or object with a "prompt" field, per line.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["prompt", "prompt_file"])]
    pub prompts: Option<PathBuf>,
    /// Format the prompt as a user message with the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// A tokenizer.json to use instead of the model's own.
    #[arg(long, value_name = "FILE", alias = "tokenizer")]
    pub tokenizer_file: Option<PathBuf>,
    /// Greedy or sampled decoding of --prompts in batches of this many (left-padded, one forward
    /// pass per step for the batch; Llama-family models).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub batch_size: usize,
    /// Recompute the whole window each step instead of using the KV cache (GPT models).
    #[arg(long)]
    pub no_cache: bool,
    /// Report the log-probability of each generated token.
    #[arg(long)]
    pub logprobs: bool,
    #[command(flatten)]
    pub decoding: DecodingArgs,
    /// The global --json (not a flag of its own).
    #[arg(skip)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(mut_args(args::for_chat))]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system message opening the conversation.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub decoding: DecodingArgs,
}

/// The checks `generate` and `chat` share: at least one new token, sampling values in range.
fn check_decoding(max_new_tokens: usize, sampling: &SamplingConfig) -> Result<()> {
    if max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    Ok(sampling.validate()?)
}

/// The decoding options of the flags, checked before any model is loaded.
fn plan(a: &GenerateArgs) -> Result<GenerateOptions> {
    let d = &a.decoding;
    d.check_profile("generate", args::GENERATE)?;
    let strategy = if d.greedy {
        StrategyArg::Greedy
    } else {
        given(d.strategy, "strategy")
    };
    if d.do_sample && strategy != StrategyArg::Sample {
        bail!(
            "--do-sample asks for sampling, --{} for {} search; choose one",
            if d.greedy { "greedy" } else { "strategy" },
            strategy.name()
        );
    }
    let temperature = given(d.temperature, "temperature");
    if temperature.is_nan() || temperature < 0.0 {
        bail!("--temperature ({temperature}) must be at least 0");
    }
    if let Some(p) = d.top_p {
        if !(p > 0.0 && p <= 1.0) {
            bail!("--top-p ({p}) must be in (0, 1]");
        }
    }
    if d.top_k == Some(0) {
        bail!("--top-k must be at least 1");
    }
    let no_repeat_ngram_size = given(d.no_repeat_ngram_size, "no_repeat_ngram_size");
    let min_new_tokens = given(d.min_new_tokens, "min_new_tokens");
    let sampling = SamplingConfig {
        temperature,
        top_k: d.top_k.unwrap_or(0),
        top_p: d.top_p.unwrap_or(1.0),
        min_p: d.min_p.unwrap_or(0.0),
        typical_p: d.typical_p.unwrap_or(1.0),
        repetition_penalty: given(d.repetition_penalty, "repetition_penalty"),
        presence_penalty: given(d.presence_penalty, "presence_penalty"),
        frequency_penalty: given(d.frequency_penalty, "frequency_penalty"),
        no_repeat_ngram_size,
        min_new_tokens,
        banned_ids: d.suppress_tokens.clone(),
        eos_ids: Vec::new(),
        seed: given(d.seed, "seed"),
        use_cache: !a.no_cache,
        ..SamplingConfig::default()
    };
    let max_new_tokens = given(d.max_new_tokens, "max_new_tokens");
    check_decoding(max_new_tokens, &sampling)?;
    let num_return_sequences = given(d.num_return_sequences, "num_return_sequences");
    let beam = BeamConfig {
        num_beams: given(d.num_beams, "num_beams"),
        num_beam_groups: given(d.num_beam_groups, "num_beam_groups"),
        diversity_penalty: given(d.diversity_penalty, "diversity_penalty"),
        length_penalty: given(d.length_penalty, "length_penalty"),
        early_stopping: given(d.early_stopping, "early_stopping").into(),
        num_return_sequences,
        no_repeat_ngram_size,
        min_new_tokens,
        eos_ids: Vec::new(),
        max_new_tokens,
    };
    if strategy == StrategyArg::Beam {
        beam.validate()?;
    } else if num_return_sequences == 0 {
        bail!("--num-return-sequences must be at least 1");
    }
    Ok(GenerateOptions {
        strategy: strategy.sampling(),
        sampling,
        beam,
        max_new_tokens,
        stop: d.stop_strings.clone(),
        chat: a.chat,
        batch_size: a.batch_size,
        logprobs: a.logprobs,
        stream: !a.json,
        echo: !a.chat && a.prompt.given(),
    })
}

/// The prompts of --prompt, --prompt-file or --prompts.
fn prompts(a: &GenerateArgs) -> Result<Vec<String>> {
    let list = match (a.prompt.read()?, &a.prompts) {
        (Some(p), _) => vec![p],
        (None, Some(file)) => {
            let text =
                std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
            let mut out = Vec::new();
            for (i, line) in text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let v: Value = serde_json::from_str(line)
                    .with_context(|| format!("{}: line {} is not JSON", file.display(), i + 1))?;
                match v.as_str().or_else(|| v["prompt"].as_str()) {
                    Some(p) => out.push(p.to_string()),
                    None => bail!(
                        "{}: line {} has no \"prompt\" string",
                        file.display(),
                        i + 1
                    ),
                }
            }
            if out.is_empty() {
                bail!(
                    "{}: no prompts (the file is empty); give one JSON string or {{\"prompt\": ...}} per line",
                    file.display()
                );
            }
            out
        }
        (None, None) => bail!("pass --prompt TEXT, --prompt-file PATH or --prompts FILE.jsonl"),
    };
    if let Some(i) = list.iter().position(|p| p.is_empty()) {
        bail!(
            "prompt {} is empty; decoding needs at least one token of context",
            i + 1
        );
    }
    Ok(list)
}

pub fn generate_cmd(a: &GenerateArgs) -> Result<()> {
    let mut o = plan(a)?;
    let prompts = prompts(a)?;
    let model = load(&a.model, a.tokenizer_file.as_deref())?;
    if a.chat {
        model.require_chat_template()?;
    }
    o.sampling.eos_ids = model.eos_ids.clone();
    o.sampling.crop_context = model.crop_context();
    o.beam.eos_ids = model.eos_ids.clone();
    let mut out = std::io::stdout().lock();
    generate(&model, &o, &prompts, &mut out, |g, prompt, out| {
        if a.json {
            writeln!(out, "{}", serde_json::to_value(&g)?)?;
            return Ok::<_, anyhow::Error>(());
        }
        // With --chat the reply only, whatever the strategy; else the prompt and its
        // continuation (one prompt at a time with greedy search or sampling streamed them).
        let shown = if a.chat { "" } else { prompt };
        match g.score {
            Some(score) if !a.chat => {
                writeln!(out, "[score {:.4}] {shown}{}", f64::from(score), g.text)?
            }
            _ if g.score.is_some() || g.batch_seconds.is_some() => {
                writeln!(out, "{shown}{}", g.text)?
            }
            _ => {}
        }
        eprintln!("{}", speed(&g));
        Ok(())
    })
}

/// The one-line summary text mode prints on stderr after each sequence: prompt and generation
/// tokens/s when they were timed apart, else the sequence's tokens and seconds.
fn speed(g: &Generated) -> String {
    let rate = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.1}"));
    if let Some(p) = g.prompt_tokens_per_sec {
        return format!(
            "prompt: {} tokens, {} tokens/s; generation: {} tokens, {} tokens/s",
            g.prompt_tokens,
            rate(Some(p)),
            g.new_tokens,
            rate(g.generation_tokens_per_sec)
        );
    }
    let score = g.score.map_or(String::new(), |s| format!(", score {s:.4}"));
    let secs = g.seconds.or(g.batch_seconds).unwrap_or(0.0);
    let what = if g.batch_seconds.is_some() {
        "decoded in a batch"
    } else {
        "beam search"
    };
    format!(
        "prompt: {} tokens; generation: {} tokens{score} ({what}, {secs:.2} s)",
        g.prompt_tokens, g.new_tokens
    )
}

/// The model of --model, --dequantize and --adapter (with another tokenizer).
pub(super) fn load(m: &ModelArgs, tokenizer: Option<&Path>) -> Result<Pretrained> {
    let adapter = m.adapter.as_deref();
    let mut model = pretrained::load_with_adapter(&m.model, m.dequantize, tokenizer, adapter)?;
    if let Network::Llama(l) = &mut model.network {
        l.flash_attn = m.flash_attn == args::OnOff::On;
    }
    Ok(model)
}

/// `decodex bench decode`.
pub fn bench_decode(a: &BenchDecodeArgs, json_out: bool) -> Result<()> {
    let (prompt_tokens, new_tokens, depth, reps) = (a.prompt_tokens, a.new_tokens, a.depth, a.reps);
    if prompt_tokens + new_tokens == 0 || reps == 0 {
        bail!("--reps must be at least 1, and --prompt-tokens or --new-tokens too");
    }
    if a.num_beams == 0 {
        bail!("--num-beams must be at least 1 (1: no beam search)");
    }
    let beams = (a.num_beams > 1).then_some(a.num_beams);
    let path = a.model.model.as_path();
    let model = load(&a.model, None)?;
    let context = model.context_len();
    bench::check_context(model.decoder(), depth, prompt_tokens, new_tokens)?;
    if beams.is_some() {
        check_context(
            "prompt tokens for --num-beams",
            prompt_tokens.clamp(1, BEAM_PROMPT),
            BEAM_NEW,
            context,
        )?;
    }
    // Real text: Tiny Shakespeare when the data folder is there, repeated as often as the
    // depth and prompt need.
    let corpus =
        decodex::train::config::resolve_data_path(Path::new("lm/tinyshakespeare/input.txt"));
    let text = std::fs::read_to_string(&corpus)
        .unwrap_or_else(|_| "The quick brown fox jumps over the lazy dog. ".repeat(400));
    let need = depth + prompt_tokens.max(1);
    let piece = model.tokenizer.encode(&text[..text.len().min(20_000)])?;
    if piece.is_empty() {
        bail!("the benchmark text gives no tokens");
    }
    let ids: Vec<u32> = piece.iter().copied().cycle().take(need).collect();
    let m = model.decoder();
    // Progress on stderr, in text mode, once a prompt or fill has taken 2 seconds.
    let started = std::cell::Cell::new(None::<std::time::Instant>);
    let progress = |done: usize, total: usize| {
        if json_out || total <= 512 {
            return;
        }
        let t0 = *started.get().get_or_insert_with(std::time::Instant::now);
        if done < total && t0.elapsed().as_secs_f64() > 2.0 {
            eprint!("\rprompt: {done} of {total} tokens");
        } else if done >= total {
            if t0.elapsed().as_secs_f64() > 2.0 {
                eprintln!("\rprompt: {total} of {total} tokens");
            }
            started.set(None);
        }
    };
    let r = bench::bench_decode(m, &ids, (depth, prompt_tokens, new_tokens), reps, &progress)?;
    let beam_tps = beams.map(|n| bench::bench_beam(m, &ids, n)).transpose()?;
    let rss = decodex::train::bench::peak_rss_mb();
    let threads = rayon::current_num_threads();
    let v = super::commands::with_isa(
        json!({"model": path, "threads": threads, "prompt_tokens": r.prompt_tokens, "new_tokens": r.new_tokens,
                   "depth": r.depth, "reps": r.reps, "prompt_tokens_per_sec": r.prompt_tokens_per_sec,
                   "decode_tokens_per_sec": r.decode_tokens_per_sec,
                   "num_beams": a.num_beams, "beam_tokens_per_sec": beam_tps,
                   "beam4_tokens_per_sec": beam_tps.filter(|_| a.num_beams == 4),
                   "peak_rss_mb": rss}),
    );
    let at = if depth > 0 {
        format!(" @ d{depth}")
    } else {
        String::new()
    };
    let mut parts = Vec::new();
    if let Some(pp) = r.prompt_tokens_per_sec {
        parts.push(format!("prompt {pp:.1} tokens/s (pp{prompt_tokens}{at})"));
    }
    if let Some(tg) = r.decode_tokens_per_sec {
        parts.push(format!("decode {tg:.1} tokens/s (tg{new_tokens}{at})"));
    }
    if let Some(b) = beam_tps {
        parts.push(format!(
            "beam search ({} beams, {BEAM_NEW} tokens) {b:.1} tokens/s",
            a.num_beams
        ));
    }
    let human = format!(
        "{} tier, {threads} threads: {}, peak RSS {rss:.0} MiB",
        decodex::kernels::Isa::current().name(),
        parts.join(", ")
    );
    emit(json_out, v, &human)
}

/// `decodex chat`: a read-reply loop over stdin; each turn renders the whole conversation with
/// the model's chat template and streams the reply.
pub fn chat(a: &ChatArgs, json: bool) -> Result<()> {
    let d = &a.decoding;
    d.check_profile("chat", args::CHAT)?;
    let mut sampling = SamplingConfig {
        temperature: given(d.temperature, "temperature"),
        top_p: given(d.top_p, "top_p"),
        repetition_penalty: given(d.repetition_penalty, "repetition_penalty"),
        seed: given(d.seed, "seed"),
        ..SamplingConfig::default()
    };
    let max_new_tokens = given(d.max_new_tokens, "max_new_tokens");
    check_decoding(max_new_tokens, &sampling)?;
    let model = load(&a.model, None)?;
    // Before the first prompt is read (and `> ` shown).
    model.require_chat_template()?;
    sampling.eos_ids = model.eos_ids.clone();
    let mut history: Vec<(String, String)> = Vec::new();
    if let Some(s) = &a.system {
        history.push(("system".into(), s.clone()));
    }
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    loop {
        if !json {
            write!(out, "> ")?;
            out.flush()?;
        }
        let mut line = String::new();
        if stdin.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        history.push(("user".into(), line.trim_end().to_string()));
        let (text, tokens) = decode::generate::chat_reply(
            &model,
            &history,
            &sampling,
            max_new_tokens,
            !json,
            &mut out,
        )?;
        if json {
            writeln!(out, "{}", json!({"reply": text, "tokens": tokens}))?;
        } else {
            writeln!(out)?;
        }
        history.push(("assistant".into(), text));
    }
    Ok(())
}
