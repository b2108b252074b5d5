//! `decodex bench serve`: a load generator for any OpenAI-compatible server, measured as vLLM's
//! `benchmark_serving.py` measures: `concurrency` clients send `requests` streamed
//! `/v1/completions` requests in all (each client its next as soon as its last has ended), each
//! a prompt of about `prompt_tokens` tokens asking for exactly `max_tokens` new ones
//! (`ignore_eos`). Time to first token: from sending a request to its first chunk with text;
//! inter-token latency: the gaps between its later chunks with text; output tokens/s: all the
//! tokens generated over the run's wall time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct BenchServeOptions {
    /// The server's base URL, e.g. http://127.0.0.1:8080 (`/v1/completions` is added).
    pub url: String,
    /// The `model` field of the requests.
    pub model: String,
    pub concurrency: usize,
    pub requests: usize,
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    /// The text prompts are cut from (each request from another place in it).
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchServeReport {
    pub url: String,
    pub concurrency: usize,
    pub requests: usize,
    pub failed: usize,
    pub prompt_tokens: usize,
    pub max_tokens: usize,
    pub duration_s: f64,
    pub requests_per_s: f64,
    pub output_tokens: usize,
    pub output_tokens_per_s: f64,
    pub ttft_ms_p50: f64,
    pub ttft_ms_p99: f64,
    pub itl_ms_p50: f64,
    pub itl_ms_p99: f64,
    /// The first failure's message, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// One request's timings.
#[derive(Default)]
struct Timed {
    ttft: Option<f64>,
    gaps: Vec<f64>,
    tokens: usize,
}

/// Runs the load and reports it.
pub fn bench_serve(o: &BenchServeOptions) -> Result<BenchServeReport> {
    if o.concurrency == 0 || o.requests == 0 || o.max_tokens == 0 || o.prompt_tokens == 0 {
        return Err(Error::Invalid(
            "--concurrency, --requests, --prompt-tokens and --max-tokens must be at least 1".into(),
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start the client runtime: {e}")))?;
    rt.block_on(run(o))
}

async fn run(o: &BenchServeOptions) -> Result<BenchServeReport> {
    // A new connection a request, as vLLM's benchmark opens them: a pooled connection that the
    // server has closed meanwhile (llama-server does) would fail the next request sent on it.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| Error::Invalid(format!("cannot make an HTTP client: {e}")))?;
    let base = o.url.trim_end_matches('/').to_string();
    let prompts = prompts(&client, &base, o).await?;
    let next = Arc::new(AtomicUsize::new(0));
    let results: Arc<Mutex<Vec<std::result::Result<Timed, String>>>> = Arc::default();
    let t0 = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..o.concurrency.min(o.requests) {
        let (client, next, results, prompts) = (
            client.clone(),
            next.clone(),
            results.clone(),
            prompts.clone(),
        );
        let (url, model, max_tokens, n) = (
            format!("{base}/v1/completions"),
            o.model.clone(),
            o.max_tokens,
            o.requests,
        );
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= n {
                    break;
                }
                let body = json!({
                    "model": model, "prompt": prompts[i % prompts.len()], "max_tokens": max_tokens,
                    "temperature": 0.0, "stream": true, "ignore_eos": true,
                    "stream_options": {"include_usage": true},
                });
                let r = one(&client, &url, &body).await;
                results.lock().unwrap().push(r);
            }
        }));
    }
    for c in clients {
        c.await
            .map_err(|e| Error::Invalid(format!("a client task failed: {e}")))?;
    }
    let duration = t0.elapsed().as_secs_f64();
    let results = std::mem::take(&mut *results.lock().unwrap());
    let first_error = results.iter().find_map(|r| r.as_ref().err().cloned());
    let ok: Vec<Timed> = results.into_iter().filter_map(|r| r.ok()).collect();
    let mut ttft: Vec<f64> = ok.iter().filter_map(|t| t.ttft).collect();
    let mut itl: Vec<f64> = ok.iter().flat_map(|t| t.gaps.iter().copied()).collect();
    let output_tokens = ok.iter().map(|t| t.tokens).sum();
    Ok(BenchServeReport {
        url: o.url.clone(),
        concurrency: o.concurrency,
        requests: o.requests,
        failed: o.requests - ok.len(),
        prompt_tokens: o.prompt_tokens,
        max_tokens: o.max_tokens,
        duration_s: duration,
        requests_per_s: ok.len() as f64 / duration,
        output_tokens,
        output_tokens_per_s: output_tokens as f64 / duration,
        ttft_ms_p50: 1e3 * percentile(&mut ttft, 50.0),
        ttft_ms_p99: 1e3 * percentile(&mut ttft, 99.0),
        itl_ms_p50: 1e3 * percentile(&mut itl, 50.0),
        itl_ms_p99: 1e3 * percentile(&mut itl, 99.0),
        first_error,
    })
}

/// Prompts of `prompt_tokens` tokens as the server's `/tokenize` and `/detokenize` count them
/// (llama-server's and decodex's routes); where it has none, as many words.
async fn prompts(
    client: &reqwest::Client,
    base: &str,
    o: &BenchServeOptions,
) -> Result<Vec<String>> {
    let words: Vec<&str> = o.text.split_whitespace().collect();
    if words.is_empty() {
        return Err(Error::Invalid("the benchmark text has no words".into()));
    }
    let count = o.requests.min(64);
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        // Each prompt from another place in the text, twice the words it needs at most.
        let start = (i * 997) % words.len();
        let piece: Vec<&str> = words
            .iter()
            .cycle()
            .skip(start)
            .take(2 * o.prompt_tokens)
            .copied()
            .collect();
        let text = piece.join(" ");
        let cut = async {
            let t = post_json(
                client,
                &format!("{base}/tokenize"),
                &json!({"content": text}),
            )
            .await?;
            let ids: Vec<Value> = t["tokens"]
                .as_array()?
                .iter()
                .take(o.prompt_tokens)
                .cloned()
                .collect();
            let d = post_json(
                client,
                &format!("{base}/detokenize"),
                &json!({"tokens": ids}),
            )
            .await?;
            d["content"].as_str().map(str::to_string)
        };
        out.push(match cut.await {
            Some(t) => t,
            None => piece[..o.prompt_tokens.min(piece.len())].join(" "),
        });
    }
    Ok(out)
}

/// The JSON answer to a POST of `body`, if the server gives one.
async fn post_json(client: &reqwest::Client, url: &str, body: &Value) -> Option<Value> {
    let resp = client.post(url).json(body).send().await.ok()?;
    resp.json().await.ok()
}

/// Sends one streamed request and times its chunks.
async fn one(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> std::result::Result<Timed, String> {
    let t0 = Instant::now();
    let resp = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        return Err(format!(
            "HTTP {status}: {}",
            text.chars().take(300).collect::<String>()
        ));
    }
    let mut t = Timed::default();
    let (mut last, mut chunks, mut usage) = (None::<Instant>, 0usize, None::<usize>);
    let mut buf = String::new();
    let mut stream = resp.bytes_stream();
    while let Some(bytes) = stream.next().await {
        let bytes = bytes.map_err(|e| e.to_string())?;
        buf.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buf.find('\n') {
            let line: String = buf.drain(..=end).collect();
            let Some(data) = line.trim().strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data).map_err(|e| format!("a chunk: {e}"))?;
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                usage = Some(n as usize);
            }
            let text = v["choices"][0]["text"].as_str().unwrap_or("");
            if text.is_empty() {
                continue;
            }
            let now = Instant::now();
            match last {
                None => t.ttft = Some((now - t0).as_secs_f64()),
                Some(l) => t.gaps.push((now - l).as_secs_f64()),
            }
            last = Some(now);
            chunks += 1;
        }
    }
    t.tokens = usage.unwrap_or(chunks);
    if t.ttft.is_none() {
        return Err("the stream held no text".into());
    }
    Ok(t)
}

/// The p-th percentile (linear between ranks, as numpy's default); 0 for no values.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let r = p / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (r.floor() as usize, r.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (r - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_interpolate_as_numpy() {
        let mut v = vec![4.0, 1.0, 3.0, 2.0];
        assert_eq!(percentile(&mut v, 50.0), 2.5);
        assert_eq!(percentile(&mut v, 100.0), 4.0);
        assert!((percentile(&mut v, 99.0) - 3.97).abs() < 1e-12);
        assert_eq!(percentile(&mut [], 50.0), 0.0);
    }
}
