//! `decodex serve`: the OpenAI HTTP API over a loaded decoder (and optionally a sentence
//! encoder), on axum and tokio. The decoding runs on one engine thread with continuous
//! batching (`engine`); the HTTP side renders chat templates, tokenizes, validates, queues
//! jobs and turns their events into responses or server-sent events.

pub mod api;
pub mod bench;
mod check;
pub mod engine;
mod http;
pub mod metrics;
mod stream;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::models::pretrained::Pretrained;
use crate::search::embed::Embedder;

/// How the server runs (the flags of `decodex serve`).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    /// 0: any free port (the address is passed to `on_ready`).
    pub port: u16,
    /// Decoding slots: sequences decoded at once.
    pub parallel: usize,
    /// Positions per sequence (prompt + reply); at most the model's context.
    pub ctx_size: Option<usize>,
    /// Requests must carry `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Sequences that may wait for a slot; past that, 429.
    pub max_queue: usize,
    /// The longest a request may take before it is answered 504 (0: no limit), and how long a
    /// connection may stay idle.
    pub timeout_s: u64,
    /// The largest request body, in bytes.
    pub max_body: usize,
    /// The id `GET /v1/models` names (the model file's stem by default).
    pub model_id: String,
}

/// What every handler shares.
pub(crate) struct Shared {
    pub model: Arc<Pretrained>,
    pub embedder: Option<Arc<dyn Embedder>>,
    pub jobs: std::sync::Mutex<Option<std::sync::mpsc::Sender<engine::Job>>>,
    pub load: Arc<engine::Load>,
    pub metrics: Arc<metrics::Metrics>,
    pub opts: ServeOptions,
    /// Positions per sequence.
    pub context: usize,
    pub created: u64,
}

/// Serves until `stop()` turns true (checked ten times a second) or the listener fails; calls
/// `on_ready` with the bound address first. In-flight requests end before it returns.
pub fn serve(
    model: Pretrained,
    embedder: Option<Box<dyn Embedder>>,
    opts: ServeOptions,
    stop: fn() -> bool,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<()> {
    let context = opts.ctx_size.unwrap_or(usize::MAX).min(model.context_len());
    if context < 2 {
        return Err(Error::Invalid("--ctx-size must be at least 2".into()));
    }
    let model = Arc::new(model);
    let load = Arc::new(engine::Load::default());
    let metrics = Arc::new(metrics::Metrics::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let engine = {
        let (model, load, metrics) = (model.clone(), load.clone(), metrics.clone());
        let parallel = opts.parallel;
        std::thread::Builder::new()
            .name("decodex-engine".into())
            .spawn(move || engine::run(&model, rx, parallel, context, &load, &metrics))
            .map_err(|e| Error::Invalid(format!("cannot start the engine thread: {e}")))?
    };
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let shared = Arc::new(Shared {
        model,
        embedder: embedder.map(Arc::from),
        jobs: std::sync::Mutex::new(Some(tx)),
        load,
        metrics,
        opts: opts.clone(),
        context,
        created,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start the HTTP runtime: {e}")))?;
    let addr = format!("{}:{}", opts.host, opts.port);
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|e| Error::Invalid(format!("cannot listen on {addr}: {e}")))?;
        let bound = listener
            .local_addr()
            .map_err(|e| Error::Invalid(format!("cannot listen on {addr}: {e}")))?;
        on_ready(bound);
        let app = http::router(shared.clone());
        let shutdown = async move {
            while !stop() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| Error::Invalid(format!("the server failed: {e}")))
    });
    // No more jobs: the engine ends when it has finished those it holds.
    shared.jobs.lock().unwrap().take();
    drop(shared);
    let _ = engine.join();
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

impl Shared {
    /// Queues `jobs` (the choices of one request), or refuses them all when the queue cannot
    /// take them.
    pub(crate) fn submit(
        &self,
        jobs: Vec<engine::Job>,
    ) -> std::result::Result<(), check::ApiError> {
        let n = jobs.len();
        let waiting = self.load.waiting.fetch_add(n, Ordering::SeqCst);
        let free = self
            .opts
            .parallel
            .saturating_sub(self.load.busy.load(Ordering::SeqCst));
        if waiting + n > self.opts.max_queue + free {
            self.load.waiting.fetch_sub(n, Ordering::SeqCst);
            self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(check::ApiError::busy());
        }
        let guard = self.jobs.lock().unwrap();
        let Some(tx) = guard.as_ref() else {
            self.load.waiting.fetch_sub(n, Ordering::SeqCst);
            return Err(check::ApiError::shutting_down());
        };
        for job in jobs {
            if tx.send(job).is_err() {
                self.load.waiting.fetch_sub(1, Ordering::SeqCst);
                return Err(check::ApiError::shutting_down());
            }
        }
        Ok(())
    }
}
