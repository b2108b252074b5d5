//! `decodex serve`: the OpenAI HTTP API over a model (`decodex::serve`).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;

use decodex::search::embed::load_embedder;
use decodex::serve::bench::{bench_serve as run_bench, BenchServeOptions};
use decodex::serve::{serve as run, ServeOptions};

use super::args::ModelArgs;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A model for /v1/embeddings: a sentence-transformers folder, or any model `decodex embed`
    /// takes.
    #[arg(long, value_name = "PATH")]
    pub embedding_model: Option<PathBuf>,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1", value_name = "HOST")]
    pub host: String,
    /// The port to listen on (0: any free one, printed at start).
    #[arg(long, default_value_t = 8080, value_name = "N")]
    pub port: u16,
    /// Sequences decoded at once: they share each forward pass (continuous batching).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub parallel: usize,
    /// Positions per sequence, prompt and reply (default: the model's context).
    #[arg(long, value_name = "N")]
    pub ctx_size: Option<usize>,
    /// Requests must send `Authorization: Bearer KEY`.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// Sequences that may wait for a free slot; past that, requests get 429.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_queue: usize,
    /// The longest a request may take before it gets 504 (0: no limit).
    #[arg(long, default_value_t = 600, value_name = "N")]
    pub timeout_s: u64,
    /// The largest request body, in bytes.
    #[arg(long, default_value_t = 4 << 20, value_name = "BYTES")]
    pub max_body: usize,
}

pub fn serve(a: &ServeArgs, json: bool) -> Result<()> {
    if a.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    if a.max_body == 0 {
        bail!("--max-body must be at least 1");
    }
    let model = super::generate::load(&a.model, None)?;
    let embedder = a
        .embedding_model
        .as_deref()
        .map(load_embedder)
        .transpose()?;
    let model_id = a
        .model
        .model
        .file_stem()
        .map_or("model".into(), |s| s.to_string_lossy().into_owned());
    let opts = ServeOptions {
        host: a.host.clone(),
        port: a.port,
        parallel: a.parallel,
        ctx_size: a.ctx_size,
        api_key: a.api_key.clone(),
        max_queue: a.max_queue,
        timeout_s: a.timeout_s,
        max_body: a.max_body,
        model_id,
    };
    // The first SIGINT/SIGTERM stops the server once its requests have ended; a second ends it.
    decodex::train::progress::stop_on_ctrl_c();
    let stop = decodex::train::progress::stop_requested;
    run(model, embedder, opts, stop, |addr| {
        if json {
            println!(
                "{}",
                json!({"event": "listening", "address": addr.to_string()})
            );
        } else {
            eprintln!("decodex: listening on http://{addr} (Ctrl-C stops)");
        }
    })?;
    Ok(())
}

#[derive(Args, Debug)]
pub struct BenchServeArgs {
    /// The server's base URL (`/v1/completions` is added).
    #[arg(long, default_value = "http://127.0.0.1:8080", value_name = "URL")]
    pub url: String,
    /// The `model` field of the requests (llama-server and decodex ignore it).
    #[arg(long, default_value = "default", value_name = "NAME")]
    pub model: String,
    /// Clients sending at once.
    #[arg(long, default_value_t = 1, value_name = "C")]
    pub concurrency: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub requests: usize,
    /// Tokens per prompt (counted by the server's /tokenize where it has one, else words).
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub prompt_tokens: usize,
    /// New tokens per request (EOS ignored).
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub max_tokens: usize,
}

pub fn bench_serve(a: &BenchServeArgs, json: bool) -> Result<()> {
    // Real text: Tiny Shakespeare when the data folder is there.
    let corpus = decodex::train::config::resolve_data_path(std::path::Path::new(
        "lm/tinyshakespeare/input.txt",
    ));
    let text = std::fs::read_to_string(&corpus)
        .unwrap_or_else(|_| "The quick brown fox jumps over the lazy dog. ".repeat(2000));
    let r = run_bench(&BenchServeOptions {
        url: a.url.clone(),
        model: a.model.clone(),
        concurrency: a.concurrency,
        requests: a.requests,
        prompt_tokens: a.prompt_tokens,
        max_tokens: a.max_tokens,
        text,
    })?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} requests ({} failed) at concurrency {} in {:.1} s: {:.2} requests/s, {:.1} output \
             tokens/s; time to first token p50 {:.0} ms, p99 {:.0} ms; inter-token latency p50 \
             {:.1} ms, p99 {:.1} ms",
            r.requests,
            r.failed,
            r.concurrency,
            r.duration_s,
            r.requests_per_s,
            r.output_tokens_per_s,
            r.ttft_ms_p50,
            r.ttft_ms_p99,
            r.itl_ms_p50,
            r.itl_ms_p99
        );
    }
    if let Some(e) = &r.first_error {
        eprintln!("decodex: first failure: {e}");
    }
    Ok(())
}
