//! `decodex serve` on loopback with SmolLM2-135M (Q4_1) and all-MiniLM-L6-v2: the OpenAI
//! routes, continuous batching (concurrent greedy replies equal the lone ones and `decodex
//! generate`'s), the queue limit, a client that leaves, and every fault an HTTP status with a
//! JSON error body. The client is a few lines of HTTP/1.1 over a socket, so the test needs no
//! HTTP crate.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// A server child process, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Server {
    let model = common::smollm2();
    let mut child = Command::new(env!("CARGO_BIN_EXE_decodex"))
        .args([
            "--json",
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--port",
            "0",
        ])
        .args(extra)
        .env("RAYON_NUM_THREADS", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the decodex binary runs");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: Value = serde_json::from_str(&line).expect("a JSON line with the address");
    Server {
        addr: v["address"].as_str().unwrap().to_string(),
        child,
    }
}

/// The status and body of one request (`Connection: close`; chunked bodies joined).
fn send(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_string()
        },
    )
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn post(addr: &str, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = send(addr, "POST", path, &[], body.to_string().as_bytes());
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The `data:` payloads of a server-sent-event body.
fn events(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

fn chat(msg: &str, extra: Value) -> Value {
    let mut body =
        json!({"messages": [{"role": "user", "content": msg}], "temperature": 0, "max_tokens": 24});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

const QUESTIONS: [&str; 4] = [
    "What is the capital of France?",
    "Name three colours.",
    "Write a haiku about the sea.",
    "What is 2 + 2?",
];

#[test]
fn chat_completions_match_decodex_generate_alone_and_in_batches() {
    let srv = start(&["--parallel", "4"]);
    // Alone: greedy chat equals `decodex generate --chat --strategy greedy`, token for token.
    let mut alone = Vec::new();
    for q in QUESTIONS {
        let (status, r) = post(&srv.addr, "/v1/chat/completions", &chat(q, json!({})));
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["object"], "chat.completion");
        let text = r["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
        let cli = common::decodex_json(&[
            "--json",
            "generate",
            "--model",
            common::smollm2().to_str().unwrap(),
            "--chat",
            "--strategy",
            "greedy",
            "--max-new-tokens",
            "24",
            "--prompt",
            q,
        ]);
        assert_eq!(text, cli["text"].as_str().unwrap(), "{q}");
        assert_eq!(r["usage"]["completion_tokens"], cli["new_tokens"], "{q}");
        assert_eq!(r["usage"]["prompt_tokens"], cli["prompt_tokens"], "{q}");
        alone.push(text);
    }
    // Together: four clients at once share the passes, with the same replies.
    let together: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = QUESTIONS
            .iter()
            .map(|q| {
                let addr = srv.addr.clone();
                sc.spawn(move || {
                    let (status, r) = post(&addr, "/v1/chat/completions", &chat(q, json!({})));
                    assert_eq!(status, 200, "{r}");
                    r["choices"][0]["message"]["content"]
                        .as_str()
                        .unwrap()
                        .to_string()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);
}

#[test]
fn streaming_n_seed_stop_and_logprobs() {
    let srv = start(&["--parallel", "2"]);
    let q = QUESTIONS[0];
    let (_, plain) = post(&srv.addr, "/v1/chat/completions", &chat(q, json!({})));
    let plain = plain["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    // Streamed: the deltas join into the same text; a finish chunk, the usage, then [DONE].
    let body = chat(
        q,
        json!({"stream": true, "stream_options": {"include_usage": true}}),
    );
    let (status, text) = send(
        &srv.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200);
    let evs = events(&text);
    assert_eq!(evs.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = evs[..evs.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let joined: String = chunks
        .iter()
        .filter_map(|c| {
            c["choices"].get(0)?["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(joined, plain);
    let finish = chunks.iter().rev().find_map(|c| {
        c["choices"].get(0)?["finish_reason"]
            .as_str()
            .map(str::to_string)
    });
    assert!(matches!(finish.as_deref(), Some("stop" | "length")));
    let usage = &chunks.last().unwrap()["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0, "{usage}");
    // n = 2 with a seed: two choices, and the same seed gives the same texts.
    let sampled = chat(q, json!({"temperature": 0.9, "n": 2, "seed": 7}));
    let (_, a) = post(&srv.addr, "/v1/chat/completions", &sampled);
    let (_, b) = post(&srv.addr, "/v1/chat/completions", &sampled);
    assert_eq!(a["choices"].as_array().unwrap().len(), 2, "{a}");
    assert_eq!(a["choices"], b["choices"]);
    // stop: the text ends before the stop string, which a greedy reply holds.
    let word = plain
        .split_whitespace()
        .nth(2)
        .expect("a reply of three words")
        .to_string();
    let (_, s) = post(
        &srv.addr,
        "/v1/chat/completions",
        &chat(q, json!({"stop": [word.clone()]})),
    );
    let cut = s["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(cut, &plain[..plain.find(&word).unwrap()]);
    assert_eq!(s["choices"][0]["finish_reason"], "stop");
    // logprobs: one entry a token, each with 3 alternatives led by the chosen greedy token.
    let (_, l) = post(
        &srv.addr,
        "/v1/chat/completions",
        &chat(q, json!({"logprobs": true, "top_logprobs": 3})),
    );
    let content = l["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(
        content.len() as u64,
        l["usage"]["completion_tokens"].as_u64().unwrap()
    );
    for t in content {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["logprob"], t["logprob"]);
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
    }
}

#[test]
fn completions_embeddings_tokenize_and_the_small_routes() {
    let minilm = common::minilm();
    let srv = start(&["--embedding-model", minilm.to_str().unwrap()]);
    let (status, r) = post(
        &srv.addr,
        "/v1/completions",
        &json!({
            "prompt": ["Once upon a time", "The sea"], "max_tokens": 8, "temperature": 0,
            "echo": true,
        }),
    );
    assert_eq!(status, 200, "{r}");
    let choices = r["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    assert!(choices[0]["text"]
        .as_str()
        .unwrap()
        .starts_with("Once upon a time"));
    assert!(choices[1]["text"].as_str().unwrap().starts_with("The sea"));
    // Streamed: the chunks' texts join into the plain reply's.
    let plain = json!({"prompt": "The sea", "max_tokens": 12, "temperature": 0});
    let (_, p) = post(&srv.addr, "/v1/completions", &plain);
    let mut streamed = plain.clone();
    streamed["stream"] = json!(true);
    let (status, body) = send(
        &srv.addr,
        "POST",
        "/v1/completions",
        &[],
        streamed.to_string().as_bytes(),
    );
    assert_eq!(status, 200);
    let evs = events(&body);
    assert_eq!(evs.last().unwrap(), "[DONE]");
    let joined: String = evs[..evs.len() - 1]
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(joined, p["choices"][0]["text"].as_str().unwrap());
    // The load generator against this server: every request answered, exactly the tokens asked
    // (EOS ignored).
    let url = format!("http://{}", srv.addr);
    let b = common::decodex_json(&[
        "--json",
        "bench",
        "serve",
        "--url",
        &url,
        "--concurrency",
        "2",
        "--requests",
        "4",
        "--prompt-tokens",
        "32",
        "--max-tokens",
        "8",
    ]);
    assert_eq!(
        (b["failed"].as_u64(), b["output_tokens"].as_u64()),
        (Some(0), Some(32)),
        "{b}"
    );
    assert!(b["ttft_ms_p50"].as_f64().unwrap() > 0.0 && b["itl_ms_p50"].as_f64().unwrap() > 0.0);
    let (_, l) = post(
        &srv.addr,
        "/v1/completions",
        &json!({"prompt": "The sea", "max_tokens": 4, "logprobs": 2, "temperature": 0}),
    );
    assert_eq!(
        l["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .len(),
        4,
        "{l}"
    );
    // Embeddings equal `decodex embed`'s within 1e-6, as floats and as base64.
    let texts = ["A man is playing a guitar.", "The weather is cold today."];
    let (status, e) = post(&srv.addr, "/v1/embeddings", &json!({"input": texts}));
    assert_eq!(status, 200, "{e}");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("t.txt");
    std::fs::write(&input, texts.join("\n") + "\n").unwrap();
    let out = dir.path().join("v.npy");
    let o = common::decodex(&[
        "embed",
        "--model",
        minilm.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let raw = std::fs::read(&out).unwrap();
    let header = u16::from_le_bytes([raw[8], raw[9]]) as usize;
    let cli: Vec<f32> = raw[10 + header..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let served: Vec<f32> = e["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| {
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(served.len(), cli.len());
    for (a, b) in served.iter().zip(&cli) {
        assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
    }
    let (_, b64) = post(
        &srv.addr,
        "/v1/embeddings",
        &json!({"input": texts[0], "encoding_format": "base64"}),
    );
    assert!(b64["data"][0]["embedding"].is_string());
    assert!(b64["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let (_, t) = post(&srv.addr, "/tokenize", &json!({"content": "Hello world"}));
    let (_, d) = post(&srv.addr, "/detokenize", &json!({"tokens": t["tokens"]}));
    assert_eq!(d["content"], "Hello world");
    let (status, m) = send(&srv.addr, "GET", "/v1/models", &[], b"");
    assert_eq!(status, 200);
    assert!(m.contains("SmolLM2-135M-Instruct.Q4_1"), "{m}");
    let (status, h) = send(&srv.addr, "GET", "/health", &[], b"");
    assert_eq!((status, h.contains("\"ok\"")), (200, true));
    let (status, metrics) = send(&srv.addr, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("vllm:time_to_first_token_seconds_count"),
        "{metrics}"
    );
    assert!(metrics.contains("decodex_requests_total"));
}

/// Each fault: its status and an OpenAI-style error body.
#[test]
fn faults_get_an_http_status_and_a_json_error() {
    let srv = start(&[
        "--ctx-size",
        "256",
        "--max-body",
        "65536",
        "--api-key",
        "sekret",
    ]);
    let key = [("Authorization", "Bearer sekret")];
    let call = |path: &str, body: &[u8], headers: &[(&str, &str)]| {
        let (status, text) = send(&srv.addr, "POST", path, headers, body);
        let v: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("a JSON body: {text}"));
        assert!(v["error"]["message"].is_string(), "{v}");
        (status, v)
    };
    let ok = chat("Hi", json!({})).to_string();
    assert_eq!(call("/v1/chat/completions", ok.as_bytes(), &[]).0, 401);
    assert_eq!(
        call(
            "/v1/chat/completions",
            ok.as_bytes(),
            &[("Authorization", "Bearer nope")]
        )
        .0,
        401
    );
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "malformed JSON"),
        (b"[1, 2]".to_vec(), 400, "not an object"),
        (
            chat("Hi", json!({"frobnicate": 1}))
                .to_string()
                .into_bytes(),
            400,
            "unknown field",
        ),
        (
            chat("Hi", json!({"max_tokens": "ten"}))
                .to_string()
                .into_bytes(),
            400,
            "wrong type",
        ),
        (
            chat("Hi", json!({"max_tokens": 10_000}))
                .to_string()
                .into_bytes(),
            400,
            "max_tokens over the context",
        ),
        (
            chat(&"word ".repeat(400), json!({"max_tokens": null}))
                .to_string()
                .into_bytes(),
            400,
            "prompt over the context",
        ),
        (
            chat("Hi", json!({"n": 99})).to_string().into_bytes(),
            400,
            "n over the limit",
        ),
        (
            chat("Hi", json!({"logprobs": true, "top_logprobs": 50}))
                .to_string()
                .into_bytes(),
            400,
            "top_logprobs over the limit",
        ),
        (
            chat("Hi", json!({"temperature": 5}))
                .to_string()
                .into_bytes(),
            400,
            "temperature out of range",
        ),
        (
            json!({"messages": []}).to_string().into_bytes(),
            400,
            "no messages",
        ),
        (
            chat("x", json!({}))
                .to_string()
                .replace("\"x\"", &format!("\"{}\"", "x".repeat(70_000)))
                .into_bytes(),
            413,
            "body over the limit",
        ),
    ];
    for (body, want, what) in cases {
        let (status, v) = call("/v1/chat/completions", &body, &key);
        assert_eq!(status, want, "{what}: {v}");
    }
    let (status, _) = call("/v1/nothing", b"{}", &key);
    assert_eq!(status, 404);
    // The server still answers.
    let (status, text) = send(
        &srv.addr,
        "POST",
        "/v1/chat/completions",
        &key,
        ok.as_bytes(),
    );
    assert_eq!(status, 200, "{text}");
}

/// One slot, no queue: a second request while the first decodes gets 429; a client that
/// leaves frees its slot for the next at once.
#[test]
fn a_full_server_says_429_and_a_client_that_leaves_frees_its_slot() {
    let srv = start(&["--parallel", "1", "--max-queue", "0"]);
    let long = chat(
        "Tell me a very long story about a dragon.",
        json!({"max_tokens": 400, "stream": true}),
    );
    let mut first = TcpStream::connect(&srv.addr).unwrap();
    let body = long.to_string();
    write!(
        first,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Wait for the first tokens: the slot is busy.
    let mut buf = [0u8; 4096];
    let mut seen = 0;
    while seen < 2000 {
        seen += first.read(&mut buf).unwrap();
    }
    let (status, v) = post(&srv.addr, "/v1/chat/completions", &chat("Hi", json!({})));
    assert_eq!(status, 429, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("busy"));
    drop(first);
    // The slot is freed at the next pass: a short request goes through well before the long
    // one could have ended.
    std::thread::sleep(Duration::from_millis(300));
    let t = std::time::Instant::now();
    let (status, v) = post(
        &srv.addr,
        "/v1/chat/completions",
        &chat("Hi", json!({"max_tokens": 4})),
    );
    assert_eq!(status, 200, "{v}");
    assert!(t.elapsed() < Duration::from_secs(20));
}
