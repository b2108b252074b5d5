//! The task front ends' prompts: one wording per task, shared by zero-shot generation
//! (`decodex summarize`, `decodex answer`) and by fine-tuning data (`decodex finetune --task`),
//! so a fine-tuned model is compared with the zero-shot one on exactly the same prompt, and the
//! decoding of those prompts.

use std::path::Path;

use serde_json::Value;

use crate::decode::{
    beam_search, generate_batch, reply_text, BeamConfig, SamplingConfig, Strategy,
};
use crate::error::{Error, Result};
use crate::models::pretrained::Pretrained;

/// The user message asking for a summary of `document` (a DialogSum dialogue, say).
pub fn summarize_prompt(document: &str) -> String {
    format!(
        "Summarize the following dialogue in one or two sentences.\n\n{}",
        document.trim()
    )
}

/// The user message asking for an extractive answer to `question` from `context`.
pub fn answer_prompt(context: &str, question: &str) -> String {
    format!(
        "Answer the question with a short phrase copied from the context.\n\nContext: {}\n\nQuestion: {}",
        context.trim(),
        question.trim()
    )
}

/// The user message as the model's chat template renders it (as is, plus a newline, without a
/// template).
pub fn render(model: &Pretrained, user: &str) -> Result<String> {
    Ok(match model.chat_template {
        Some(_) => model.chat_prompt(user)?,
        None => format!("{user}\n"),
    })
}

/// How the task front ends decode: greedy in left-padded batches of `batch_size`, or beam
/// search with `beam` prompt by prompt.
#[derive(Debug, Clone)]
pub struct TaskDecoding {
    pub beam: Option<BeamConfig>,
    pub batch_size: usize,
    pub max_new_tokens: usize,
    pub no_repeat_ngram_size: usize,
}

/// One reply per prompt, trimmed and kept to one line; `progress(n)` after each n prompts.
pub fn replies(
    model: &Pretrained,
    d: &TaskDecoding,
    prompts: &[String],
    mut progress: impl FnMut(usize),
) -> Result<Vec<String>> {
    let m = model.decoder();
    let eos = &model.eos_ids;
    let text = |tokens: &[u32]| -> Result<String> {
        let t = reply_text(&model.tokenizer, eos, tokens, &[])?;
        Ok(t.split_whitespace().collect::<Vec<_>>().join(" "))
    };
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| model.tokenizer.encode(p))
        .collect::<Result<_>>()?;
    let mut out = Vec::with_capacity(prompts.len());
    match &d.beam {
        None => {
            let cfg = SamplingConfig {
                eos_ids: eos.clone(),
                no_repeat_ngram_size: d.no_repeat_ngram_size,
                ..SamplingConfig::default()
            };
            let pad = eos.first().copied().unwrap_or(0);
            for chunk in ids.chunks(d.batch_size) {
                let greedy = Strategy::Greedy;
                let gens =
                    generate_batch(m, chunk, &cfg, greedy, d.max_new_tokens, pad, |_, _, _| {})?;
                for g in gens {
                    out.push(text(&g.tokens)?);
                }
                progress(chunk.len());
            }
        }
        Some(cfg) => {
            for p in &ids {
                let hyps = beam_search(m, p, cfg)?;
                out.push(text(hyps.first().map_or(&[][..], |h| &h.tokens))?);
                progress(1);
            }
        }
    }
    Ok(out)
}

/// The documents of a summarization JSONL file (each line's "document"), the first `limit`,
/// with each line's "summary" where it has one.
pub fn read_documents(
    input: &Path,
    limit: Option<usize>,
) -> Result<(Vec<String>, Vec<Option<String>>)> {
    let bad = |msg: String| Error::Data {
        path: input.to_path_buf(),
        msg,
    };
    let field = |v: &Value, key: &str, line: usize| match v.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!(
            "line {line}: field \"{key}\" must be a string"
        ))),
    };
    let text = crate::data::read_text(input)?;
    let (mut docs, mut refs) = (Vec::new(), Vec::new());
    for (i, l) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        if limit.is_some_and(|n| docs.len() >= n) {
            break;
        }
        let v: Value =
            serde_json::from_str(l).map_err(|e| bad(format!("line {}: not JSON: {e}", i + 1)))?;
        let doc = field(&v, "document", i + 1)?;
        docs.push(doc.ok_or_else(|| bad(format!("line {}: missing field \"document\"", i + 1)))?);
        refs.push(field(&v, "summary", i + 1)?);
    }
    if docs.is_empty() {
        return Err(bad("no documents".into()));
    }
    Ok((docs, refs))
}

/// A question to answer from its context, with its reference answers.
#[derive(Debug, Clone)]
pub struct Question {
    pub id: String,
    pub context: String,
    pub question: String,
    pub answers: Vec<String>,
}

/// The first `limit` questions of a SQuAD file.
pub fn read_questions(path: &Path, limit: Option<usize>) -> Result<Vec<Question>> {
    let ds = crate::eval::squad::read_dataset(path)?;
    let qas = ds
        .data
        .iter()
        .flat_map(|x| &x.paragraphs)
        .flat_map(|p| p.qas.iter().map(move |qa| (p, qa)));
    let out: Vec<_> = qas
        .take(limit.unwrap_or(usize::MAX))
        .map(|(p, qa)| Question {
            id: qa.id.clone(),
            context: p.context.clone(),
            question: qa.question.clone(),
            answers: qa.answers.iter().map(|x| x.text.clone()).collect(),
        })
        .collect();
    if out.is_empty() {
        return Err(Error::Data {
            path: path.to_path_buf(),
            msg: "no questions".into(),
        });
    }
    Ok(out)
}
