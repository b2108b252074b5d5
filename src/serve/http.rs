//! The routes: requests parsed and checked as the OpenAI API checks them (each fault an HTTP
//! status with an OpenAI-style JSON error body), turned into engine jobs, and the jobs' events
//! into JSON responses or server-sent events.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::api::{self, *};
use super::check::{decoding, max_new, parse, ApiError, Decoding, Reply, MAX_N, MAX_TOP_LOGPROBS};
use super::engine::{Event, Finish, Job};
use super::stream::{reply, ChatChunks, CompletionChunks};
use super::Shared;
use crate::decode::{SamplingConfig, Strategy};

type S = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.opts.max_body;
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), auth))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shared)
}

/// 401 unless the request carries the server's API key (when it has one).
async fn auth(State(s): S, req: Request, next: Next) -> Response {
    if let Some(key) = &s.opts.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            let mut e = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                match given {
                    None => "no API key given: send `Authorization: Bearer KEY`",
                    Some(_) => "the API key given is wrong",
                },
            );
            e.code = Some("invalid_api_key");
            return e.into_response();
        }
    }
    next.run(req).await
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("no route {} {}", req.method(), req.uri().path()),
    )
}

/// The jobs of one request: `prompts` × `d.n` choices, index `p · n + i`, seeds `seed + index`
/// (as `decodex generate` seeds its return sequences).
fn jobs(
    prompts: &[Vec<u32>],
    d: &Decoding,
    max_new: &[usize],
    top_logprobs: Option<usize>,
) -> (Vec<Job>, UnboundedReceiver<(usize, Event)>) {
    let (tx, rx) = unbounded_channel();
    let arrived = Instant::now();
    let mut out = Vec::new();
    for (p, prompt) in prompts.iter().enumerate() {
        for i in 0..d.n {
            let index = p * d.n + i;
            out.push(Job {
                prompt: prompt.clone(),
                sampling: SamplingConfig {
                    seed: d.sampling.seed.wrapping_add(i as u64),
                    ..d.sampling.clone()
                },
                // Temperature 0 is greedy (`SamplingConfig::effective_strategy`).
                strategy: Strategy::Sample,
                max_new: max_new[p],
                stop: d.stop.clone(),
                top_logprobs,
                index,
                events: tx.clone(),
                arrived,
            });
        }
    }
    (out, rx)
}

/// A chosen token, its log-probability and the best alternatives (id, log-probability).
pub(super) type Scored = (u32, f32, Vec<(u32, f32)>);

/// One choice as its events build it.
#[derive(Default)]
struct Choice {
    text: String,
    tokens: Vec<Scored>,
    finish: Option<Finish>,
    prompt_tokens: usize,
    completion_tokens: usize,
}

/// Collects every choice's events to the end; 504 past the time limit, 500 on a failure.
async fn collect(
    s: &Shared,
    mut rx: UnboundedReceiver<(usize, Event)>,
    count: usize,
) -> std::result::Result<Vec<Choice>, ApiError> {
    let mut choices: Vec<Choice> = (0..count).map(|_| Choice::default()).collect();
    let mut left = count;
    let t = s.opts.timeout_s;
    let deadline = (t > 0).then(|| tokio::time::Instant::now() + Duration::from_secs(t));
    while left > 0 {
        let next = match deadline {
            Some(d) => tokio::time::timeout_at(d, rx.recv()).await.map_err(|_| {
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "server_error",
                    format!("the request took over {} s (--timeout-s)", s.opts.timeout_s),
                )
            })?,
            None => rx.recv().await,
        };
        let Some((i, e)) = next else {
            return Err(ApiError::internal(
                "the engine stopped before the reply ended",
            ));
        };
        let c = &mut choices[i];
        match e {
            Event::Token { id, delta, logprob } => {
                c.text.push_str(&delta);
                if let Some((lp, top)) = logprob {
                    c.tokens.push((id, lp, top));
                }
            }
            Event::Done {
                tail,
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                c.text.push_str(&tail);
                (c.finish, c.prompt_tokens, c.completion_tokens) =
                    (Some(finish), prompt_tokens, completion_tokens);
                left -= 1;
            }
            Event::Failed(msg) => return Err(ApiError::internal(msg)),
        }
    }
    Ok(choices)
}

fn usage(choices: &[Choice], prompts: &[Vec<u32>]) -> Usage {
    let prompt_tokens = prompts.iter().map(Vec::len).sum();
    let completion_tokens = choices.iter().map(|c| c.completion_tokens).sum();
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    }
}

pub(super) fn id(prefix: &str) -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!("{prefix}-{t:x}{n:04x}")
}

pub(super) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Shared {
    fn token_text(&self, id: u32) -> (String, Vec<u8>) {
        let text = self.model.tokenizer.decode(&[id]).unwrap_or_default();
        let bytes = text.as_bytes().to_vec();
        (text, bytes)
    }

    pub(super) fn chat_logprobs(&self, tokens: &[Scored]) -> ChatLogprobs {
        let content = tokens
            .iter()
            .map(|(id, lp, top)| {
                let (token, bytes) = self.token_text(*id);
                let top_logprobs = top
                    .iter()
                    .map(|&(t, l)| {
                        let (token, bytes) = self.token_text(t);
                        TopLogprob {
                            token,
                            logprob: l,
                            bytes,
                        }
                    })
                    .collect();
                TokenLogprob {
                    token,
                    logprob: *lp,
                    bytes,
                    top_logprobs,
                }
            })
            .collect();
        ChatLogprobs { content }
    }
}

async fn chat(State(s): S, body: std::result::Result<Bytes, BytesRejection>) -> Reply {
    s.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let req: ChatRequest = parse(body, Some(api::CHAT_FIELDS))?;
    if let Some(f) = &req.response_format {
        if f.get("type").and_then(Value::as_str) != Some("text") {
            return Err(ApiError::invalid(
                "response_format",
                "this server does not constrain output yet: only {\"type\": \"text\"}",
            ));
        }
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let mut messages = Vec::new();
    for m in &req.messages {
        if !["system", "user", "assistant", "developer", "tool"].contains(&m.role.as_str()) {
            let msg = format!("unknown message role '{}'", m.role);
            return Err(ApiError::invalid("messages", msg));
        }
        let text = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                    let msg = format!("content parts of type '{}' are not supported", p.kind);
                    return Err(ApiError::invalid("messages", msg));
                }
                parts.iter().filter_map(|p| p.text.as_deref()).collect()
            }
        };
        let role = if m.role == "developer" {
            "system"
        } else {
            m.role.as_str()
        };
        messages.push((role.to_string(), text));
    }
    let logprobs = req.logprobs.unwrap_or(false);
    let top = req.top_logprobs;
    if top.is_some() && !logprobs {
        let msg = "top_logprobs requires logprobs to be true";
        return Err(ApiError::invalid("top_logprobs", msg));
    }
    if top.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
        let msg = format!("top_logprobs must be from 0 to {MAX_TOP_LOGPROBS}");
        return Err(ApiError::invalid("top_logprobs", msg));
    }
    let d = decoding(&s, req.sampling)?;
    let pairs: Vec<(&str, &str)> = messages
        .iter()
        .map(|(r, c)| (r.as_str(), c.as_str()))
        .collect();
    let prompt = s
        .model
        .chat_prompt_for(&pairs)
        .and_then(|p| s.model.tokenizer.encode(&p))
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let asked = req.max_completion_tokens.or(req.max_tokens);
    let max_new = max_new(&s, prompt.len(), asked)?;
    let prompts = vec![prompt];
    let (jobs, rx) = jobs(
        &prompts,
        &d,
        &[max_new],
        logprobs.then_some(top.unwrap_or(0)),
    );
    s.submit(jobs)?;
    let model = req.model.unwrap_or_else(|| s.opts.model_id.clone());
    if d.stream {
        let chunks = ChatChunks::new(model);
        let opening = chunks.opening(d.n);
        let how = (d.n, prompts[0].len(), d.include_usage);
        return Ok(reply(s, rx, how, chunks, opening));
    }
    let choices = collect(&s, rx, d.n).await?;
    let usage = usage(&choices, &prompts);
    let choices = choices
        .into_iter()
        .enumerate()
        .map(|(index, c)| ChatChoice {
            index,
            logprobs: logprobs.then(|| s.chat_logprobs(&c.tokens)),
            message: ReplyMessage {
                role: "assistant",
                content: c.text,
            },
            finish_reason: c.finish.map_or("stop", Finish::as_str),
        })
        .collect();
    Ok(Json(ChatResponse {
        id: id("chatcmpl"),
        object: "chat.completion",
        created: now(),
        model,
        choices,
        usage,
    })
    .into_response())
}

async fn completions(State(s): S, body: std::result::Result<Bytes, BytesRejection>) -> Reply {
    s.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let req: CompletionRequest = parse(body, Some(api::COMPLETION_FIELDS))?;
    let texts = req.prompt.into_vec();
    if texts.is_empty() || texts.len() > MAX_N {
        let msg = format!("prompt takes from 1 to {MAX_N} strings");
        return Err(ApiError::invalid("prompt", msg));
    }
    if req.logprobs.is_some_and(|k| k > 5) {
        return Err(ApiError::invalid(
            "logprobs",
            "logprobs must be from 0 to 5",
        ));
    }
    if req.echo && req.logprobs.is_some() {
        let msg = "echo with logprobs (the prompt's log-probabilities) is not supported";
        return Err(ApiError::invalid("echo", msg));
    }
    let d = decoding(&s, req.sampling)?;
    let mut prompts = Vec::new();
    let mut limits = Vec::new();
    for t in &texts {
        let ids = s
            .model
            .tokenizer
            .encode(t)
            .map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
        if ids.is_empty() {
            return Err(ApiError::invalid("prompt", "a prompt gives no tokens"));
        }
        // OpenAI's default for completions: 16 tokens.
        limits.push(max_new(&s, ids.len(), Some(req.max_tokens.unwrap_or(16)))?);
        prompts.push(ids);
    }
    let count = prompts.len() * d.n;
    let (jobs, rx) = jobs(&prompts, &d, &limits, req.logprobs);
    s.submit(jobs)?;
    let model = req.model.unwrap_or_else(|| s.opts.model_id.clone());
    if d.stream {
        let chunks = CompletionChunks::new(model);
        let opening = match req.echo {
            true => (0..count)
                .map(|i| chunks.plain(i, texts[i / d.n].clone()))
                .collect(),
            false => vec![],
        };
        let prompt_tokens = prompts.iter().map(Vec::len).sum();
        return Ok(reply(
            s,
            rx,
            (count, prompt_tokens, d.include_usage),
            chunks,
            opening,
        ));
    }
    let choices = collect(&s, rx, count).await?;
    let usage = usage(&choices, &prompts);
    let choices = choices
        .into_iter()
        .enumerate()
        .map(|(index, c)| {
            let prompt = &texts[index / d.n];
            let start = if req.echo { prompt.len() } else { 0 };
            let logprobs = req
                .logprobs
                .map(|_| s.completion_logprobs(&c.tokens, start));
            let text = match req.echo {
                true => format!("{prompt}{}", c.text),
                false => c.text,
            };
            CompletionChoice {
                index,
                text,
                logprobs,
                finish_reason: c.finish.map(Finish::as_str),
            }
        })
        .collect();
    Ok(Json(CompletionResponse {
        id: id("cmpl"),
        object: "text_completion",
        created: now(),
        model,
        choices,
        usage: Some(usage),
    })
    .into_response())
}

impl Shared {
    pub(super) fn completion_logprobs(
        &self,
        tokens: &[Scored],
        start: usize,
    ) -> CompletionLogprobs {
        let mut out = CompletionLogprobs::default();
        let mut offset = start;
        for (id, lp, top) in tokens {
            let (text, _) = self.token_text(*id);
            out.text_offset.push(offset);
            offset += text.len();
            out.tokens.push(text);
            out.token_logprobs.push(Some(*lp));
            let map = top
                .iter()
                .map(|&(t, l)| (self.token_text(t).0, l))
                .collect();
            out.top_logprobs.push(Some(map));
        }
        out
    }
}

async fn embeddings(State(s): S, body: std::result::Result<Bytes, BytesRejection>) -> Reply {
    s.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let req: EmbeddingRequest = parse(body, None)?;
    let Some(embedder) = s.embedder.clone() else {
        let msg = "this server has no embedding model (start it with --embedding-model PATH)";
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            msg,
        ));
    };
    let texts = req.input.into_vec();
    if texts.is_empty() || texts.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            "input",
            "input must hold non-empty strings",
        ));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            let msg = format!("encoding_format must be 'float' or 'base64', not '{other}'");
            return Err(ApiError::invalid("encoding_format", msg));
        }
    };
    let dim = embedder.dim();
    if req.dimensions.is_some_and(|d| d != dim) {
        let msg = format!("this model's embeddings have {dim} dimensions");
        return Err(ApiError::invalid("dimensions", msg));
    }
    let name = embedder.info().name.clone();
    let (vectors, tokens) = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        embedder.embed_counted(&refs)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let data: Vec<Value> = vectors
        .chunks_exact(dim)
        .enumerate()
        .map(|(index, v)| {
            let embedding = match base64 {
                true => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    use base64::Engine;
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
                false => json!(v),
            };
            json!({"object": "embedding", "embedding": embedding, "index": index})
        })
        .collect();
    let model = req.model.unwrap_or(name);
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
    .into_response())
}

async fn models(State(s): S) -> Json<Value> {
    let mut data = vec![json!({
        "id": s.opts.model_id, "object": "model", "created": s.created, "owned_by": "decodex",
        "meta": {"context_length": s.context, "arch": s.model.arch()},
    })];
    if let Some(e) = &s.embedder {
        let (id, dim) = (&e.info().name, e.dim());
        data.push(json!({
            "id": id, "object": "model", "created": s.created, "owned_by": "decodex",
            "meta": {"embedding_dim": dim},
        }));
    }
    Json(json!({"object": "list", "data": data}))
}

async fn health(State(s): S) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "slots_busy": s.load.busy.load(Ordering::Relaxed),
        "queue": s.load.waiting.load(Ordering::Relaxed),
    }))
}

async fn metrics(State(s): S) -> Response {
    let text = s.metrics.render(
        s.load.waiting.load(Ordering::Relaxed),
        s.load.busy.load(Ordering::Relaxed),
    );
    let ct = "text/plain; version=0.0.4; charset=utf-8";
    ([(header::CONTENT_TYPE, ct)], text).into_response()
}

async fn tokenize(State(s): S, body: std::result::Result<Bytes, BytesRejection>) -> Reply {
    let req: TokenizeRequest = parse(body, None)?;
    let tokens = s
        .model
        .tokenizer
        .encode(&req.content)
        .map_err(|e| ApiError::invalid("content", e.to_string()))?;
    Ok(Json(json!({ "tokens": tokens })).into_response())
}

async fn detokenize(State(s): S, body: std::result::Result<Bytes, BytesRejection>) -> Reply {
    let req: DetokenizeRequest = parse(body, None)?;
    let vocab = s.model.decoder().vocab_size() as u32;
    if let Some(t) = req.tokens.iter().find(|&&t| t >= vocab) {
        let msg = format!("token {t} is outside the vocabulary (size {vocab})");
        return Err(ApiError::invalid("tokens", msg));
    }
    let content = s
        .model
        .tokenizer
        .decode(&req.tokens)
        .map_err(|e| ApiError::invalid("tokens", e.to_string()))?;
    Ok(Json(json!({ "content": content })).into_response())
}
