//! Training behaviour: resuming reproduces an uninterrupted run bit for bit, the fast path and
//! the candle autograd path train the same model, and a short run learns.

mod common;

use decodex::train::{train, Event, StepLog, TrainOptions};

fn losses(opts: &TrainOptions) -> Vec<(usize, f32, Option<f32>)> {
    let mut out = Vec::new();
    train(opts, |ev| {
        if let Event::Step {
            json: Some(line), ..
        } = ev
        {
            let l: StepLog = serde_json::from_str(line).unwrap();
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
        overwrite: false,
    });
    let split = d.path().join("split");
    let first = losses(&TrainOptions {
        config: cfg.clone(),
        out: split.clone(),
        max_iters: Some(17),
        resume: false,
        overwrite: false,
    });
    let second = losses(&TrainOptions {
        config: cfg,
        out: split,
        max_iters: None,
        resume: true,
        overwrite: false,
    });
    assert_eq!(first.len(), 17);
    assert_eq!(second.first().map(|s| s.0), Some(18));
    assert_eq!(full.len(), first.len() + second.len());
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
        overwrite: false,
    });
    let b = losses(&TrainOptions {
        config: candle_cfg,
        out: d.path().join("b"),
        max_iters: Some(10),
        resume: false,
        overwrite: false,
    });
    assert_eq!(a.len(), 10, "fast path steps");
    assert_eq!(b.len(), 10, "candle path steps");
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.0, y.0, "step numbers");
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
        overwrite: false,
    });
    let first = l.first().unwrap().1;
    let last_val = l.iter().rev().find_map(|s| s.2).unwrap();
    assert!(
        last_val < first * 0.75,
        "val loss {last_val} did not fall well below the initial {first}"
    );
    assert!(d.path().join("r/metrics.jsonl").exists());
}

/// A config over `corpus` (instead of the small corpus) with `edits` applied.
fn task_config(
    d: &std::path::Path,
    name: &str,
    corpus: &std::path::Path,
    extra_train: &str,
    edits: &[(&str, &str)],
) -> std::path::PathBuf {
    let from = format!("{:?}", d.join("c.txt"));
    let to = format!("{corpus:?}");
    let mut all = vec![(from.as_str(), to.as_str())];
    all.extend_from_slice(edits);
    common::write_config(d, name, "", extra_train, &all)
}

#[test]
fn init_from_starts_from_the_checkpoint_with_its_tokenizer() {
    let (d, cfg) = setup("", "");
    let base = d.path().join("base");
    losses(&TrainOptions {
        config: cfg,
        out: base.clone(),
        max_iters: None,
        resume: false,
        overwrite: false,
    });
    // Lower-cased text: a char tokenizer trained on it would have a smaller vocabulary.
    let task = d.path().join("task.txt");
    std::fs::write(&task, common::small_corpus().to_lowercase()).unwrap();
    // One step at a vanishing learning rate and no weight decay leaves the initial weights as
    // they were, so the saved model shows what the run started from.
    let still = [
        ("learning_rate = 3e-3", "learning_rate = 1e-30"),
        ("min_lr = 3e-4", "min_lr = 0.0"),
        ("weight_decay = 0.1", "weight_decay = 0.0"),
        ("max_iters = 40", "max_iters = 1"),
    ];
    let ft_cfg = task_config(
        d.path(),
        "ft.toml",
        &task,
        &format!("init_from = {base:?}"),
        &still,
    );
    let ft = d.path().join("ft");
    let l = losses(&TrainOptions {
        config: ft_cfg,
        out: ft.clone(),
        max_iters: None,
        resume: false,
        overwrite: false,
    });
    assert_eq!(l.len(), 1);
    let read = |dir: &std::path::Path, f: &str| std::fs::read(dir.join(f)).unwrap();
    assert_eq!(read(&ft, "tokenizer.json"), read(&base, "tokenizer.json"));
    let a = decodex::nn::tensor_io::load_tensors(&base.join("model.safetensors")).unwrap();
    let b = decodex::nn::tensor_io::load_tensors(&ft.join("model.safetensors")).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (name, (shape, data)) in &a.tensors {
        let (s, x) = &b.tensors[name];
        assert_eq!(shape, s, "{name}");
        let same = data.iter().zip(x).all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{name} is not the checkpoint's");
    }
    // The same step from a random init: a much higher loss than from the pretrained weights.
    let scratch_cfg = task_config(d.path(), "scratch.toml", &task, "", &still);
    let s = losses(&TrainOptions {
        config: scratch_cfg,
        out: d.path().join("scratch"),
        max_iters: None,
        resume: false,
        overwrite: false,
    });
    assert!(
        l[0].1 < s[0].1 - 0.3,
        "init {} vs scratch {}",
        l[0].1,
        s[0].1
    );

    // tokenizer_file alone: a random init that encodes with the given tokenizer.
    let tok = format!("tokenizer_file = {:?}", base.join("tokenizer.json"));
    let given = task_config(
        d.path(),
        "given.toml",
        &task,
        "",
        &[(
            "tokenizer = \"char\"",
            &format!("tokenizer = \"char\"\n{tok}"),
        )],
    );
    let g = d.path().join("given");
    losses(&TrainOptions {
        config: given,
        out: g.clone(),
        max_iters: Some(1),
        resume: false,
        overwrite: false,
    });
    assert_eq!(read(&g, "tokenizer.json"), read(&base, "tokenizer.json"));
    assert_ne!(
        read(&d.path().join("scratch"), "tokenizer.json"),
        read(&base, "tokenizer.json"),
        "the lower-cased text should train a different char tokenizer"
    );
}

#[test]
fn init_from_another_architecture_is_a_clear_error() {
    let (d, cfg) = setup("", "");
    let base = d.path().join("base");
    losses(&TrainOptions {
        config: cfg,
        out: base.clone(),
        max_iters: Some(2),
        resume: false,
        overwrite: false,
    });
    let wide = task_config(
        d.path(),
        "wide.toml",
        &d.path().join("c.txt"),
        &format!("init_from = {base:?}"),
        &[("n_embd = 32", "n_embd = 48")],
    );
    let err = train(
        &TrainOptions {
            config: wide,
            out: d.path().join("wide"),
            max_iters: None,
            resume: false,
            overwrite: false,
        },
        |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("config.json") && err.contains("n_embd 32") && err.contains("n_embd 48"),
        "{err}"
    );
    assert!(!d.path().join("wide/model.safetensors").exists());
}
