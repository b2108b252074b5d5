//! `decodex summarize`, `decodex answer`, `decodex translate` and `decodex merge`: the task
//! front ends over the decoding engine, with the prompts of `decodex::tasks` (the ones
//! `finetune --task` trains on), translation with a sequence-to-sequence model, and the LoRA
//! merge.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use decodex::decode::{self, beam_search, BeamConfig, EarlyStopping, SamplingConfig, Strategy};
use decodex::eval::{rouge, squad};
use decodex::models::pretrained::{self, Network, Pretrained};
use decodex::tasks;

use super::args::{self, given, DecodingArgs, ModelArgs, StrategyArg};
use super::commands::check_out_is_not;

#[derive(Args, Debug)]
#[command(mut_args(args::for_task))]
pub struct TaskArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// summarize: JSONL with "document" (and "summary" for ROUGE); answer: a SQuAD v1.1 JSON.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// answer: one question (with --context) instead of --input.
    #[arg(long)]
    pub question: Option<String>,
    /// answer: the context --question is answered from.
    #[arg(long)]
    pub context: Option<String>,
    /// Write the outputs here: summaries one per line; answers as SQuAD predictions JSON.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Only the first N documents or questions.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Greedy decoding of this many prompts at once (left-padded).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub batch_size: usize,
    #[command(flatten)]
    pub decoding: DecodingArgs,
}

impl TaskArgs {
    fn strategy(&self) -> StrategyArg {
        given(self.decoding.strategy, "strategy")
    }
    fn max_new_tokens(&self) -> usize {
        given(self.decoding.max_new_tokens, "max_new_tokens")
    }
    fn no_repeat_ngram_size(&self) -> usize {
        given(self.decoding.no_repeat_ngram_size, "no_repeat_ngram_size")
    }
}

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The base: a GGUF file or a Hugging Face Llama folder.
    #[arg(long, value_name = "PATH", visible_alias = "base")]
    pub model: PathBuf,
    /// The LoRA adapter folder (PEFT layout, as `decodex finetune` writes).
    #[arg(long, value_name = "DIR")]
    pub adapter: PathBuf,
    /// The output folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
#[command(mut_args(args::for_translate))]
pub struct TranslateArgs {
    /// A model directory written by `decodex train` on a seq2seq config.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Source sentences, one per line; an empty line translates to an empty line.
    #[arg(long, value_name = "FILE")]
    pub input: PathBuf,
    /// Greedy search and sampling: sentences decoded together.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub batch_size: usize,
    /// Draw the attention weights of one translated line as a heatmap (.png or .svg).
    #[arg(long, value_name = "FILE")]
    pub attention_png: Option<PathBuf>,
    /// The input line (1-based) whose attention --attention-png draws.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub attention_line: usize,
    #[command(flatten)]
    pub decoding: DecodingArgs,
}

/// Checks the flags, then loads the model.
fn load(a: &TaskArgs, command: &str) -> Result<Pretrained> {
    check(a, command)?;
    Ok(pretrained::load_with_adapter(
        &a.model.model,
        a.model.dequantize,
        None,
        a.model.adapter.as_deref(),
    )?)
}

/// The checks of the decoding flags, before any file is read.
fn check(a: &TaskArgs, command: &str) -> Result<()> {
    a.decoding.check_profile(command, args::TASK)?;
    if a.strategy() == StrategyArg::Sample {
        bail!("--strategy \"sample\" is not one of greedy, beam");
    }
    if a.max_new_tokens() == 0 || a.batch_size == 0 {
        bail!("--max-new-tokens and --batch-size must be at least 1");
    }
    if a.strategy() == StrategyArg::Beam {
        beam_config(a, Vec::new()).validate()?;
    }
    Ok(())
}

/// The beam search of `--strategy beam`, stopping at `eos_ids`.
fn beam_config(a: &TaskArgs, eos_ids: Vec<u32>) -> BeamConfig {
    BeamConfig {
        num_beams: given(a.decoding.num_beams, "num_beams"),
        num_beam_groups: 1,
        diversity_penalty: 0.0,
        length_penalty: given(a.decoding.length_penalty, "length_penalty"),
        early_stopping: EarlyStopping::True,
        num_return_sequences: 1,
        no_repeat_ngram_size: a.no_repeat_ngram_size(),
        min_new_tokens: 0,
        eos_ids,
        max_new_tokens: a.max_new_tokens(),
    }
}

/// The user message as the model's chat template renders it (as is without a template).
fn render(model: &Pretrained, user: &str) -> Result<String> {
    Ok(match model.chat_template {
        Some(_) => model.chat_prompt(user)?,
        None => format!("{user}\n"),
    })
}

/// One reply per prompt: greedy in left-padded batches, or beam search prompt by prompt. The
/// text is trimmed and kept to one line.
fn replies(
    model: &Pretrained,
    a: &TaskArgs,
    prompts: &[String],
    json: bool,
) -> Result<Vec<String>> {
    let m = model.decoder();
    let bar = (!json).then(|| indicatif::ProgressBar::new(prompts.len() as u64));
    let eos = model.eos_ids.clone();
    let pad = eos.first().copied().unwrap_or(0);
    let text = |tokens: &[u32]| -> Result<String> {
        let kept: Vec<u32> = tokens
            .iter()
            .copied()
            .filter(|t| !eos.contains(t))
            .collect();
        let t = model.tokenizer.decode(&kept)?;
        Ok(t.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    let mut out = Vec::with_capacity(prompts.len());
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| model.tokenizer.encode(p))
        .collect::<std::result::Result<_, _>>()?;
    if a.strategy() == StrategyArg::Greedy {
        let cfg = SamplingConfig {
            eos_ids: eos.clone(),
            no_repeat_ngram_size: a.no_repeat_ngram_size(),
            ..SamplingConfig::default()
        };
        for chunk in ids.chunks(a.batch_size) {
            let gens = decode::generate_batch(
                m,
                chunk,
                &cfg,
                Strategy::Greedy,
                a.max_new_tokens(),
                pad,
                |_, _, _| {},
            )?;
            for g in gens {
                out.push(text(&g.tokens)?);
            }
            if let Some(b) = &bar {
                b.inc(chunk.len() as u64);
            }
        }
    } else {
        let cfg = beam_config(a, eos.clone());
        for p in &ids {
            let hyps = beam_search(m, p, &cfg)?;
            out.push(text(
                &hyps.first().map(|h| h.tokens.clone()).unwrap_or_default(),
            )?);
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(out)
}

fn jsonl_field(
    v: &Value,
    key: &str,
    path: &std::path::Path,
    line: usize,
) -> Result<Option<String>> {
    match v.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => bail!(
            "{}: line {line}: field \"{key}\" must be a string",
            path.display()
        ),
    }
}

pub fn summarize(a: &TaskArgs, json: bool) -> Result<()> {
    check(a, "summarize")?;
    let input = a
        .input
        .as_deref()
        .context("--input FILE.jsonl is required")?;
    let text = decodex::data::read_text(input)?;
    let (mut docs, mut refs) = (Vec::new(), Vec::new());
    for (i, l) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        if a.limit.is_some_and(|n| docs.len() >= n) {
            break;
        }
        let v: Value = serde_json::from_str(l)
            .with_context(|| format!("{}: line {}: not JSON", input.display(), i + 1))?;
        let doc = jsonl_field(&v, "document", input, i + 1)?.with_context(|| {
            format!(
                "{}: line {}: missing field \"document\"",
                input.display(),
                i + 1
            )
        })?;
        docs.push(doc);
        refs.push(jsonl_field(&v, "summary", input, i + 1)?);
    }
    if docs.is_empty() {
        bail!("{}: no documents", input.display());
    }
    let model = load(a, "summarize")?;
    let prompts = docs
        .iter()
        .map(|d| render(&model, &tasks::summarize_prompt(d)))
        .collect::<Result<Vec<_>>>()?;
    let t0 = Instant::now();
    let hyps = replies(&model, a, &prompts, json)?;
    let secs = t0.elapsed().as_secs_f64();
    if let Some(out) = &a.out {
        let mut s = hyps.join("\n");
        s.push('\n');
        decodex::error::write_atomic(out, s.as_bytes())?;
    }
    let mut report = json!({"documents": hyps.len(), "strategy": a.strategy().name(), "seconds": secs,
                            "documents_per_sec": hyps.len() as f64 / secs});
    if refs.iter().all(Option::is_some) {
        let r: Vec<String> = refs.into_iter().map(|r| r.expect("checked")).collect();
        let rep = rouge::corpus(&hyps, &[r], true)?;
        report["rouge1"] = json!(rep.rouge1);
        report["rouge2"] = json!(rep.rouge2);
        report["rougeL"] = json!(rep.rouge_l);
    }
    let mut stdout = std::io::stdout().lock();
    if json {
        writeln!(stdout, "{report}")?;
    } else {
        if a.out.is_none() {
            for h in &hyps {
                writeln!(stdout, "{h}")?;
            }
        }
        if report.get("rougeL").is_some() {
            writeln!(
                stdout,
                "ROUGE-1 {:.2}  ROUGE-2 {:.2}  ROUGE-L {:.2}  ({} summaries, {:.0} s)",
                report["rouge1"].as_f64().unwrap_or(0.0),
                report["rouge2"].as_f64().unwrap_or(0.0),
                report["rougeL"].as_f64().unwrap_or(0.0),
                hyps.len(),
                secs
            )?;
        }
    }
    Ok(())
}

pub fn answer(a: &TaskArgs, json: bool) -> Result<()> {
    check(a, "answer")?;
    let mut ids: Vec<String> = Vec::new();
    let mut prompts_raw: Vec<(String, String)> = Vec::new();
    let mut truths: Vec<Vec<String>> = Vec::new();
    match (&a.input, &a.question) {
        (Some(path), None) => {
            let ds = squad::read_dataset(path)?;
            'outer: for p in ds.data.iter().flat_map(|x| &x.paragraphs) {
                for qa in &p.qas {
                    if a.limit.is_some_and(|n| ids.len() >= n) {
                        break 'outer;
                    }
                    ids.push(qa.id.clone());
                    prompts_raw.push((p.context.clone(), qa.question.clone()));
                    truths.push(qa.answers.iter().map(|x| x.text.clone()).collect());
                }
            }
            if ids.is_empty() {
                bail!("{}: no questions", path.display());
            }
        }
        (None, Some(q)) => {
            let c = a.context.as_deref().context("--question needs --context")?;
            ids.push("question".into());
            prompts_raw.push((c.to_string(), q.clone()));
        }
        _ => bail!("give --input SQUAD.json, or --question with --context"),
    }
    let model = load(a, "answer")?;
    let prompts = prompts_raw
        .iter()
        .map(|(c, q)| render(&model, &tasks::answer_prompt(c, q)))
        .collect::<Result<Vec<_>>>()?;
    let t0 = Instant::now();
    let answers = replies(&model, a, &prompts, json)?;
    let secs = t0.elapsed().as_secs_f64();
    let mut stdout = std::io::stdout().lock();
    if a.question.is_some() {
        if json {
            writeln!(stdout, "{}", json!({"answer": answers[0], "seconds": secs}))?;
        } else {
            writeln!(stdout, "{}", answers[0])?;
        }
        return Ok(());
    }
    let preds: serde_json::Map<String, Value> = ids
        .iter()
        .zip(&answers)
        .map(|(i, x)| (i.clone(), json!(x)))
        .collect();
    if let Some(out) = &a.out {
        decodex::error::write_atomic(out, serde_json::to_string(&preds)?.as_bytes())?;
    }
    let (mut em, mut f1) = (0.0, 0.0);
    for (ans, t) in answers.iter().zip(&truths) {
        let refs: Vec<&str> = t.iter().map(String::as_str).collect();
        let (e, f) = squad::score(ans, &refs);
        em += e;
        f1 += f;
    }
    let n = answers.len() as f64;
    let report = json!({"questions": answers.len(), "exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n,
                        "strategy": a.strategy().name(), "seconds": secs});
    if json {
        writeln!(stdout, "{report}")?;
    } else {
        writeln!(
            stdout,
            "EM {:.2}  F1 {:.2}  ({} questions, {:.0} s)",
            100.0 * em / n,
            100.0 * f1 / n,
            answers.len(),
            secs
        )?;
    }
    Ok(())
}

pub fn merge(a: &MergeArgs, json: bool) -> Result<()> {
    use decodex::models::llama::lora::{base_shapes, Flat};
    check_out_is_not(&a.out, &a.model)?;
    let model = pretrained::load_with_adapter(&a.model, true, None, Some(&a.adapter))?;
    let Network::Llama(llama) = &model.network else {
        bail!("{}: merging needs a Llama-family base", a.model.display());
    };
    let tensors: std::collections::HashMap<_, _> = llama.hf_tensors()?.into_iter().collect();
    let mut flat = Flat::zeros(&base_shapes(&llama.cfg));
    for e in flat.entries.clone() {
        let v = tensors[&e.name].flatten_all()?.to_vec1::<f32>()?;
        flat.data[e.offset..e.offset + e.len].copy_from_slice(&v);
    }
    decodex::train::finetune::run::save_full(&a.out, &model, &flat)?;
    if json {
        println!(
            "{}",
            json!({"out": a.out, "base": a.model, "adapter": a.adapter})
        );
    } else {
        println!(
            "merged {} into {}: {}",
            a.adapter.display(),
            a.model.display(),
            a.out.display()
        );
    }
    Ok(())
}

/// `decodex translate`: one translation per input line, in order.
pub fn translate(a: &TranslateArgs, json: bool) -> Result<()> {
    let d = &a.decoding;
    d.check_profile("translate", args::TRANSLATE)?;
    let beam = given(d.num_beams, "num_beams");
    let n_best = given(d.num_return_sequences, "num_return_sequences");
    if beam == 0 {
        bail!("--num-beams must be at least 1 (1 is greedy search)");
    }
    if n_best == 0 || n_best > beam {
        bail!("--num-return-sequences ({n_best}) must be between 1 and --num-beams ({beam})");
    }
    if d.do_sample && beam > 1 {
        bail!("--do-sample decodes with --num-beams 1; choose one search");
    }
    let (model, tok) = decodex::models::seq2seq::load_seq2seq(&a.model, &candle_core::Device::Cpu)?;
    let text =
        std::fs::read_to_string(&a.input).map_err(|e| decodex::error::Error::io(&a.input, e))?;
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let opts = decodex::decode::translate::TranslateOptions {
        beam,
        length_penalty: given(d.length_penalty, "length_penalty"),
        n_best,
        sampling: d.do_sample.then(|| decodex::decode::SamplingConfig {
            temperature: given(d.temperature, "temperature"),
            top_k: given(d.top_k, "top_k"),
            top_p: given(d.top_p, "top_p"),
            seed: given(d.seed, "seed"),
            ..Default::default()
        }),
        batch_size: a.batch_size,
    };
    let found = decodex::decode::translate::translate_n(&model, &tok, &a.input, &lines, &opts)?;
    let out: Vec<String> = found
        .iter()
        .map(|h| h.first().map(|h| h.text.clone()).unwrap_or_default())
        .collect();
    if let Some(png) = &a.attention_png {
        let i = a.attention_line.saturating_sub(1);
        let (Some(line), Some(hyp)) = (lines.get(i), out.get(i)) else {
            bail!(
                "{}: --attention-line {} is past the last line",
                a.input.display(),
                a.attention_line
            );
        };
        let src = tok.encode(line.trim())?;
        let mut tgt = tok.encode(hyp)?;
        tgt.extend(tok.eos_id());
        if src.is_empty() {
            bail!(
                "{}: line {} is empty; there is no attention to draw",
                a.input.display(),
                a.attention_line
            );
        }
        let weights = model.attention_map(&src, &tgt)?;
        let label = |ids: &[u32]| -> Result<Vec<String>> {
            ids.iter()
                .map(|&t| {
                    Ok(if Some(t) == tok.eos_id() {
                        "</s>".to_string()
                    } else {
                        tok.decode(&[t])?.trim().to_string()
                    })
                })
                .collect()
        };
        decodex::plot::attention_heatmap(&label(&src)?, &label(&tgt)?, &weights, hyp, png)?;
    }
    let mut stdout = std::io::stdout().lock();
    for (i, hyps) in found.iter().enumerate() {
        let best = hyps.first().map(|h| h.text.as_str()).unwrap_or_default();
        if json {
            let mut v = json!({ "text": best });
            if let Some(score) = hyps.first().and_then(|h| h.score) {
                v["score"] = json!(score);
            }
            if n_best > 1 {
                v["nbest"] = json!(hyps);
            }
            writeln!(stdout, "{v}")?;
        } else if n_best > 1 {
            // n-best: one "line ||| text ||| score" per hypothesis (0-based line), Moses style.
            for h in hyps {
                let score = h.score.map_or(String::new(), |s| s.to_string());
                writeln!(stdout, "{i} ||| {} ||| {score}", h.text)?;
            }
        } else {
            writeln!(stdout, "{best}")?;
        }
    }
    Ok(())
}
