//! The server's counters and latency histograms, written in Prometheus' text format
//! (`GET /metrics`), with the names vLLM uses where it has one.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the histogram buckets.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    n: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (c, &b) in self.counts.iter_mut().zip(BUCKETS) {
            if secs <= b {
                *c += 1;
            }
        }
        self.sum += secs;
        self.n += 1;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, &b) in BUCKETS.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.n);
        let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", self.sum, self.n);
    }
}

#[derive(Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub rejected: AtomicU64,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    ttft: Mutex<Histogram>,
    itl: Mutex<Histogram>,
}

impl Metrics {
    pub fn first_token(&self, d: Duration) {
        self.ttft.lock().unwrap().observe(d.as_secs_f64());
    }

    pub fn next_token(&self, d: Duration) {
        self.itl.lock().unwrap().observe(d.as_secs_f64());
    }

    pub fn finished(&self, prompt: usize, generated: usize) {
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.generation_tokens
            .fetch_add(generated as u64, Ordering::Relaxed);
    }

    /// The text of `GET /metrics`, with the queue's state now.
    pub fn render(&self, waiting: usize, running: usize) -> String {
        let mut out = String::new();
        let counters = [
            (
                "decodex_requests_total",
                "Requests received.",
                &self.requests,
            ),
            (
                "decodex_requests_rejected_total",
                "Requests refused: queue full.",
                &self.rejected,
            ),
            (
                "vllm:prompt_tokens_total",
                "Prompt tokens processed.",
                &self.prompt_tokens,
            ),
            (
                "vllm:generation_tokens_total",
                "Tokens generated.",
                &self.generation_tokens,
            ),
        ];
        for (name, help, v) in counters {
            let v = v.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        for (name, help, v) in [
            (
                "vllm:num_requests_waiting",
                "Requests in the queue.",
                waiting,
            ),
            (
                "vllm:num_requests_running",
                "Requests in decoding slots.",
                running,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        self.ttft.lock().unwrap().write(
            &mut out,
            "vllm:time_to_first_token_seconds",
            "Time from a request's start of decoding to its first token.",
        );
        self.itl.lock().unwrap().write(
            &mut out,
            "vllm:inter_token_latency_seconds",
            "Time between consecutive tokens of a request.",
        );
        out
    }
}
