//! Fine-tuning data: JSONL records turned into token sequences whose loss covers the completion
//! only.
//!
//! Each line is one of
//! - `{"prompt": str, "completion": str}`: the text is prompt + completion, as is (no template);
//! - `{"messages": [{"role": str, "content": str}, ...]}` ending with an assistant message: the
//!   model's chat template renders the messages before it (with the generation prompt), and the
//!   last message's content is the completion;
//! - with `--task summarize`: `{"document", "summary"}` (DialogSum), with `--task qa`:
//!   `{"context", "question", "answers": {"text": [...]}}` (SQuAD); both become one user
//!   message (`tasks::summarize_prompt`, `tasks::answer_prompt`) and the reference as the
//!   assistant's reply, through the chat template.
//!
//! The completion is followed by the end-of-sequence token, so the model learns to stop.
//! A line that fits none of these is an error naming the file and line. An example longer than
//! `max_len` tokens is skipped (`Overlong::Skip`, the default) or cut to `max_len` tokens
//! (`Overlong::Truncate`, which drops the end of the completion; it is skipped when no
//! completion token would remain); either way it is counted in the report.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::models::pretrained::Pretrained;
use crate::tasks;

/// How records are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Task {
    /// {"prompt","completion"} or {"messages"}.
    Raw,
    /// DialogSum's {"document","summary"}.
    Summarize,
    /// SQuAD's {"context","question","answers"}.
    Qa,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Overlong {
    Skip,
    Truncate,
}

/// One record: the prompt (chat template applied where it applies) and the completion text.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Text { prompt: String, completion: String },
    Chat { messages: Vec<(String, String)> },
}

/// A tokenized example: tokens, and the index of the first completion token.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub tokens: Vec<u32>,
    pub first_target: usize,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LoadReport {
    pub lines: usize,
    pub examples: usize,
    pub truncated: usize,
    pub skipped_overlong: usize,
    pub completion_tokens: usize,
    pub tokens: usize,
}

impl std::fmt::Display for LoadReport {
    /// One human line: "40 examples from 40 lines, 750 tokens (400 in completions), 0 skipped
    /// as too long, 0 truncated".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} examples from {} lines, {} tokens ({} in completions), {} skipped as too long, {} truncated",
            self.examples,
            self.lines,
            self.tokens,
            self.completion_tokens,
            self.skipped_overlong,
            self.truncated
        )
    }
}

fn bad(path: &Path, line: usize, msg: impl std::fmt::Display) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        msg: format!("line {line}: {msg}"),
    }
}

fn string_field(v: &Value, key: &str, path: &Path, line: usize) -> Result<String> {
    match v.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(bad(
            path,
            line,
            format!("field \"{key}\" must be a string, found {}", kind(other)),
        )),
        None => Err(bad(path, line, format!("missing field \"{key}\""))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses one JSON line as a record of `task`.
pub fn parse_record(text: &str, task: Task, path: &Path, line: usize) -> Result<Record> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| bad(path, line, format!("not JSON: {e}")))?;
    if !v.is_object() {
        return Err(bad(
            path,
            line,
            format!("expected an object, found {}", kind(&v)),
        ));
    }
    let chat = |user: String, reply: String| Record::Chat {
        messages: vec![("user".into(), user), ("assistant".into(), reply)],
    };
    match task {
        Task::Summarize => Ok(chat(
            tasks::summarize_prompt(&string_field(&v, "document", path, line)?),
            string_field(&v, "summary", path, line)?.trim().to_string(),
        )),
        Task::Qa => {
            let context = string_field(&v, "context", path, line)?;
            let question = string_field(&v, "question", path, line)?;
            let answer = match v.get("answers").and_then(|a| a.get("text")) {
                Some(Value::Array(a)) => match a.first() {
                    Some(Value::String(s)) => s.clone(),
                    _ => return Err(bad(path, line, "\"answers.text\" must hold a string")),
                },
                _ => return Err(bad(path, line, "missing field \"answers.text\" (an array)")),
            };
            Ok(chat(
                tasks::answer_prompt(&context, &question),
                answer.trim().to_string(),
            ))
        }
        Task::Raw => {
            if let Some(m) = v.get("messages") {
                let Value::Array(items) = m else {
                    return Err(bad(
                        path,
                        line,
                        format!("field \"messages\" must be an array, found {}", kind(m)),
                    ));
                };
                let mut messages = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let role = item.get("role").and_then(Value::as_str);
                    let content = item.get("content").and_then(Value::as_str);
                    match (role, content) {
                        (Some(r), Some(c)) => messages.push((r.to_string(), c.to_string())),
                        _ => {
                            return Err(bad(
                                path,
                                line,
                                format!(
                                    "message {} needs string fields \"role\" and \"content\"",
                                    i + 1
                                ),
                            ))
                        }
                    }
                }
                match messages.last() {
                    Some((r, _)) if r == "assistant" => Ok(Record::Chat { messages }),
                    _ => Err(bad(
                        path,
                        line,
                        "the last message must be the assistant's (the completion)",
                    )),
                }
            } else if v.get("prompt").is_some() || v.get("completion").is_some() {
                Ok(Record::Text {
                    prompt: string_field(&v, "prompt", path, line)?,
                    completion: string_field(&v, "completion", path, line)?,
                })
            } else {
                Err(bad(
                    path,
                    line,
                    "expected fields \"prompt\" and \"completion\", or \"messages\"",
                ))
            }
        }
    }
}

/// Reads every record of a JSONL file (plain or gzip); blank lines are ignored. `limit` keeps
/// the first that many.
pub fn read_records(path: &Path, task: Task, limit: Option<usize>) -> Result<Vec<Record>> {
    let text = crate::data::read_text(path)?;
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        if limit.is_some_and(|n| out.len() >= n) {
            break;
        }
        out.push(parse_record(l, task, path, i + 1)?);
    }
    if out.is_empty() {
        return Err(Error::Data {
            path: path.to_path_buf(),
            msg: "no examples".into(),
        });
    }
    Ok(out)
}

/// Tokenizes records for `model`: (prompt tokens, completion tokens + EOS).
pub fn tokenize_record(model: &Pretrained, r: &Record) -> Result<(Vec<u32>, Vec<u32>)> {
    let (prompt, completion) = match r {
        Record::Text { prompt, completion } => (prompt.clone(), completion.clone()),
        Record::Chat { messages } => {
            let (last, before) = messages.split_last().expect("validated non-empty");
            let msgs: Vec<(&str, &str)> = before
                .iter()
                .map(|(r, c)| (r.as_str(), c.as_str()))
                .collect();
            (model.chat_prompt_for(&msgs)?, last.1.clone())
        }
    };
    let p = model.tokenizer.encode(&prompt)?;
    let mut c = model.tokenizer.encode(&completion)?;
    c.extend(model.eos_ids.first().copied());
    Ok((p, c))
}

/// Tokenizes `records`, applying the overlong policy at `max_len` tokens.
pub fn tokenize(
    model: &Pretrained,
    records: &[Record],
    max_len: usize,
    overlong: Overlong,
    source: &Path,
) -> Result<(Vec<Example>, LoadReport)> {
    let mut rep = LoadReport {
        lines: records.len(),
        ..Default::default()
    };
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let (p, c) = tokenize_record(model, r)?;
        let mut tokens = p.clone();
        tokens.extend(&c);
        if tokens.len() > max_len {
            if overlong == Overlong::Skip || p.len() + 1 >= max_len {
                rep.skipped_overlong += 1;
                continue;
            }
            tokens.truncate(max_len);
            rep.truncated += 1;
        }
        rep.completion_tokens += tokens.len() - p.len();
        rep.tokens += tokens.len();
        out.push(Example {
            tokens,
            first_target: p.len(),
        });
    }
    rep.examples = out.len();
    if out.is_empty() {
        return Err(Error::Data {
            path: PathBuf::from(source),
            msg: format!("every example is longer than {max_len} tokens"),
        });
    }
    Ok((out, rep))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str, task: Task) -> String {
        parse_record(text, task, Path::new("d.jsonl"), 7)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn records_and_their_errors() {
        let ok = parse_record(
            r#"{"prompt":"a","completion":"b"}"#,
            Task::Raw,
            Path::new("x"),
            1,
        )
        .unwrap();
        assert_eq!(
            ok,
            Record::Text {
                prompt: "a".into(),
                completion: "b".into()
            }
        );
        let m =
            r#"{"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]}"#;
        assert!(matches!(
            parse_record(m, Task::Raw, Path::new("x"), 1).unwrap(),
            Record::Chat { .. }
        ));
        let e = err(r#"{"prompt":"a"}"#, Task::Raw);
        assert!(
            e.contains("d.jsonl") && e.contains("line 7") && e.contains("\"completion\""),
            "{e}"
        );
        let e = err(r#"{"prompt":"a","completion":3}"#, Task::Raw);
        assert!(
            e.contains("line 7") && e.contains("must be a string, found a number"),
            "{e}"
        );
        let e = err(
            r#"{"messages":[{"role":"assistant","content":"x"},{"role":"user","content":"y"}]}"#,
            Task::Raw,
        );
        assert!(e.contains("last message"), "{e}");
        let e = err(r#"{"messages":"x"}"#, Task::Raw);
        assert!(e.contains("must be an array"), "{e}");
        let e = err("[1]", Task::Raw);
        assert!(e.contains("expected an object"), "{e}");
        let e = err("{not json", Task::Raw);
        assert!(e.contains("not JSON"), "{e}");
        let e = err(r#"{"document":"d"}"#, Task::Summarize);
        assert!(e.contains("\"summary\""), "{e}");
        let e = err(
            r#"{"context":"c","question":"q","answers":{"text":[]}}"#,
            Task::Qa,
        );
        assert!(e.contains("answers.text"), "{e}");
    }
}
