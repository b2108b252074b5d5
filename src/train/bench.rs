//! `decodex bench train`: the median training throughput of full optimizer steps (forward,
//! backward, clipping, AdamW) on real batches of the config's data, after a warm-up.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::data::{Batcher, Meta, TokenFile};
use crate::error::Result;
use crate::kernels::Precision;
use crate::kernels::{matmul_with, Op};
use crate::train::backend::Backend;
use crate::train::config::TrainConfig;
use crate::train::driver::{self, Plan, Run, Update};
use crate::train::optim::{decay_ranges, AdamW};
use crate::train::progress::Clock;
use crate::train::trainer::{accumulate, make_backend, model_config, prepared_data};

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
    /// Training FLOPs per step by nanoGPT's estimate (PaLM appendix B): 6N + 12·L·nh·hs·T per
    /// token, N without the position embedding.
    pub flops_per_step: f64,
    pub achieved_gflops: f64,
    /// This machine's matmul peak at the config's precision, measured here (best of 5 square
    /// 2048³ products on the same threads).
    pub matmul_peak_gflops: f64,
    /// Model FLOPs utilisation: achieved / measured matmul peak.
    pub mfu: f64,
}

/// Measured matmul throughput (GFLOP/s) at `precision` on rayon's pool: the best of five
/// 2048 x 2048 x 2048 products, after two warm-up products, through the kernels training uses.
pub fn matmul_peak_gflops(precision: Precision) -> f64 {
    let n = 2048;
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0.0f32; n * n];
    let mut best = f64::INFINITY;
    for i in 0..7 {
        let t0 = Instant::now();
        matmul_with(
            precision,
            (n, n, n),
            &mut c,
            false,
            Op::N(&a),
            Op::N(&b),
            1.0,
        );
        if i >= 2 {
            best = best.min(t0.elapsed().as_secs_f64());
        }
    }
    std::hint::black_box(&c);
    2.0 * (n * n * n) as f64 / best / 1e9
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

/// Timed optimizer steps inside the training loop; the first `warmup` are not recorded.
struct Bench<'a> {
    backend: &'a mut dyn Backend,
    batcher: Batcher,
    batch: (Vec<u32>, Vec<u32>),
    /// (B, T, micro-batches per step).
    shape: (usize, usize, usize),
    warmup: usize,
    /// Seconds of each recorded step.
    times: Vec<f64>,
}

impl Run for Bench<'_> {
    type Stats = ();

    fn forward_backward(&mut self, _step: usize) -> Result<()> {
        accumulate(self.backend, &mut self.batcher, &mut self.batch, self.shape).map(|_| ())
    }

    fn params_and_grads(&mut self) -> (&mut [f32], &[f32]) {
        let (p, g) = self.backend.params_and_grads();
        (p, g)
    }

    fn params_updated(&mut self) -> Result<()> {
        self.backend.params_updated()
    }

    fn after_step(&mut self, _: (), u: &Update, _: &AdamW) -> Result<()> {
        if u.step > self.warmup {
            self.times.push(u.secs);
        }
        Ok(())
    }
}

pub fn bench_train(config: &Path, iters: usize, warmup: usize) -> Result<BenchReport> {
    let cfg = TrainConfig::load(config)?;
    let data_dir = prepared_data(&cfg)?;
    let meta = Meta::load(&data_dir)?;
    let m = model_config(&cfg, &meta, &data_dir.join("tokenizer.json"))?;
    let (b, t, accum) = (cfg.train.batch_size, m.block_size, cfg.train.grad_accum);
    let batcher = Batcher::new(
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
    let plan = Plan {
        end: warmup + iters,
        pause_at: None,
        clock: Clock::new(0.0, 0.0),
        schedule: cfg.schedule(),
        grad_clip: cfg.train.grad_clip,
    };
    let mut run = Bench {
        backend: backend.as_mut(),
        batcher,
        batch: (Vec::new(), Vec::new()),
        shape: (b, t, accum),
        warmup,
        times: Vec::with_capacity(iters),
    };
    driver::run(&mut run, &mut opt, &plan, 0)?;
    let mut times = run.times;
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = if times.is_empty() {
        f64::NAN
    } else {
        times[times.len() / 2]
    };
    let tokens = b * t * accum;
    let n_params = (m.num_params() - m.block_size * m.n_embd) as f64;
    let flops_per_token = 6.0 * n_params + 12.0 * (m.n_layer * m.n_embd * t) as f64;
    let flops_per_step = flops_per_token * tokens as f64;
    let achieved = flops_per_step / median / 1e9;
    let rss = peak_rss_mb(); // before the matmul probe below allocates its matrices
    let peak = matmul_peak_gflops(cfg.train.precision);
    Ok(BenchReport {
        backend: backend.name().to_string(),
        iters,
        warmup,
        threads: rayon::current_num_threads(),
        tokens_per_step: tokens,
        step_ms_median: median * 1e3,
        tokens_per_sec: tokens as f64 / median,
        peak_rss_mb: rss,
        params: m.num_params(),
        flops_per_step,
        achieved_gflops: achieved,
        matmul_peak_gflops: peak,
        mfu: achieved / peak,
    })
}
