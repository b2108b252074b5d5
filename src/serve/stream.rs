//! Replies as server-sent events: chat chunks (`chat.completion.chunk`) and completion chunks
//! (`text_completion`), from one event loop: a chunk per token that shows text (or carries
//! log-probabilities), a last chunk per choice with its finish reason, the usage when asked,
//! then `data: [DONE]`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use super::api::*;
use super::engine::Event;
use super::http::{id, now, Scored};
use super::Shared;

/// How a route words its chunks.
pub(super) trait Chunks: Send + Sync + 'static {
    /// Choice `index`'s new text (may be empty) and, when asked, its token's log-probabilities.
    fn text(&self, s: &Shared, index: usize, text: String, scored: Option<Scored>) -> Sse;
    fn finish(&self, index: usize, reason: &'static str) -> Sse;
    fn usage(&self, usage: Usage) -> Sse;
}

/// What every chunk of one reply repeats: its id, creation time and model.
struct Head {
    id: String,
    created: u64,
    model: String,
}

impl Head {
    fn new(prefix: &str, model: String) -> Self {
        Head {
            id: id(prefix),
            created: now(),
            model,
        }
    }
}

/// Chat chunks; the stream opens with the assistant's role for each choice.
pub(super) struct ChatChunks(Head);

impl ChatChunks {
    pub fn new(model: String) -> Self {
        ChatChunks(Head::new("chatcmpl", model))
    }

    fn chunk(&self, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> Sse {
        let c = ChatChunk {
            id: self.0.id.clone(),
            object: "chat.completion.chunk",
            created: self.0.created,
            model: self.0.model.clone(),
            choices,
            usage,
        };
        Sse::default().data(serde_json::to_string(&c).unwrap_or_default())
    }

    fn one(
        &self,
        index: usize,
        delta: Delta,
        logprobs: Option<ChatLogprobs>,
        finish: Option<&'static str>,
    ) -> Sse {
        let choice = ChunkChoice {
            index,
            delta,
            logprobs,
            finish_reason: finish,
        };
        self.chunk(vec![choice], None)
    }

    /// The first chunk of each of `n` choices: the role, and empty content.
    pub fn opening(&self, n: usize) -> Vec<Sse> {
        (0..n)
            .map(|index| {
                let delta = Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                };
                self.one(index, delta, None, None)
            })
            .collect()
    }
}

impl Chunks for ChatChunks {
    fn text(&self, s: &Shared, index: usize, text: String, scored: Option<Scored>) -> Sse {
        let logprobs = scored.map(|t| s.chat_logprobs(&[t]));
        let delta = Delta {
            role: None,
            content: Some(text),
        };
        self.one(index, delta, logprobs, None)
    }

    fn finish(&self, index: usize, reason: &'static str) -> Sse {
        self.one(index, Delta::default(), None, Some(reason))
    }

    fn usage(&self, usage: Usage) -> Sse {
        self.chunk(vec![], Some(usage))
    }
}

/// Completion chunks.
pub(super) struct CompletionChunks(Head);

impl CompletionChunks {
    pub fn new(model: String) -> Self {
        CompletionChunks(Head::new("cmpl", model))
    }

    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> Sse {
        let c = CompletionResponse {
            id: self.0.id.clone(),
            object: "text_completion",
            created: self.0.created,
            model: self.0.model.clone(),
            choices,
            usage,
        };
        Sse::default().data(serde_json::to_string(&c).unwrap_or_default())
    }

    pub fn plain(&self, index: usize, text: String) -> Sse {
        let choice = CompletionChoice {
            index,
            text,
            logprobs: None,
            finish_reason: None,
        };
        self.chunk(vec![choice], None)
    }
}

impl Chunks for CompletionChunks {
    fn text(&self, s: &Shared, index: usize, text: String, scored: Option<Scored>) -> Sse {
        let logprobs = scored.map(|t| s.completion_logprobs(&[t], 0));
        let choice = CompletionChoice {
            index,
            text,
            logprobs,
            finish_reason: None,
        };
        self.chunk(vec![choice], None)
    }

    fn finish(&self, index: usize, reason: &'static str) -> Sse {
        let choice = CompletionChoice {
            index,
            text: String::new(),
            logprobs: None,
            finish_reason: Some(reason),
        };
        self.chunk(vec![choice], None)
    }

    fn usage(&self, usage: Usage) -> Sse {
        self.chunk(vec![], Some(usage))
    }
}

/// The reply of `n` choices as server-sent events: `opening` first, then each job event's
/// chunks as it comes.
pub(super) fn reply<C: Chunks>(
    s: Arc<Shared>,
    rx: UnboundedReceiver<(usize, Event)>,
    (n, prompt_tokens, include_usage): (usize, usize, bool),
    chunks: C,
    opening: Vec<Sse>,
) -> Response {
    let chunks = Arc::new(chunks);
    let state = (rx, n, 0usize, false);
    let body = stream::unfold(state, move |(mut rx, left, generated, ended)| {
        let (s, c) = (s.clone(), chunks.clone());
        async move {
            if ended {
                return None;
            }
            let Some((index, e)) = rx.recv().await else {
                let out = vec![error("the engine stopped")];
                return Some((out, (rx, left, generated, true)));
            };
            match e {
                Event::Token { id, delta, logprob } => {
                    let scored = logprob.map(|(l, top)| (id, l, top));
                    let out = match (delta.is_empty(), &scored) {
                        (true, None) => vec![],
                        _ => vec![c.text(&s, index, delta, scored)],
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
                        out.push(c.text(&s, index, tail, None));
                    }
                    out.push(c.finish(index, finish.as_str()));
                    let (left, generated) = (left - 1, generated + completion_tokens);
                    if left == 0 {
                        if include_usage {
                            out.push(c.usage(Usage {
                                prompt_tokens,
                                completion_tokens: generated,
                                total_tokens: prompt_tokens + generated,
                            }));
                        }
                        out.push(Sse::default().data("[DONE]"));
                    }
                    Some((out, (rx, left, generated, left == 0)))
                }
                Event::Failed(msg) => Some((vec![error(&msg)], (rx, left, generated, true))),
            }
        }
    });
    sse(stream::iter(opening).chain(body.flat_map(stream::iter)))
}

fn error(msg: &str) -> Sse {
    let err = json!({"error": {"message": msg, "type": "server_error"}});
    Sse::default().data(err.to_string())
}

fn sse(events: impl Stream<Item = Sse> + Send + 'static) -> Response {
    let events = events.map(Ok::<_, Infallible>);
    axum::response::sse::Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
