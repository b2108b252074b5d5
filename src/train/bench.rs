//! `decodex bench train`: the median training throughput of full optimizer steps (forward,
//! backward, clipping, AdamW) on real batches of the config's data, after a warm-up.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::data::{Batcher, Meta, TokenFile};
use crate::error::Result;
use crate::train::config::TrainConfig;
use crate::train::optim::{clip_grad_norm, decay_ranges, AdamW};
use crate::train::trainer::{make_backend, model_config, prepared_data};

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub backend: String,
    pub iters: usize,
    pub warmup: usize,
    pub threads: usize,
    pub tokens_per_step: usize,
    pub step_ms_median: f64,
    pub tokens_per_sec: f64,
    pub peak_rss_mb: f64,
    pub params: usize,
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`; 0 elsewhere).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

pub fn bench_train(config: &Path, iters: usize, warmup: usize) -> Result<BenchReport> {
    let cfg = TrainConfig::load(config)?;
    let data_dir = prepared_data(&cfg)?;
    let meta = Meta::load(&data_dir)?;
    let m = model_config(&cfg, &meta, &data_dir.join("tokenizer.json"))?;
    let (b, t, accum) = (cfg.train.batch_size, m.block_size, cfg.train.grad_accum);
    let mut batcher = Batcher::new(
        TokenFile::open(&data_dir.join("train.bin"), &meta.dtype)?,
        b,
        t,
        cfg.train.seed,
    )?;
    let params = crate::models::gpt::init_params(&m, cfg.train.seed);
    let mut backend = make_backend(&cfg, &m, &params)?;
    let mut opt = AdamW::new(
        params.len(),
        cfg.train.beta1,
        cfg.train.beta2,
        cfg.train.eps,
        cfg.train.weight_decay,
        decay_ranges(&m),
    );
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let mut times = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        let ts = Instant::now();
        backend.zero_grad();
        for _ in 0..accum {
            batcher.next_batch(&mut x, &mut y);
            backend.forward_backward(&x, &y, b, t, 1.0 / accum as f32)?;
        }
        let (p, g) = backend.params_and_grads();
        clip_grad_norm(g, cfg.train.grad_clip);
        opt.update(p, g, cfg.lr_at(i));
        backend.params_updated()?;
        if i >= warmup {
            times.push(ts.elapsed().as_secs_f64());
        }
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = if times.is_empty() {
        f64::NAN
    } else {
        times[times.len() / 2]
    };
    let tokens = b * t * accum;
    Ok(BenchReport {
        backend: backend.name().to_string(),
        iters,
        warmup,
        threads: rayon::current_num_threads(),
        tokens_per_step: tokens,
        step_ms_median: median * 1e3,
        tokens_per_sec: tokens as f64 / median,
        peak_rss_mb: peak_rss_mb(),
        params: m.num_params(),
    })
}
