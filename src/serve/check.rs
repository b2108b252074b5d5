//! A request's checks, as the OpenAI API makes them: the body parsed (size, JSON, unknown
//! fields, types) and the decoding fields in range, each fault an `ApiError` (an HTTP status
//! and an OpenAI-style JSON body).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::api::{self, *};
use super::Shared;
use crate::decode::SamplingConfig;

/// The most choices (`n`) and alternatives (`top_logprobs`) a request may ask for.
pub(super) const MAX_N: usize = 16;
pub(super) const MAX_TOP_LOGPROBS: usize = 20;

/// An error as the OpenAI API answers one.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// 400 for a bad field.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    pub fn busy() -> Self {
        ApiError {
            code: Some("rate_limit_exceeded"),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "the server is busy: every decoding slot is taken and the queue is full; retry \
                 later",
            )
        }
    }

    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the server is shutting down",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorResponse {
            error: ErrorBody {
                message: self.message,
                kind: self.kind,
                param: self.param.map(str::to_string),
                code: self.code.map(str::to_string),
            },
        };
        (self.status, Json(body)).into_response()
    }
}

pub(super) type Reply = std::result::Result<Response, ApiError>;

/// The body as JSON of type T: 413 past the size limit, 400 for malformed JSON, an unknown
/// field (`own`: the endpoint's fields besides the sampling ones; `None`: the type checks) or
/// a wrong type.
pub(super) fn parse<T: DeserializeOwned>(
    body: std::result::Result<Bytes, BytesRejection>,
    own: Option<&[&str]>,
) -> std::result::Result<T, ApiError> {
    let body = body.map_err(|e| {
        let status = e.status();
        let kind = "invalid_request_error";
        ApiError::new(
            status,
            kind,
            format!("the request body cannot be read: {e}"),
        )
    })?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::invalid("body", "the body must be a JSON object"));
    }
    if let Some(field) = own.and_then(|own| api::unknown_field(&value, own)) {
        return Err(ApiError::invalid(
            "body",
            format!("Unrecognized request argument supplied: {field}"),
        ));
    }
    serde_json::from_value(value).map_err(|e| ApiError::invalid("body", e.to_string()))
}

/// What a chat or completions request asks of decoding, checked.
pub(super) struct Decoding {
    pub sampling: SamplingConfig,
    pub n: usize,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

pub(super) fn decoding(s: &Shared, o: Sampling) -> std::result::Result<Decoding, ApiError> {
    let temperature = o.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            "temperature must be in [0, 2]",
        ));
    }
    let top_p = o.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", "top_p must be in (0, 1]"));
    }
    let min_p = o.min_p.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(ApiError::invalid("min_p", "min_p must be in [0, 1]"));
    }
    for (name, v) in [
        ("presence_penalty", o.presence_penalty),
        ("frequency_penalty", o.frequency_penalty),
    ] {
        if v.is_some_and(|v| !(-2.0..=2.0).contains(&v)) {
            return Err(ApiError::invalid(
                name,
                format!("{name} must be in [-2, 2]"),
            ));
        }
    }
    let repetition_penalty = o.repetition_penalty.unwrap_or(1.0);
    if !(repetition_penalty > 0.0 && repetition_penalty.is_finite()) {
        let msg = "repetition_penalty must be positive";
        return Err(ApiError::invalid("repetition_penalty", msg));
    }
    let n = o.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid(
            "n",
            format!("n must be from 1 to {MAX_N}"),
        ));
    }
    let stop = o.stop.map(OneOrMany::into_vec).unwrap_or_default();
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        let msg = "stop takes up to 4 non-empty strings";
        return Err(ApiError::invalid("stop", msg));
    }
    let seed = o.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        t.map_or(0, |d| d.as_nanos() as u64)
    });
    let sampling = SamplingConfig {
        temperature,
        top_k: o.top_k.unwrap_or(0),
        top_p,
        min_p,
        presence_penalty: o.presence_penalty.unwrap_or(0.0),
        frequency_penalty: o.frequency_penalty.unwrap_or(0.0),
        repetition_penalty,
        eos_ids: match o.ignore_eos {
            Some(true) => vec![],
            _ => s.model.eos_ids.clone(),
        },
        seed,
        ..SamplingConfig::default()
    };
    let stream = o.stream.unwrap_or(false);
    if o.stream_options.is_some() && !stream {
        let msg = "stream_options is only allowed when stream is true";
        return Err(ApiError::invalid("stream_options", msg));
    }
    Ok(Decoding {
        sampling,
        n,
        stop,
        stream,
        include_usage: o.stream_options.is_some_and(|so| so.include_usage),
    })
}

/// The most new tokens for a prompt of `prompt` tokens: `asked` if it fits the context, else
/// a 400 as OpenAI words it; the rest of the context when not asked.
pub(super) fn max_new(
    s: &Shared,
    prompt: usize,
    asked: Option<usize>,
) -> std::result::Result<usize, ApiError> {
    let room = s.context.saturating_sub(prompt);
    if room == 0 {
        let mut e = ApiError::invalid(
            "messages",
            format!(
                "This model's maximum context length is {} tokens. However, your prompt has \
                 {prompt} tokens, leaving no room for a reply.",
                s.context
            ),
        );
        e.code = Some("context_length_exceeded");
        return Err(e);
    }
    match asked {
        Some(0) => Err(ApiError::invalid(
            "max_tokens",
            "max_tokens must be at least 1",
        )),
        Some(m) if prompt + m > s.context => {
            let mut e = ApiError::invalid(
                "max_tokens",
                format!(
                    "This model's maximum context length is {} tokens. However, you requested \
                     {} tokens ({prompt} in the messages, {m} in the completion).",
                    s.context,
                    prompt + m
                ),
            );
            e.code = Some("context_length_exceeded");
            Err(e)
        }
        Some(m) => Ok(m),
        None => Ok(room),
    }
}
