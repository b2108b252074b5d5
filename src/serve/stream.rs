//! Chat replies as server-sent events.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use super::api::*;
use super::engine::Event;
use super::http::{id, now};
use super::Shared;

/// Chat as server-sent events: a first chunk with the role per choice, a chunk per token with
/// text (or log-probabilities), a last chunk per choice with its finish reason, the usage when
/// asked, then `[DONE]`.
pub(super) fn chat_stream(
    s: Arc<Shared>,
    rx: UnboundedReceiver<(usize, Event)>,
    n: usize,
    model: String,
    prompt_tokens: usize,
    include_usage: bool,
) -> Response {
    let (id, created) = (id("chatcmpl"), now());
    let chunk = move |choices: Vec<ChunkChoice>, usage: Option<Usage>| {
        let c = ChatChunk {
            id: id.clone(),
            object: "chat.completion.chunk",
            created,
            model: model.clone(),
            choices,
            usage,
        };
        Sse::default().data(serde_json::to_string(&c).unwrap_or_default())
    };
    let first: Vec<Sse> = (0..n)
        .map(|index| {
            let delta = Delta {
                role: Some("assistant"),
                content: Some(String::new()),
            };
            let c = ChunkChoice {
                index,
                delta,
                logprobs: None,
                finish_reason: None,
            };
            chunk(vec![c], None)
        })
        .collect();
    let state = (rx, n, 0usize, false);
    let body = stream::unfold(state, move |(mut rx, left, generated, ended)| {
        let (s, chunk) = (s.clone(), chunk.clone());
        async move {
            if ended {
                return None;
            }
            let Some((index, e)) = rx.recv().await else {
                let err =
                    json!({"error": {"message": "the engine stopped", "type": "server_error"}});
                let out = vec![Sse::default().data(err.to_string())];
                return Some((out, (rx, left, generated, true)));
            };
            let one = |delta: Delta, logprobs, finish_reason| {
                chunk(
                    vec![ChunkChoice {
                        index,
                        delta,
                        logprobs,
                        finish_reason,
                    }],
                    None,
                )
            };
            match e {
                Event::Token { id, delta, logprob } => {
                    let lp = logprob.map(|(l, top)| s.chat_logprobs(&[(id, l, top)]));
                    let out = if delta.is_empty() && lp.is_none() {
                        vec![]
                    } else {
                        let d = Delta {
                            role: None,
                            content: Some(delta),
                        };
                        vec![one(d, lp, None)]
                    };
                    Some((out, (rx, left, generated, false)))
                }
                Event::Done {
                    tail,
                    finish,
                    completion_tokens,
                    ..
                } => {
                    let mut out = Vec::new();
                    if !tail.is_empty() {
                        let d = Delta {
                            role: None,
                            content: Some(tail),
                        };
                        out.push(one(d, None, None));
                    }
                    out.push(one(Delta::default(), None, Some(finish.as_str())));
                    let (left, generated) = (left - 1, generated + completion_tokens);
                    if left == 0 {
                        if include_usage {
                            let u = Usage {
                                prompt_tokens,
                                completion_tokens: generated,
                                total_tokens: prompt_tokens + generated,
                            };
                            out.push(chunk(vec![], Some(u)));
                        }
                        out.push(Sse::default().data("[DONE]"));
                    }
                    Some((out, (rx, left, generated, left == 0)))
                }
                Event::Failed(msg) => {
                    let err = json!({"error": {"message": msg, "type": "server_error"}});
                    let out = vec![Sse::default().data(err.to_string())];
                    Some((out, (rx, left, generated, true)))
                }
            }
        }
    });
    sse(stream::iter(first).chain(body.flat_map(stream::iter)))
}

fn sse(events: impl Stream<Item = Sse> + Send + 'static) -> Response {
    let events = events.map(Ok::<_, Infallible>);
    axum::response::sse::Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
