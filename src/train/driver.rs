//! The one training loop that language-model, sequence-to-sequence and fine-tuning runs share:
//! it steps until the end, the time limit, a pause or Ctrl-C; takes each step's learning rate from
//! the schedule; clips and applies AdamW over the flat parameters; and hands each finished step
//! to the task, which logs, evaluates and saves. The metrics file is shared as well.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::train::optim::{clip_scale, global_norm, AdamW, Schedule};
use crate::train::progress::{stop_requested, Clock};

/// Why a run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The last step of the run.
    End,
    TimeLimit,
    /// Ctrl-C.
    Interrupted,
    /// The step the run was asked to pause at (it resumes later).
    Paused,
}

impl Stop {
    /// The name the fine-tuning `done` event gives it.
    pub fn name(self) -> &'static str {
        match self {
            Stop::End => "max_steps",
            Stop::TimeLimit => "time_limit",
            Stop::Interrupted => "interrupted",
            Stop::Paused => "paused",
        }
    }
}

/// The steps of a run and how each updates the parameters.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Steps in all (the run ends after step `end`).
    pub end: usize,
    /// Stop (to resume later) once this many steps are done.
    pub pause_at: Option<usize>,
    pub clock: Clock,
    pub schedule: Schedule,
    /// Clip the gradients' global norm to this (0: no clipping).
    pub grad_clip: f64,
}

impl Plan {
    /// Why the run stops with `done` steps done, if it does.
    pub fn stop_at(&self, done: usize) -> Option<Stop> {
        if done >= self.end {
            Some(Stop::End)
        } else if self.clock.expired() {
            Some(Stop::TimeLimit)
        } else if stop_requested() {
            Some(Stop::Interrupted)
        } else if self.pause_at.is_some_and(|p| done >= p) {
            Some(Stop::Paused)
        } else {
            None
        }
    }
}

/// A finished optimizer step, as the loop hands it to the task.
#[derive(Debug, Clone, Copy)]
pub struct Update {
    /// Steps done, this one included.
    pub step: usize,
    pub lr: f64,
    /// The gradients' global norm before clipping.
    pub grad_norm: f64,
    /// Seconds the step took (forward, backward, update).
    pub secs: f64,
    /// Set on the session's last step.
    pub stop: Option<Stop>,
}

/// What a trainer does inside the loop.
pub trait Run {
    /// What a step's forward and backward report (its loss, its batch's size).
    type Stats;
    /// Forward and backward of update `step` (0-based): gradients into `params_and_grads().1`.
    fn forward_backward(&mut self, step: usize) -> Result<Self::Stats>;
    /// The flat parameters AdamW updates and their gradients.
    fn params_and_grads(&mut self) -> (&mut [f32], &[f32]);
    /// The gradients' global L2 norm (clipping scales by it).
    fn grad_norm(&mut self) -> Result<f64> {
        Ok(global_norm(self.params_and_grads().1))
    }
    /// Called after AdamW wrote `params_and_grads().0`.
    fn params_updated(&mut self) -> Result<()> {
        Ok(())
    }
    /// Logging, evaluation and saving after step `u.step`; `opt` is the state a checkpoint saves.
    fn after_step(&mut self, stats: Self::Stats, u: &Update, opt: &AdamW) -> Result<()>;
}

/// Runs `task` from `start` steps done until `plan` stops it; returns the steps done and why it
/// stopped. The stop is checked before the first step and then after each step, so that the
/// task sees it in `after_step` (and saves): a stop requested while `after_step` runs takes
/// effect at the end of the next step.
pub fn run<T: Run>(
    task: &mut T,
    opt: &mut AdamW,
    plan: &Plan,
    start: usize,
) -> Result<(usize, Stop)> {
    let mut step = start;
    if let Some(stop) = plan.stop_at(step) {
        return Ok((step, stop));
    }
    loop {
        let t0 = Instant::now();
        let lr = plan.schedule.lr(step, plan.clock.fraction());
        let stats = task.forward_backward(step)?;
        let grad_norm = task.grad_norm()?;
        let (p, g) = task.params_and_grads();
        opt.update_scaled(p, g, lr, clip_scale(grad_norm, plan.grad_clip));
        task.params_updated()?;
        step += 1;
        let stop = plan.stop_at(step);
        let u = Update {
            step,
            lr,
            grad_norm,
            secs: t0.elapsed().as_secs_f64(),
            stop,
        };
        task.after_step(stats, &u, opt)?;
        if let Some(stop) = stop {
            return Ok((step, stop));
        }
    }
}

/// `metrics.jsonl`: one JSON object a line, appended on `write`.
pub struct Metrics {
    path: PathBuf,
    pending: String,
    /// Whether the next write replaces the file (a fresh run) rather than continuing it.
    replace: bool,
}

impl Metrics {
    /// The metrics file in `dir`: continued when `keep` (a resumed run), else replaced on the
    /// first write.
    pub fn open(dir: &Path, keep: bool) -> Self {
        Metrics {
            path: dir.join("metrics.jsonl"),
            pending: String::new(),
            replace: !keep,
        }
    }

    /// Adds a line (written on the next `write`).
    pub fn push(&mut self, line: &impl Serialize) -> Result<()> {
        let s = serde_json::to_string(line).map_err(|e| Error::Invalid(e.to_string()))?;
        self.pending.push_str(&s);
        self.pending.push('\n');
        Ok(())
    }

    /// Writes the lines pushed since the last write.
    pub fn write(&mut self) -> Result<()> {
        let io = |e| Error::io(&self.path, e);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(!self.replace)
            .write(true)
            .truncate(self.replace)
            .open(&self.path)
            .map_err(io)?;
        f.write_all(self.pending.as_bytes()).map_err(io)?;
        self.pending.clear();
        self.replace = false;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::optim::Decay;

    /// One parameter; records the stop each `after_step` sees, and spends `slow_s` seconds in
    /// the first one.
    struct Probe {
        p: Vec<f32>,
        g: Vec<f32>,
        seen: Vec<Option<Stop>>,
        slow_s: f64,
    }

    impl Run for Probe {
        type Stats = ();
        fn forward_backward(&mut self, _: usize) -> Result<()> {
            self.g[0] = 1.0;
            Ok(())
        }
        fn params_and_grads(&mut self) -> (&mut [f32], &[f32]) {
            (&mut self.p, &self.g)
        }
        fn after_step(&mut self, _: (), u: &Update, _: &AdamW) -> Result<()> {
            if self.seen.is_empty() {
                std::thread::sleep(std::time::Duration::from_secs_f64(self.slow_s));
            }
            self.seen.push(u.stop);
            Ok(())
        }
    }

    /// A time limit that runs out while `after_step` works is seen by the task after the next
    /// step (where a trainer saves), not silently at the top of the loop.
    #[test]
    fn a_stop_during_after_step_reaches_the_next_after_step() {
        let mut task = Probe {
            p: vec![0.0],
            g: vec![0.0],
            seen: Vec::new(),
            slow_s: 0.3,
        };
        let plan = Plan {
            end: 100,
            pause_at: None,
            clock: Clock::new(0.0, 0.2),
            schedule: Schedule {
                peak: 1e-3,
                warmup: 0,
                warmup_div: 1,
                decay: Decay::InverseSqrt,
            },
            grad_clip: 0.0,
        };
        let mut opt = AdamW::new(1, 0.9, 0.99, 1e-8, 0.0, vec![]);
        let (steps, stop) = run(&mut task, &mut opt, &plan, 0).unwrap();
        assert_eq!((steps, stop), (2, Stop::TimeLimit));
        assert_eq!(task.seen, vec![None, Some(Stop::TimeLimit)]);
    }
}
