//! Text generation with a loaded model, as `decodex generate` and `decodex chat` run it: prompts
//! rendered (chat template) and encoded, decoded by greedy search or sampling (one prompt with
//! streamed text, or left-padded batches) or by beam search, and each sequence's text.

use std::io::Write;
use std::time::Instant;

use serde::Serialize;

use super::{beam_search, generate_batch, generate_ids, generate_ids_until, reply_text};
use super::{BeamConfig, SamplingConfig, StopReason, Strategy, TextStream};
use crate::error::{Error, Result};
use crate::models::pretrained::Pretrained;

/// How `generate` decodes: `strategy` `None` is beam search with `beam`, else greedy search
/// or sampling with `sampling` (`beam.num_return_sequences` seeds per prompt).
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub strategy: Option<Strategy>,
    pub sampling: SamplingConfig,
    pub beam: BeamConfig,
    pub max_new_tokens: usize,
    /// The text is cut before the first of these, and decoding stops there.
    pub stop: Vec<String>,
    /// Format each prompt as a user message with the model's chat template.
    pub chat: bool,
    /// Greedy search and sampling of more than one prompt at once (left-padded).
    pub batch_size: usize,
    pub logprobs: bool,
    /// Greedy search and sampling of one prompt at a time: write the text as it comes, after
    /// the prompt when `echo`.
    pub stream: bool,
    pub echo: bool,
}

/// One generated sequence: the fields every strategy reports, then each strategy's own.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Generated {
    /// The prompt's position in the list.
    pub index: usize,
    pub prompt_tokens: usize,
    pub text: String,
    pub tokens: Vec<u32>,
    pub new_tokens: usize,
    /// "eos", "max_new_tokens", "context", "stop" (batches) or "stop:TEXT".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<f32>>,
    /// Beam search: the hypothesis' score, whether it ended on EOS, the search's seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// Greedy search and sampling of one prompt, timed in two phases as llama.cpp reports
    /// them: the prompt (the forward pass over its tokens, up to the first new token) and the
    /// generation (each later token, one step each: `new_tokens - 1` of them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation_tokens_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_seconds: Option<f64>,
}

impl Generated {
    fn new(prompt_tokens: usize, text: String, tokens: Vec<u32>) -> Self {
        let new_tokens = tokens.len();
        Generated {
            prompt_tokens,
            text,
            tokens,
            new_tokens,
            ..Default::default()
        }
    }
}

/// Refuses `tokens` input tokens that, with `new` tokens generated after them, do not fit in
/// the model's `context` positions. `what` names the input after its count: "prompt tokens",
/// "tokens of --text".
pub fn check_context(what: &str, tokens: usize, new: usize, context: usize) -> Result<()> {
    if tokens + new > context {
        let plus = if new > 0 {
            format!(" + {new} new")
        } else {
            String::new()
        };
        return Err(Error::Invalid(format!(
            "{tokens} {what}{plus} exceed the model's context of {context}"
        )));
    }
    Ok(())
}

/// Decodes every prompt; `on_result(sequence, prompt as shown, out)` is called for each
/// sequence in order (the prompt as shown: chat-rendered for one prompt at a time, as given in
/// batches).
pub fn generate<W: Write, E: From<Error>>(
    model: &Pretrained,
    o: &GenerateOptions,
    prompts: &[String],
    out: &mut W,
    mut on_result: impl FnMut(Generated, &str, &mut W) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let render = |p: &String| {
        if o.chat {
            model.chat_prompt(p)
        } else {
            Ok(p.clone())
        }
    };
    if let (Some(strategy), true) = (o.strategy, o.batch_size > 1) {
        for (c, chunk) in prompts.chunks(o.batch_size).enumerate() {
            let ids = chunk
                .iter()
                .map(|p| model.tokenizer.encode(&render(p)?))
                .collect::<Result<Vec<Vec<u32>>>>()?;
            for (k, g) in batch(model, o, strategy, &ids)?.into_iter().enumerate() {
                on_result(
                    Generated {
                        index: c * o.batch_size + k,
                        ..g
                    },
                    &chunk[k],
                    out,
                )?;
            }
        }
        return Ok(());
    }
    for (index, prompt) in prompts.iter().enumerate() {
        let text = render(prompt)?;
        let ids = model.tokenizer.encode(&text)?;
        if !model.crop_context() {
            // Room for one new token at least.
            let what = format!("tokens of prompt {}", index + 1);
            check_context(&what, ids.len(), 1, model.context_len())?;
        }
        let results = match o.strategy {
            None => beam(model, o, &ids)?,
            Some(s) => sequences(model, o, s, &ids, o.echo.then_some(prompt.as_str()), out)?,
        };
        for g in results {
            on_result(Generated { index, ..g }, &text, out)?;
        }
    }
    Ok(())
}

/// Beam search on one prompt: its best hypotheses.
fn beam(model: &Pretrained, o: &GenerateOptions, ids: &[u32]) -> Result<Vec<Generated>> {
    let t0 = Instant::now();
    let hyps = beam_search(model.decoder(), ids, &o.beam)?;
    let secs = t0.elapsed().as_secs_f64();
    hyps.into_iter()
        .map(|h| {
            let text = reply_text(&model.tokenizer, &model.eos_ids, &h.tokens, &o.stop)?;
            let mut g = Generated::new(ids.len(), text, h.tokens);
            (g.score, g.finished, g.seconds) = (Some(h.score), Some(h.finished), Some(secs));
            Ok(g)
        })
        .collect()
}

/// Greedy search or sampling (`num_return_sequences` seeds) on one prompt; with `stream`, the
/// text is written as it comes, after `echo`.
fn sequences(
    model: &Pretrained,
    o: &GenerateOptions,
    strategy: Strategy,
    ids: &[u32],
    echo: Option<&str>,
    out: &mut impl Write,
) -> Result<Vec<Generated>> {
    let (tok, eos) = (&model.tokenizer, &model.eos_ids[..]);
    let io = |e: std::io::Error| Error::io("<stdout>", e);
    let mut results = Vec::new();
    for r in 0..o.beam.num_return_sequences {
        let cfg = SamplingConfig {
            seed: o.sampling.seed.wrapping_add(r as u64),
            ..o.sampling.clone()
        };
        let mut shown = TextStream::new(tok, eos, &o.stop, o.stream);
        let t = Instant::now();
        let mut prompt_secs = None;
        // The prompt is echoed with the first new token: a run that fails on the prompt leaves
        // nothing on stdout.
        let mut echo = echo.filter(|_| o.stream);
        let g = generate_ids_until(
            model.decoder(),
            ids,
            &cfg,
            strategy,
            o.max_new_tokens,
            |id, _| {
                prompt_secs.get_or_insert_with(|| t.elapsed().as_secs_f64());
                let echoed = echo.take().is_none_or(|e| write!(out, "{e}").is_ok());
                echoed && shown.push(id, out)
            },
        )?;
        let secs = t.elapsed().as_secs_f64();
        if let Some(e) = echo {
            write!(out, "{e}").map_err(io)?;
        }
        let text = reply_text(tok, eos, &g.tokens, &o.stop)?;
        let stopped_by = match (&g.stopped_by, &shown.hit) {
            (StopReason::Stop, Some(s)) => format!("stop:{s}"),
            (StopReason::Eos, _) => "eos".into(),
            (StopReason::Context, _) => "context".into(),
            _ => "max_new_tokens".into(),
        };
        shown.finish(&text, out).map_err(io)?;
        if o.stream {
            writeln!(out).map_err(io)?;
        }
        let mut v = Generated::new(ids.len(), text, g.tokens);
        v.stopped_by = Some(stopped_by);
        if let Some(p) = prompt_secs {
            // The tokens fed at the first step: a cropping model reads only its last window.
            let fed = ids.len().min(model.context_len());
            v.prompt_seconds = Some(p);
            v.prompt_tokens_per_sec = Some(fed as f64 / p);
            let steps = v.new_tokens - 1;
            v.generation_seconds = Some(secs - p);
            v.generation_tokens_per_sec = (steps > 0).then(|| steps as f64 / (secs - p));
        }
        v.logprobs = o.logprobs.then_some(g.logprobs);
        results.push(v);
    }
    Ok(results)
}

/// Greedy search or sampling of a batch of prompts, left-padded with the first EOS id.
fn batch(
    model: &Pretrained,
    o: &GenerateOptions,
    strategy: Strategy,
    ids: &[Vec<u32>],
) -> Result<Vec<Generated>> {
    let pad = model.eos_ids.first().copied().unwrap_or(0);
    let t = Instant::now();
    let m = model.decoder();
    let results = generate_batch(
        m,
        ids,
        &o.sampling,
        strategy,
        o.max_new_tokens,
        pad,
        |_, _, _| {},
    )?;
    let secs = t.elapsed().as_secs_f64();
    let stopped = |s: StopReason| {
        serde_json::to_value(s)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
    };
    results
        .into_iter()
        .zip(ids)
        .map(|(g, p)| {
            let text = reply_text(&model.tokenizer, &model.eos_ids, &g.tokens, &o.stop)?;
            let mut v = Generated::new(p.len(), text, g.tokens);
            (v.stopped_by, v.batch_seconds) = (stopped(g.stopped_by), Some(secs));
            v.logprobs = o.logprobs.then_some(g.logprobs);
            Ok(v)
        })
        .collect()
}

/// One reply of a chat: `history` of (role, content) messages rendered with the model's chat
/// template, decoded greedily at temperature 0 and sampled otherwise (seed + the number of
/// messages), streamed to `out` when `stream`. Returns the reply's text and tokens.
pub fn chat_reply(
    model: &Pretrained,
    history: &[(String, String)],
    sampling: &SamplingConfig,
    max_new_tokens: usize,
    stream: bool,
    out: &mut impl Write,
) -> Result<(String, Vec<u32>)> {
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
    let (tok, eos) = (&model.tokenizer, &model.eos_ids[..]);
    let mut shown = TextStream::new(tok, eos, &[], stream);
    let m = model.decoder();
    let reply = generate_ids(m, &ids, &turn, strategy, max_new_tokens, |t, _| {
        shown.push(t, out);
    })?
    .tokens;
    let text = reply_text(tok, eos, &reply, &[])?;
    shown
        .finish(&text, out)
        .map_err(|e| Error::io("<stdout>", e))?;
    Ok((text, reply))
}
