//! Continuous batching: one thread owns the model and runs its forward passes; every request
//! decodes in a slot of its own (its one-row KV cache, context, random generator and text
//! stream), and all the slots that have work share each pass (`Decoder::step_many`). Requests
//! join between passes, up to `parallel` slots; a prompt goes in pieces under a token budget per
//! pass, so that a long prompt does not hold the others' tokens back. A slot whose client has
//! gone (its event receiver dropped) is freed at the next pass.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc::UnboundedSender;

use super::metrics::Metrics;
use crate::decode::processors::{choose, log_softmax};
use crate::decode::{process_logits, reply_text, Cache, SamplingConfig, Strategy, TextStream};
use crate::models::pretrained::Pretrained;

/// Prompt tokens one pass takes in all (llama.cpp's micro-batch); decoding slots' single tokens
/// come first, prompts share the rest, at least `MIN_PREFILL` of it.
const PASS_TOKENS: usize = 512;
const MIN_PREFILL: usize = 64;

/// One sequence to decode.
pub struct Job {
    pub prompt: Vec<u32>,
    pub sampling: SamplingConfig,
    pub strategy: Strategy,
    pub max_new: usize,
    pub stop: Vec<String>,
    /// Report each token's log-probability, with this many alternatives.
    pub top_logprobs: Option<usize>,
    /// The job's place among its request's (choices), sent with each of its events.
    pub index: usize,
    pub events: UnboundedSender<(usize, Event)>,
    /// When its request came (time to first token counts from here).
    pub arrived: Instant,
}

impl Job {
    /// Sends an event with the job's index; a client that has gone is noticed at the next pass.
    fn send(&self, e: Event) {
        let _ = self.events.send((self.index, e));
    }
}

/// Why a sequence ended, as the OpenAI API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An EOS token or a stop string.
    Stop,
    /// `max_tokens`, or the context is full.
    Length,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

/// What a job sends back as it decodes.
#[derive(Debug, Clone)]
pub enum Event {
    /// A generated token: the text it completes (empty while held back: a character that
    /// continues in the next token, or what may grow into a stop string) and, when asked, its
    /// log-probability and the best alternatives.
    Token {
        id: u32,
        delta: String,
        logprob: Option<(f32, Vec<(u32, f32)>)>,
    },
    /// The end: the text held back until now, why, and the token counts.
    Done {
        tail: String,
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(String),
}

/// A job in decoding.
struct Slot<'m> {
    job: Job,
    cache: Cache,
    /// Prompt and generated tokens.
    context: Vec<u32>,
    /// Prompt tokens fed so far.
    fed: usize,
    generated: Vec<u32>,
    rng: ChaCha8Rng,
    text: TextStream<'m>,
    /// The tokens the next pass feeds.
    feed: Vec<u32>,
    started: Instant,
    last_token: Option<Instant>,
}

/// Counts shared with the HTTP side: jobs sent but not yet in a slot, and slots busy.
#[derive(Default)]
pub struct Load {
    pub waiting: AtomicUsize,
    pub busy: AtomicUsize,
}

/// Runs jobs from `jobs` until every sender is gone: at most `parallel` at once, none past
/// `context` positions.
pub fn run(
    model: &Pretrained,
    jobs: Receiver<Job>,
    parallel: usize,
    context: usize,
    load: &Load,
    metrics: &Arc<Metrics>,
) {
    let dec = model.decoder();
    let mut slots: Vec<Slot> = Vec::new();
    loop {
        load.busy.store(slots.len(), Ordering::SeqCst);
        // Admit jobs while slots are free; with none busy, wait for one.
        while slots.len() < parallel.max(1) {
            let job = if slots.is_empty() {
                match jobs.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                }
            } else {
                match jobs.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            };
            load.waiting.fetch_sub(1, Ordering::SeqCst);
            if job.events.is_closed() {
                continue;
            }
            match dec.new_cache(1) {
                Ok(cache) => slots.push(Slot {
                    rng: ChaCha8Rng::seed_from_u64(job.sampling.seed),
                    text: TextStream::new(&model.tokenizer, &model.eos_ids, &job.stop, true),
                    context: job.prompt.clone(),
                    fed: 0,
                    generated: Vec::new(),
                    feed: Vec::new(),
                    cache,
                    started: job.arrived,
                    last_token: None,
                    job,
                }),
                Err(e) => {
                    let _ = job.events.send((job.index, Event::Failed(e.to_string())));
                }
            }
        }
        // Clients that left free their slots now.
        slots.retain(|s| !s.job.events.is_closed());
        load.busy.store(slots.len(), Ordering::SeqCst);
        if slots.is_empty() {
            continue;
        }
        plan(&mut slots);
        let mut feeds: Vec<(&[u32], &mut Cache)> = slots
            .iter_mut()
            .filter(|s| !s.feed.is_empty())
            .map(|s| (&s.feed[..], &mut s.cache))
            .collect();
        let logits = match dec.step_many(&mut feeds) {
            Ok(l) => l,
            Err(e) => {
                for s in slots.drain(..) {
                    s.job.send(Event::Failed(e.to_string()));
                }
                continue;
            }
        };
        let mut logits = logits.into_iter();
        let mut done = Vec::new();
        for (i, s) in slots.iter_mut().enumerate() {
            if s.feed.is_empty() {
                continue;
            }
            let row = logits.next().expect("one logits row per feed");
            if s.fed < s.job.prompt.len() {
                s.fed += s.feed.len();
                if s.fed < s.job.prompt.len() {
                    continue;
                }
            }
            if let Some(finish) = s.next_token(row, context, metrics) {
                done.push((i, finish));
            }
        }
        for (i, finish) in done.into_iter().rev() {
            let s = slots.swap_remove(i);
            s.finish(model, finish, metrics);
        }
    }
}

/// Sets each slot's feed for the next pass: its last token when decoding; else the next piece
/// of its prompt, within the pass's token budget.
fn plan(slots: &mut [Slot]) {
    let decoding = slots.iter().filter(|s| s.fed >= s.job.prompt.len()).count();
    let mut budget = PASS_TOKENS.saturating_sub(decoding).max(MIN_PREFILL);
    for s in slots.iter_mut() {
        if s.fed >= s.job.prompt.len() {
            s.feed = vec![*s.context.last().expect("a decoding slot has a token")];
        } else {
            let n = (s.job.prompt.len() - s.fed).min(budget);
            budget -= n;
            s.feed = s.job.prompt[s.fed..s.fed + n].to_vec();
        }
    }
}

impl Slot<'_> {
    /// Chooses the next token from `logits` as `decode::generate_ids` does and sends it; the
    /// reason to stop, if this token ends the sequence.
    fn next_token(
        &mut self,
        mut logits: Vec<f32>,
        context: usize,
        metrics: &Metrics,
    ) -> Option<Finish> {
        let cfg = &self.job.sampling;
        let strategy = cfg.effective_strategy(self.job.strategy);
        process_logits(
            &mut logits,
            &self.context,
            self.generated.len(),
            cfg,
            strategy,
        );
        let Some(id) = choose(&logits, strategy, &mut self.rng) else {
            let msg = "the sampling settings left no token possible".to_string();
            self.job.send(Event::Failed(msg));
            return Some(Finish::Stop);
        };
        let now = Instant::now();
        match self.last_token {
            None => metrics.first_token(now - self.started),
            Some(t) => metrics.next_token(now - t),
        }
        self.last_token = Some(now);
        let logprob = self.job.top_logprobs.map(|k| {
            let lp = log_softmax(&logits);
            let mut top: Vec<(u32, f32)> =
                (0..lp.len() as u32).map(|t| (t, lp[t as usize])).collect();
            let k = k.min(top.len());
            if k > 0 {
                top.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            }
            top.truncate(k);
            top.sort_by(|a, b| b.1.total_cmp(&a.1));
            (lp[id as usize], top)
        });
        self.generated.push(id);
        self.context.push(id);
        // The stream shows no EOS token, and says false once the text holds a stop string.
        let mut delta = Vec::new();
        let stop_text = !self.text.push(id, &mut delta);
        let delta = String::from_utf8_lossy(&delta).into_owned();
        self.job.send(Event::Token { id, delta, logprob });
        if self.job.sampling.eos_ids.contains(&id) || stop_text {
            Some(Finish::Stop)
        } else if self.generated.len() >= self.job.max_new || self.context.len() >= context {
            Some(Finish::Length)
        } else {
            None
        }
    }

    /// Sends the text held back and the end.
    fn finish(self, model: &Pretrained, finish: Finish, metrics: &Metrics) {
        let stop = &self.job.stop;
        let text =
            reply_text(&model.tokenizer, &model.eos_ids, &self.generated, stop).unwrap_or_default();
        let mut tail = Vec::new();
        let _ = self.text.finish(&text, &mut tail);
        metrics.finished(self.job.prompt.len(), self.generated.len());
        self.job.send(Event::Done {
            tail: String::from_utf8_lossy(&tail).into_owned(),
            finish,
            prompt_tokens: self.job.prompt.len(),
            completion_tokens: self.generated.len(),
        });
    }
}
