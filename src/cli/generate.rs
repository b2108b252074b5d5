//! `decodex generate` and `decodex bench decode`: decoding any supported model with greedy
//! search, sampling or beam search.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use decodex::decode::{
    self, beam_search, generate_ids, generate_ids_until, BeamConfig, Decoder, EarlyStopping,
    SamplingConfig, StopReason, Strategy,
};
use decodex::models::pretrained::{self, Pretrained};

use super::args::{self, given, DecodingArgs, ModelArgs, StrategyArg};
use super::BenchDecodeArgs;

#[derive(Args, Debug)]
#[command(mut_args(args::for_generate))]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt, used as is unless --chat.
    #[arg(long, conflicts_with = "prompts")]
    pub prompt: Option<String>,
    /// A JSONL file of prompts: one JSON string, or object with a "prompt" field, per line.
    #[arg(long, value_name = "FILE")]
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

impl GenerateArgs {
    fn max_new_tokens(&self) -> usize {
        given(self.decoding.max_new_tokens, "max_new_tokens")
    }
    fn stop(&self) -> &[String] {
        &self.decoding.stop_strings
    }
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

/// What to run, checked before any model is loaded.
struct Plan {
    strategy: StrategyArg,
    sampling: SamplingConfig,
    beam: BeamConfig,
}

/// The checks `generate` and `chat` share: at least one new token, sampling values in range.
fn check_decoding(max_new_tokens: usize, sampling: &SamplingConfig) -> Result<()> {
    if max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    Ok(sampling.validate()?)
}

/// Refuses `tokens` input tokens that, with `new` tokens generated after them, do not fit in
/// the model's `context` positions. `what` names the input after its count: "prompt tokens",
/// "tokens of --text".
pub(super) fn check_context(what: &str, tokens: usize, new: usize, context: usize) -> Result<()> {
    if tokens + new > context {
        let plus = if new > 0 {
            format!(" + {new} new")
        } else {
            String::new()
        };
        bail!("{tokens} {what}{plus} exceed the model's context of {context}");
    }
    Ok(())
}

fn plan(a: &GenerateArgs) -> Result<Plan> {
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
        ..SamplingConfig::default()
    };
    check_decoding(a.max_new_tokens(), &sampling)?;
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
        max_new_tokens: a.max_new_tokens(),
    };
    if strategy == StrategyArg::Beam {
        beam.validate()?;
    } else if num_return_sequences == 0 {
        bail!("--num-return-sequences must be at least 1");
    }
    Ok(Plan {
        strategy,
        sampling,
        beam,
    })
}

/// The prompts of --prompt or --prompts.
fn prompts(a: &GenerateArgs) -> Result<Vec<String>> {
    let list = match (&a.prompt, &a.prompts) {
        (Some(p), _) => vec![p.clone()],
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
            out
        }
        (None, None) => bail!("pass --prompt TEXT or --prompts FILE.jsonl"),
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
    let mut plan = plan(a)?;
    let prompts = prompts(a)?;
    let model = pretrained::load_with_adapter(
        &a.model.model,
        a.model.dequantize,
        a.tokenizer_file.as_deref(),
        a.model.adapter.as_deref(),
    )?;
    if a.chat {
        model.require_chat_template()?;
    }
    plan.sampling.eos_ids = model.eos_ids.clone();
    plan.sampling.crop_context = model.crop_context();
    plan.sampling.use_cache = !a.no_cache;
    plan.beam.eos_ids = model.eos_ids.clone();
    let mut out = std::io::stdout().lock();
    if a.batch_size > 1 && plan.strategy != StrategyArg::Beam {
        return batched(model.decoder(), &model, &plan, a, &prompts, &mut out);
    }
    for (index, prompt) in prompts.iter().enumerate() {
        let text = if a.chat {
            model.chat_prompt(prompt)?
        } else {
            prompt.clone()
        };
        let ids = model.tokenizer.encode(&text)?;
        if !model.crop_context() {
            // Room for one new token at least.
            let what = format!("tokens of prompt {}", index + 1);
            check_context(&what, ids.len(), 1, model.context_len())?;
        }
        let results = run(&model, &plan, a, &ids, &mut out)?;
        for mut r in results {
            if a.json {
                r["index"] = json!(index);
                r["prompt_tokens"] = json!(ids.len());
                writeln!(out, "{r}")?;
            } else if plan.strategy == StrategyArg::Beam {
                writeln!(
                    out,
                    "[score {:.4}] {}{}",
                    r["score"].as_f64().unwrap_or(f64::NAN),
                    text,
                    r["text"].as_str().unwrap_or("")
                )?;
            }
        }
    }
    Ok(())
}

/// --batch-size: greedy or sampled decoding of the prompts in left-padded batches; one JSON
/// object (or text line) per prompt, in order.
fn batched(
    m: &dyn Decoder,
    model: &Pretrained,
    plan: &Plan,
    a: &GenerateArgs,
    prompts: &[String],
    out: &mut impl Write,
) -> Result<()> {
    let strategy = if plan.strategy == StrategyArg::Greedy {
        Strategy::Greedy
    } else {
        Strategy::Sample
    };
    let pad = model.eos_ids.first().copied().unwrap_or(0);
    for (c, chunk) in prompts.chunks(a.batch_size).enumerate() {
        let ids = chunk
            .iter()
            .map(|p| {
                let text = if a.chat {
                    model.chat_prompt(p)?
                } else {
                    p.clone()
                };
                Ok(model.tokenizer.encode(&text)?)
            })
            .collect::<Result<Vec<Vec<u32>>>>()?;
        let t = Instant::now();
        let results = decode::generate_batch(
            m,
            &ids,
            &plan.sampling,
            strategy,
            a.max_new_tokens(),
            pad,
            |_, _, _| {},
        )?;
        let secs = t.elapsed().as_secs_f64();
        for (k, g) in results.iter().enumerate() {
            let text = new_text(model, &g.tokens, a.stop())?;
            if a.json {
                let mut v = json!({"index": c * a.batch_size + k, "text": text, "tokens": g.tokens,
                                   "prompt_tokens": ids[k].len(), "new_tokens": g.tokens.len(),
                                   "stopped_by": g.stopped_by, "batch_seconds": secs});
                if a.logprobs {
                    v["logprobs"] = json!(g.logprobs);
                }
                writeln!(out, "{v}")?;
            } else {
                writeln!(out, "{}{}", chunk[k], text)?;
            }
        }
    }
    Ok(())
}

/// The text of newly generated `tokens`: EOS ids dropped, cut before the first stop string.
fn new_text(model: &Pretrained, tokens: &[u32], stop: &[String]) -> Result<String> {
    let kept: Vec<u32> = tokens
        .iter()
        .copied()
        .filter(|t| !model.eos_ids.contains(t))
        .collect();
    let mut text = model.tokenizer.decode(&kept)?;
    if let Some(cut) = stop.iter().filter_map(|s| text.find(s.as_str())).min() {
        text.truncate(cut);
    }
    Ok(text)
}

/// Follows generated text as it completes, for streaming and stop strings: a token that ends
/// inside a multi-byte character waits for the next; EOS ids are not shown; text that may still
/// grow into a stop string is held back. The first write error is kept for the caller.
struct Stream<'a> {
    model: &'a Pretrained,
    stop: &'a [String],
    /// Write the text out as it comes (human mode), or only watch for stop strings.
    show: bool,
    tokens: Vec<u32>,
    shown: usize,
    hit: Option<String>,
    error: Option<std::io::Error>,
}

impl<'a> Stream<'a> {
    fn new(model: &'a Pretrained, stop: &'a [String], show: bool) -> Self {
        let (tokens, shown, hit, error) = (Vec::new(), 0, None, None);
        Stream {
            model,
            stop,
            show,
            tokens,
            shown,
            hit,
            error,
        }
    }

    /// Takes the next token; false once the text holds a stop string.
    fn push(&mut self, tok: u32, out: &mut impl Write) -> bool {
        if self.model.eos_ids.contains(&tok) {
            return true;
        }
        self.tokens.push(tok);
        let Ok(text) = self.model.tokenizer.decode(&self.tokens) else {
            return true;
        };
        let first = self
            .stop
            .iter()
            .filter_map(|s| text.find(s.as_str()).map(|i| (i, s)));
        if let Some((cut, s)) = first.min() {
            self.hit = Some(s.clone());
            self.write(&text, cut, out);
            return false;
        }
        let hold = self.stop.iter().map(|s| s.len().saturating_sub(1)).max();
        let mut end = text
            .trim_end_matches('\u{FFFD}')
            .len()
            .min(text.len() - hold.unwrap_or(0).min(text.len()));
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.write(&text, end, out);
        true
    }

    fn write(&mut self, text: &str, end: usize, out: &mut impl Write) {
        if self.show
            && self.error.is_none()
            && end > self.shown
            && text.is_char_boundary(self.shown)
        {
            let piece = &text.as_bytes()[self.shown..end];
            self.error = out.write_all(piece).and_then(|_| out.flush()).err();
            self.shown = end;
        }
    }

    /// Writes what was held back of the final `text`; the first write error, if any.
    fn finish(mut self, text: &str, out: &mut impl Write) -> Result<()> {
        if text.len() > self.shown {
            self.write(text, text.len(), out);
        }
        self.error.map_or(Ok(()), |e| Err(e.into()))
    }
}

/// Greedy search or sampling (`num_return_sequences` seeds) or beam search on one prompt; one
/// JSON object per returned sequence. Greedy and sampled text streams in human mode.
fn run(
    model: &Pretrained,
    plan: &Plan,
    a: &GenerateArgs,
    ids: &[u32],
    out: &mut impl Write,
) -> Result<Vec<Value>> {
    let decode_new = |tokens: &[u32]| new_text(model, tokens, a.stop());
    let t0 = Instant::now();
    if plan.strategy == StrategyArg::Beam {
        let hyps = beam_search(model.decoder(), ids, &plan.beam)?;
        let secs = t0.elapsed().as_secs_f64();
        return hyps
            .iter()
            .map(|h| {
                Ok(
                    json!({"text": decode_new(&h.tokens)?, "tokens": h.tokens, "score": h.score,
                          "new_tokens": h.tokens.len(), "finished": h.finished, "seconds": secs}),
                )
            })
            .collect();
    }
    let strategy = if plan.strategy == StrategyArg::Greedy {
        Strategy::Greedy
    } else {
        Strategy::Sample
    };
    let mut results = Vec::new();
    for r in 0..plan.beam.num_return_sequences {
        let cfg = SamplingConfig {
            seed: plan.sampling.seed.wrapping_add(r as u64),
            ..plan.sampling.clone()
        };
        let show = !a.json;
        if show {
            write!(
                out,
                "{}",
                if a.chat {
                    ""
                } else {
                    a.prompt.as_deref().unwrap_or("")
                }
            )?;
        }
        let mut shown = Stream::new(model, a.stop(), show);
        let t = Instant::now();
        let g = generate_ids_until(
            model.decoder(),
            ids,
            &cfg,
            strategy,
            a.max_new_tokens(),
            |tok, _| shown.push(tok, out),
        )?;
        let secs = t.elapsed().as_secs_f64();
        let text = decode_new(&g.tokens)?;
        let stopped_by = match (&g.stopped_by, &shown.hit) {
            (StopReason::Stop, Some(s)) => format!("stop:{s}"),
            (StopReason::Eos, _) => "eos".into(),
            (StopReason::Context, _) => "context".into(),
            _ => "max_new_tokens".into(),
        };
        shown.finish(&text, out)?;
        if show {
            writeln!(out)?;
        }
        let mut v = json!({"text": text, "tokens": g.tokens, "new_tokens": g.tokens.len(),
                           "stopped_by": stopped_by,
                           "tokens_per_sec": g.tokens.len() as f64 / secs});
        if a.logprobs {
            v["logprobs"] = json!(g.logprobs);
        }
        results.push(v);
    }
    Ok(results)
}

/// `decodex bench decode`.
pub fn bench_decode(a: &BenchDecodeArgs, json_out: bool) -> Result<()> {
    let (prompt_tokens, new_tokens, reps) = (a.prompt_tokens, a.new_tokens, a.reps);
    if prompt_tokens == 0 || new_tokens == 0 || reps == 0 {
        bail!("--prompt-tokens, --new-tokens and --reps must be at least 1");
    }
    if a.num_beams == 0 {
        bail!("--num-beams must be at least 1 (1: no beam search)");
    }
    let beams = (a.num_beams > 1).then_some(a.num_beams);
    let path = a.model.model.as_path();
    let model =
        pretrained::load_with_adapter(path, a.model.dequantize, None, a.model.adapter.as_deref())?;
    let context = model.context_len();
    check_context("prompt tokens", prompt_tokens, new_tokens, context)?;
    if beams.is_some() {
        check_context(
            "prompt tokens for --num-beams",
            prompt_tokens.min(BEAM_PROMPT),
            BEAM_NEW,
            context,
        )?;
    }
    // A prompt of real text: the start of Tiny Shakespeare when the data folder is there.
    let corpus =
        decodex::train::config::resolve_data_path(Path::new("lm/tinyshakespeare/input.txt"));
    let text = std::fs::read_to_string(&corpus)
        .unwrap_or_else(|_| "The quick brown fox jumps over the lazy dog. ".repeat(400));
    let mut ids = model.tokenizer.encode(&text[..text.len().min(20_000)])?;
    ids.truncate(prompt_tokens);
    if ids.len() < prompt_tokens {
        bail!("the benchmark text is too short for {prompt_tokens} prompt tokens");
    }
    let m = model.decoder();
    let r = decode::bench::bench_decode(m, &ids, new_tokens, reps)?;
    let beam_tps = time_beam(m, &ids, beams)?;
    let rss = decodex::train::bench::peak_rss_mb();
    let threads = rayon::current_num_threads();
    let v = json!({"model": path, "threads": threads, "prompt_tokens": r.prompt_tokens, "new_tokens": r.new_tokens,
                   "reps": r.reps, "prompt_tokens_per_sec": r.prompt_tokens_per_sec,
                   "decode_tokens_per_sec": r.decode_tokens_per_sec,
                   "num_beams": a.num_beams, "beam_tokens_per_sec": beam_tps,
                   "beam4_tokens_per_sec": beam_tps.filter(|_| a.num_beams == 4),
                   "peak_rss_mb": rss});
    let mut out = std::io::stdout().lock();
    if json_out {
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "{threads} threads: prompt {:.1} tokens/s (pp{}), decode {:.1} tokens/s (tg{}){}, peak RSS {rss:.0} MiB",
            r.prompt_tokens_per_sec,
            r.prompt_tokens,
            r.decode_tokens_per_sec,
            r.new_tokens,
            beam_tps.map(|b| format!(", beam search ({} beams, {BEAM_NEW} tokens) {b:.1} tokens/s", a.num_beams)).unwrap_or_default()
        )?;
    }
    Ok(())
}

/// `bench decode --num-beams`: the most prompt tokens the beam search starts from, and the
/// tokens it generates.
const BEAM_PROMPT: usize = 32;
const BEAM_NEW: usize = 32;

/// New tokens per second of a beam search with `beams` beams for 32 tokens (no EOS stop), when
/// asked.
fn time_beam(m: &dyn Decoder, ids: &[u32], beams: Option<usize>) -> Result<Option<f64>> {
    let Some(num_beams) = beams else {
        return Ok(None);
    };
    let cfg = BeamConfig {
        num_beams,
        max_new_tokens: BEAM_NEW,
        early_stopping: EarlyStopping::True,
        ..BeamConfig::default()
    };
    let t = Instant::now();
    let hyps = beam_search(m, &ids[..ids.len().min(BEAM_PROMPT)], &cfg)?;
    let n = hyps.first().map_or(0, |h| h.tokens.len());
    Ok(Some(n as f64 / t.elapsed().as_secs_f64()))
}

/// `decodex chat`: a read-reply loop over stdin; each turn renders the whole conversation with
/// the model's chat template and streams the reply.
pub fn chat(a: &ChatArgs, json: bool) -> Result<()> {
    let d = &a.decoding;
    d.check_profile("chat", args::CHAT)?;
    let sampling = SamplingConfig {
        temperature: given(d.temperature, "temperature"),
        top_p: given(d.top_p, "top_p"),
        repetition_penalty: given(d.repetition_penalty, "repetition_penalty"),
        seed: given(d.seed, "seed"),
        ..SamplingConfig::default()
    };
    let max_new_tokens = given(d.max_new_tokens, "max_new_tokens");
    check_decoding(max_new_tokens, &sampling)?;
    let model = pretrained::load_with_adapter(
        &a.model.model,
        a.model.dequantize,
        None,
        a.model.adapter.as_deref(),
    )?;
    // Before the first prompt is read (and `> ` shown).
    model.require_chat_template()?;
    let sampling = SamplingConfig {
        eos_ids: model.eos_ids.clone(),
        ..sampling
    };
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
        let msgs: Vec<(&str, &str)> = history
            .iter()
            .map(|(r, c)| (r.as_str(), c.as_str()))
            .collect();
        let ids = model.tokenizer.encode(&model.chat_prompt_for(&msgs)?)?;
        let strategy = if sampling.temperature == 0.0 {
            Strategy::Greedy
        } else {
            Strategy::Sample
        };
        let turn = SamplingConfig {
            seed: sampling.seed.wrapping_add(history.len() as u64),
            ..sampling.clone()
        };
        let mut shown = Stream::new(&model, &[], !json);
        let n = max_new_tokens;
        let m = model.decoder();
        let reply = generate_ids(m, &ids, &turn, strategy, n, |t, _| {
            shown.push(t, &mut out);
        })?
        .tokens;
        let text = new_text(&model, &reply, &[])?;
        shown.finish(&text, &mut out)?;
        if json {
            writeln!(out, "{}", json!({"reply": text, "tokens": reply}))?;
        } else {
            writeln!(out)?;
        }
        history.push(("assistant".into(), text));
    }
    Ok(())
}
