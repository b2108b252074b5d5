//! Training behaviour: resuming reproduces an uninterrupted run bit for bit, the fast path and
//! the candle autograd path train the same model, and a short run learns.

mod common;

use decodex::train::{train, Event, TrainOptions};

fn losses(opts: &TrainOptions) -> Vec<(usize, f32, Option<f32>)> {
    let mut out = Vec::new();
    train(opts, |ev| {
        if let Event::Step(l) = ev {
            out.push((l.step, l.train_loss, l.val_loss));
        }
    })
    .unwrap();
    out
}

fn setup(extra_model: &str, extra_train: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    common::init_cache();
    let d = tempfile::tempdir().unwrap();
    let cfg = common::write_config(d.path(), "tiny.toml", extra_model, extra_train, &[]);
    (d, cfg)
}

fn resume_is_exact(extra_model: &str, extra_train: &str) {
    let (d, cfg) = setup(extra_model, extra_train);
    let full = losses(&TrainOptions {
        config: cfg.clone(),
        out: d.path().join("full"),
        max_iters: None,
        resume: false,
    });
    let split = d.path().join("split");
    let first = losses(&TrainOptions {
        config: cfg.clone(),
        out: split.clone(),
        max_iters: Some(17),
        resume: false,
    });
    let second = losses(&TrainOptions {
        config: cfg,
        out: split,
        max_iters: None,
        resume: true,
    });
    assert_eq!(first.len(), 17);
    assert_eq!(second.first().map(|s| s.0), Some(18));
    for (a, b) in full.iter().zip(first.iter().chain(second.iter())) {
        assert_eq!(a.0, b.0);
        assert_eq!(
            a.1.to_bits(),
            b.1.to_bits(),
            "train loss of step {} differs: {} vs {}",
            a.0,
            a.1,
            b.1
        );
    }
    // The val losses of the eval steps after the resume point agree too.
    let val_full: Vec<_> = full
        .iter()
        .filter(|s| s.0 > 17)
        .filter_map(|s| s.2)
        .collect();
    let val_res: Vec<_> = second.iter().filter_map(|s| s.2).collect();
    assert_eq!(val_full, val_res);
}

#[test]
fn resume_reproduces_the_uninterrupted_run_fast_path() {
    resume_is_exact("", "");
}

#[test]
fn resume_reproduces_the_uninterrupted_run_with_dropout() {
    resume_is_exact("dropout = 0.1", "backend = \"candle\"");
}

#[test]
fn fast_and_candle_paths_train_alike() {
    let (d, fast_cfg) = setup("", "");
    let text = std::fs::read_to_string(&fast_cfg).unwrap();
    let candle_cfg = d.path().join("candle.toml");
    std::fs::write(
        &candle_cfg,
        text.replace("[train]\n", "[train]\nbackend = \"candle\"\n"),
    )
    .unwrap();
    let a = losses(&TrainOptions {
        config: fast_cfg,
        out: d.path().join("a"),
        max_iters: Some(10),
        resume: false,
    });
    let b = losses(&TrainOptions {
        config: candle_cfg,
        out: d.path().join("b"),
        max_iters: Some(10),
        resume: false,
    });
    for (x, y) in a.iter().zip(&b) {
        let rel = ((x.1 - y.1) / y.1).abs();
        assert!(rel < 1e-4, "step {}: fast {} vs candle {}", x.0, x.1, y.1);
    }
}

#[test]
fn a_short_run_learns() {
    let (d, cfg) = setup("", "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("max_iters = 40", "max_iters = 150");
    std::fs::write(&cfg, text).unwrap();
    let l = losses(&TrainOptions {
        config: cfg,
        out: d.path().join("r"),
        max_iters: None,
        resume: false,
    });
    let first = l.first().unwrap().1;
    let last_val = l.iter().rev().find_map(|s| s.2).unwrap();
    assert!(
        last_val < first * 0.75,
        "val loss {last_val} did not fall well below the initial {first}"
    );
    assert!(d.path().join("r/metrics.jsonl").exists());
}
