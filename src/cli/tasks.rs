//! `decodex summarize`, `decodex answer` and `decodex merge`: the task front ends over the
//! decoding engine, with the prompts of `decodex::tasks` (the ones `finetune --task` trains on),
//! and the LoRA merge.

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use decodex::decode::{
    self, beam_search, BeamConfig, Decoder, EarlyStopping, SamplingConfig, Strategy,
};
use decodex::eval::{rouge, squad};
use decodex::models::pretrained::{self, Network, Pretrained};
use decodex::tasks;

use super::commands::check_out_is_not;
use super::{MergeArgs, TaskArgs};

/// Checks the flags, then loads the model.
fn load(a: &TaskArgs) -> Result<Pretrained> {
    if !["greedy", "beam"].contains(&a.strategy.as_str()) {
        bail!("--strategy {:?} is not one of greedy, beam", a.strategy);
    }
    if a.max_new_tokens == 0 || a.batch_size == 0 {
        bail!("--max-new-tokens and --batch-size must be at least 1");
    }
    if a.strategy == "beam" {
        beam_config(a, Vec::new()).validate()?;
    }
    Ok(pretrained::load_with_adapter(
        &a.model,
        a.dequantize,
        None,
        a.adapter.as_deref(),
    )?)
}

/// The beam search of `--strategy beam`, stopping at `eos_ids`.
fn beam_config(a: &TaskArgs, eos_ids: Vec<u32>) -> BeamConfig {
    BeamConfig {
        num_beams: a.num_beams,
        num_beam_groups: 1,
        diversity_penalty: 0.0,
        length_penalty: a.length_penalty,
        early_stopping: EarlyStopping::True,
        num_return_sequences: 1,
        no_repeat_ngram_size: a.no_repeat_ngram_size,
        min_new_tokens: 0,
        eos_ids,
        max_new_tokens: a.max_new_tokens,
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
fn replies<D: Decoder>(
    m: &D,
    model: &Pretrained,
    a: &TaskArgs,
    prompts: &[String],
) -> Result<Vec<String>> {
    let bar = (!a.json).then(|| indicatif::ProgressBar::new(prompts.len() as u64));
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
    if a.strategy == "greedy" {
        let cfg = SamplingConfig {
            eos_ids: eos.clone(),
            no_repeat_ngram_size: a.no_repeat_ngram_size,
            ..SamplingConfig::default()
        };
        for chunk in ids.chunks(a.batch_size) {
            let gens = decode::generate_batch(
                m,
                chunk,
                &cfg,
                Strategy::Greedy,
                a.max_new_tokens,
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

fn run_replies(model: &Pretrained, a: &TaskArgs, prompts: &[String]) -> Result<Vec<String>> {
    match &model.network {
        Network::Llama(m) => replies(m, model, a, prompts),
        Network::Gpt(m) => replies(m, model, a, prompts),
    }
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

pub fn summarize(a: &TaskArgs) -> Result<()> {
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
    let model = load(a)?;
    let prompts = docs
        .iter()
        .map(|d| render(&model, &tasks::summarize_prompt(d)))
        .collect::<Result<Vec<_>>>()?;
    let t0 = Instant::now();
    let hyps = run_replies(&model, a, &prompts)?;
    let secs = t0.elapsed().as_secs_f64();
    if let Some(out) = &a.out {
        let mut s = hyps.join("\n");
        s.push('\n');
        decodex::error::write_atomic(out, s.as_bytes())?;
    }
    let mut report = json!({"documents": hyps.len(), "strategy": a.strategy, "seconds": secs,
                            "documents_per_sec": hyps.len() as f64 / secs});
    if refs.iter().all(Option::is_some) {
        let r: Vec<String> = refs.into_iter().map(|r| r.expect("checked")).collect();
        let rep = rouge::corpus(&hyps, &[r], true)?;
        report["rouge1"] = json!(rep.rouge1);
        report["rouge2"] = json!(rep.rouge2);
        report["rougeL"] = json!(rep.rouge_l);
    }
    let mut stdout = std::io::stdout().lock();
    if a.json {
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

pub fn answer(a: &TaskArgs) -> Result<()> {
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
    let model = load(a)?;
    let prompts = prompts_raw
        .iter()
        .map(|(c, q)| render(&model, &tasks::answer_prompt(c, q)))
        .collect::<Result<Vec<_>>>()?;
    let t0 = Instant::now();
    let answers = run_replies(&model, a, &prompts)?;
    let secs = t0.elapsed().as_secs_f64();
    let mut stdout = std::io::stdout().lock();
    if a.question.is_some() {
        if a.json {
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
                        "strategy": a.strategy, "seconds": secs});
    if a.json {
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

pub fn merge(a: &MergeArgs) -> Result<()> {
    use decodex::models::llama::lora::{base_shapes, Flat};
    check_out_is_not(&a.out, &a.base)?;
    let model = pretrained::load_with_adapter(&a.base, true, None, Some(&a.adapter))?;
    let Network::Llama(llama) = &model.network else {
        bail!("{}: merging needs a Llama-family base", a.base.display());
    };
    let tensors: std::collections::HashMap<_, _> = llama.hf_tensors()?.into_iter().collect();
    let mut flat = Flat::zeros(&base_shapes(&llama.cfg));
    for e in flat.entries.clone() {
        let v = tensors[&e.name].flatten_all()?.to_vec1::<f32>()?;
        flat.data[e.offset..e.offset + e.len].copy_from_slice(&v);
    }
    decodex::train::finetune::run::save_full(&a.out, &model, &flat)?;
    if a.json {
        println!(
            "{}",
            json!({"out": a.out, "base": a.base, "adapter": a.adapter})
        );
    } else {
        println!(
            "merged {} into {}: {}",
            a.adapter.display(),
            a.base.display(),
            a.out.display()
        );
    }
    Ok(())
}
