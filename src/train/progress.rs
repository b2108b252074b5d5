//! What every training loop (language model, sequence-to-sequence, fine-tuning) shares besides
//! its step: the events it reports, the stop flag a Ctrl-C sets, and the run's clock against its
//! time limit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// What a run reports as it goes, the same for every trainer: each event carries the JSON line
/// `--json` prints (if any) and what a progress bar shows.
#[derive(Debug, Clone)]
pub enum Event {
    /// The run is ready: steps `done + 1..=end` follow; `text` says what trains on what.
    Start {
        done: usize,
        end: usize,
        text: String,
        json: Option<String>,
    },
    /// A finished step: the bar's position and message.
    Step {
        step: usize,
        status: String,
        json: Option<String>,
    },
    /// A line above the bar (an evaluation, a checkpoint).
    Note {
        text: Option<String>,
        json: Option<String>,
    },
    /// The run's summary.
    Done { text: String, json: String },
}

impl Event {
    /// The JSON line of the event, if it has one.
    pub fn json(&self) -> Option<&str> {
        match self {
            Event::Start { json, .. } | Event::Step { json, .. } | Event::Note { json, .. } => {
                json.as_deref()
            }
            Event::Done { json, .. } => Some(json),
        }
    }
}

/// A record as one JSON line (the trainers' records always serialize).
pub fn json_line(x: &impl serde::Serialize) -> String {
    serde_json::to_string(x).expect("a training record serializes")
}

/// Set by the signal handler once `stop_on_ctrl_c` was called: every loop saves and stops at the
/// end of its current step.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Set by `stop_on_ctrl_c`: the first signal requests a stop instead of ending the process.
static GRACEFUL: AtomicBool = AtomicBool::new(false);

/// Whether a stop was requested (Ctrl-C).
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Makes Ctrl-C (and SIGTERM, SIGHUP) request a stop instead of ending the process; a second
/// signal ends it as [`handle_signals`] does.
pub fn stop_on_ctrl_c() {
    GRACEFUL.store(true, Ordering::SeqCst);
    handle_signals();
}

/// Installs the process's signal handler (once): on SIGINT, SIGTERM or SIGHUP the temporary
/// files and folders being written are removed (`error::remove_temp_paths`) and the process
/// exits with 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM), unless a trainer
/// asked for a graceful stop with [`stop_on_ctrl_c`] and this is the first signal.
pub fn handle_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) else {
            return;
        };
        std::thread::spawn(move || {
            for sig in signals.forever() {
                if GRACEFUL.load(Ordering::SeqCst) && !STOP.swap(true, Ordering::SeqCst) {
                    continue;
                }
                crate::error::remove_temp_paths();
                std::process::exit(128 + sig);
            }
        });
    });
}

/// The wall time of a run, counting the earlier sessions of a resumed run, against an optional
/// limit.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    before: f64,
    limit: f64,
}

impl Clock {
    /// Starts now, after `before` seconds of earlier sessions; `limit_s` ≤ 0 means no limit.
    pub fn new(before: f64, limit_s: f64) -> Self {
        let (start, limit) = (Instant::now(), limit_s.max(0.0));
        Clock {
            start,
            before,
            limit,
        }
    }

    /// Seconds so far, earlier sessions included.
    pub fn elapsed(&self) -> f64 {
        self.before + self.start.elapsed().as_secs_f64()
    }

    /// The share of the time limit used (0 without a limit).
    pub fn fraction(&self) -> f64 {
        if self.limit > 0.0 {
            self.elapsed() / self.limit
        } else {
            0.0
        }
    }

    /// Whether the time limit is reached.
    pub fn expired(&self) -> bool {
        self.limit > 0.0 && self.elapsed() >= self.limit
    }
}
