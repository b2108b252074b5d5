//! `decodex summarize`, `decodex answer`, `decodex translate` and `decodex merge`: the task
//! front ends over the decoding engine, with the prompts of `decodex::tasks` (the ones
//! `finetune --task` trains on), translation with a sequence-to-sequence model, and the LoRA
//! merge.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};

use decodex::decode::{BeamConfig, EarlyStopping};
use decodex::eval::{rouge, squad};
use decodex::models::pretrained::{self, Network, Pretrained};
use decodex::tasks::{self, TaskDecoding};

use super::args::{self, given, DecodingArgs, Force, ModelArgs, StrategyArg};
use super::commands::{check_out_is_not, emit, emit_lines};

#[derive(Args, Debug)]
#[command(mut_args(args::for_task))]
pub struct TaskArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// summarize: JSONL with "document" (and "summary" for ROUGE); answer: a SQuAD v1.1 JSON.
    #[arg(long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Write the outputs here: summaries one per line; answers as SQuAD predictions JSON.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub force: Force,
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
}

/// `decodex answer`: the task flags, and one question instead of a file.
#[derive(Args, Debug)]
pub struct AnswerArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// One question (with --context) instead of --input.
    #[arg(long, conflicts_with = "input")]
    pub question: Option<String>,
    /// The context --question is answered from.
    #[arg(long, requires = "question")]
    pub context: Option<String>,
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
    #[command(flatten)]
    pub force: Force,
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
    pub force: Force,
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
    if let Some(out) = &a.out {
        a.force.check(out, "--out")?;
    }
    if a.strategy() == StrategyArg::Sample {
        bail!("--strategy \"sample\" is not one of greedy, beam");
    }
    if a.max_new_tokens() == 0 || a.batch_size == 0 {
        bail!("--max-new-tokens and --batch-size must be at least 1");
    }
    if let Some(beam) = decoding(a, Vec::new()).beam {
        beam.validate()?;
    }
    Ok(())
}

/// The decoding of --strategy, beam search stopping at `eos_ids`.
fn decoding(a: &TaskArgs, eos_ids: Vec<u32>) -> TaskDecoding {
    let no_repeat_ngram_size = given(a.decoding.no_repeat_ngram_size, "no_repeat_ngram_size");
    let beam = (a.strategy() == StrategyArg::Beam).then(|| BeamConfig {
        num_beams: given(a.decoding.num_beams, "num_beams"),
        num_beam_groups: 1,
        diversity_penalty: 0.0,
        length_penalty: given(a.decoding.length_penalty, "length_penalty"),
        early_stopping: EarlyStopping::True,
        num_return_sequences: 1,
        no_repeat_ngram_size,
        min_new_tokens: 0,
        eos_ids,
        max_new_tokens: a.max_new_tokens(),
    });
    TaskDecoding {
        beam,
        batch_size: a.batch_size,
        max_new_tokens: a.max_new_tokens(),
        no_repeat_ngram_size,
    }
}

/// The model's reply to each user message, with a progress bar in human mode; and the seconds.
fn replies(
    a: &TaskArgs,
    command: &str,
    users: &[String],
    json: bool,
) -> Result<(Vec<String>, f64)> {
    let model = load(a, command)?;
    let prompts = users
        .iter()
        .map(|u| tasks::render(&model, u))
        .collect::<decodex::Result<Vec<_>>>()?;
    let bar = (!json).then(|| indicatif::ProgressBar::new(prompts.len() as u64));
    let t0 = Instant::now();
    let d = decoding(a, model.eos_ids.clone());
    let out = tasks::replies(&model, &d, &prompts, |n| {
        bar.iter().for_each(|b| b.inc(n as u64))
    })?;
    bar.iter().for_each(|b| b.finish_and_clear());
    Ok((out, t0.elapsed().as_secs_f64()))
}

pub fn summarize(a: &TaskArgs, json: bool) -> Result<()> {
    check(a, "summarize")?;
    let input = a
        .input
        .as_deref()
        .context("--input FILE.jsonl is required")?;
    let (docs, refs) = tasks::read_documents(input, a.limit)?;
    let users: Vec<String> = docs.iter().map(|d| tasks::summarize_prompt(d)).collect();
    let (hyps, secs) = replies(a, "summarize", &users, json)?;
    if let Some(out) = &a.out {
        let mut s = hyps.join("\n");
        s.push('\n');
        decodex::error::write_atomic(out, s.as_bytes())?;
    }
    let mut report = json!({"documents": hyps.len(), "strategy": a.strategy().name(), "seconds": secs,
                            "documents_per_sec": hyps.len() as f64 / secs});
    let mut human: Vec<String> = if a.out.is_none() {
        hyps.clone()
    } else {
        Vec::new()
    };
    if let Some(r) = refs.into_iter().collect::<Option<Vec<String>>>() {
        let rep = rouge::corpus(&hyps, &[r], true)?;
        report["rouge1"] = json!(rep.rouge1);
        report["rouge2"] = json!(rep.rouge2);
        report["rougeL"] = json!(rep.rouge_l);
        human.push(format!(
            "ROUGE-1 {:.2}  ROUGE-2 {:.2}  ROUGE-L {:.2}  ({} summaries, {:.0} s)",
            rep.rouge1,
            rep.rouge2,
            rep.rouge_l,
            hyps.len(),
            secs
        ));
    }
    emit_lines(json, report, &human)
}

pub fn answer(aa: &AnswerArgs, json: bool) -> Result<()> {
    let a = &aa.task;
    check(a, "answer")?;
    let questions = match (&a.input, &aa.question) {
        (Some(path), None) => tasks::read_questions(path, a.limit)?,
        (None, Some(q)) => {
            let c = aa
                .context
                .as_deref()
                .context("--question needs --context")?;
            let (id, context, question) = ("question".into(), c.to_string(), q.clone());
            vec![tasks::Question {
                id,
                context,
                question,
                answers: Vec::new(),
            }]
        }
        _ => bail!("give --input SQUAD.json, or --question with --context"),
    };
    let users: Vec<String> = questions
        .iter()
        .map(|q| tasks::answer_prompt(&q.context, &q.question))
        .collect();
    let (answers, secs) = replies(a, "answer", &users, json)?;
    if aa.question.is_some() {
        return emit(
            json,
            json!({"answer": answers[0], "seconds": secs}),
            &answers[0],
        );
    }
    let preds: serde_json::Map<String, Value> = questions
        .iter()
        .zip(&answers)
        .map(|(q, x)| (q.id.clone(), json!(x)))
        .collect();
    if let Some(out) = &a.out {
        decodex::error::write_atomic(out, serde_json::to_string(&preds)?.as_bytes())?;
    }
    let (mut em, mut f1) = (0.0, 0.0);
    for (ans, q) in answers.iter().zip(&questions) {
        let refs: Vec<&str> = q.answers.iter().map(String::as_str).collect();
        let (e, f) = squad::score(ans, &refs);
        em += e;
        f1 += f;
    }
    let n = answers.len() as f64;
    let (em, f1) = (100.0 * em / n, 100.0 * f1 / n);
    let report = json!({"questions": answers.len(), "exact_match": em, "f1": f1,
                        "strategy": a.strategy().name(), "seconds": secs});
    let human = format!(
        "EM {em:.2}  F1 {f1:.2}  ({} questions, {secs:.0} s)",
        answers.len()
    );
    emit(json, report, &human)
}

pub fn merge(a: &MergeArgs, json: bool) -> Result<()> {
    use decodex::models::llama::lora::base_shapes;
    use decodex::nn::params::Flat;
    check_out_is_not(&a.out, &a.model)?;
    a.force.check(&a.out, "--out")?;
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
    let (base, adapter, out) = (a.model.display(), a.adapter.display(), a.out.display());
    emit(
        json,
        json!({"out": a.out, "base": a.model, "adapter": a.adapter}),
        &format!("merged {adapter} into {base}: {out}"),
    )
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
    if let Some(png) = &a.attention_png {
        a.force.check(png, "--attention-png")?;
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
        let n = a.attention_line;
        decodex::decode::translate::draw_attention(&model, &tok, &a.input, n, line, hyp, png)?;
    }
    for (i, hyps) in found.iter().enumerate() {
        let best = hyps.first().map(|h| h.text.as_str()).unwrap_or_default();
        let mut v = json!({ "text": best });
        if let Some(score) = hyps.first().and_then(|h| h.score) {
            v["score"] = json!(score);
        }
        let mut human = vec![best.to_string()];
        if n_best > 1 {
            v["nbest"] = json!(hyps);
            // n-best: one "line ||| text ||| score" per hypothesis (0-based line), Moses style.
            let score = |s: Option<f32>| s.map_or(String::new(), |s| s.to_string());
            human = hyps
                .iter()
                .map(|h| format!("{i} ||| {} ||| {}", h.text, score(h.score)))
                .collect();
        }
        emit_lines(json, v, &human)?;
    }
    Ok(())
}
