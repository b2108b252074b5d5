//! Sequence-to-sequence end to end through the CLI: both architectures learn a toy translation
//! (a word-for-word code with reordering), `translate` keeps empty lines, writes JSON and an
//! attention heatmap, and bad input gets one clear error line.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_clear_error, decodex};

const WORDS: [(&str, &str); 12] = [
    ("der", "the"),
    ("hund", "dog"),
    ("katze", "cat"),
    ("sieht", "sees"),
    ("mag", "likes"),
    ("rote", "red"),
    ("kleine", "small"),
    ("ball", "ball"),
    ("mann", "man"),
    ("frau", "woman"),
    ("und", "and"),
    ("haus", "house"),
];

/// Source: random words; target: their translations in reverse order (so attention must look
/// beyond the diagonal). Deterministic from `seed`.
fn toy_pairs(n: usize, seed: u64) -> (Vec<String>, Vec<String>) {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (x >> 33) as usize
    };
    let (mut src, mut tgt) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let len = 2 + next() % 4;
        let idx: Vec<usize> = (0..len).map(|_| next() % WORDS.len()).collect();
        src.push(
            idx.iter()
                .map(|&i| WORDS[i].0)
                .collect::<Vec<_>>()
                .join(" "),
        );
        tgt.push(
            idx.iter()
                .rev()
                .map(|&i| WORDS[i].1)
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    (src, tgt)
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Writes the toy corpus and a config for `model` (the `[model]` table's body) into `dir`.
fn toy_config(dir: &Path, model: &str, epochs: usize) -> PathBuf {
    let (src, tgt) = toy_pairs(2000, 1);
    let (vs, vt) = toy_pairs(40, 2);
    for (name, lines) in [
        ("train.src", &src),
        ("train.tgt", &tgt),
        ("val.src", &vs),
        ("val.tgt", &vt),
    ] {
        write_lines(&dir.join(name), lines);
    }
    let p = |n: &str| dir.join(n).display().to_string();
    let text = format!(
        r#"[data]
train = {{ src = "{}", tgt = "{}" }}
valid = {{ src = "{}", tgt = "{}" }}
vocab_size = 300

[model]
{model}

[train]
max_tokens = 256
epochs = {epochs}
learning_rate = 3e-3
warmup_steps = 30
schedule = "cosine"
min_lr = 1e-4
label_smoothing = 0.0
grad_clip = 1.0
seed = 7
log_interval = 10
"#,
        p("train.src"),
        p("train.tgt"),
        p("val.src"),
        p("val.tgt"),
    );
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

const TRANSFORMER: &str = r#"arch = "transformer-seq2seq"
d_model = 64
n_heads = 4
encoder_layers = 2
decoder_layers = 2
d_ff = 128
dropout = 0.0
max_len = 24
pre_norm = true"#;

const GRU: &str = r#"arch = "rnn-seq2seq"
cell = "gru"
attention = "bahdanau"
emb_dim = 48
enc_hidden = 48
dec_hidden = 64
attn_dim = 32
dropout = 0.0
max_len = 24"#;

fn train(dir: &Path, model: &str, epochs: usize) -> PathBuf {
    let cfg = toy_config(dir, model, epochs);
    let run = dir.join("run");
    let out = decodex(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "metrics.jsonl",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    run
}

/// Translates held-out toy sentences and returns the BLEU against their references.
fn held_out_bleu(dir: &Path, run: &Path, beam: usize) -> f64 {
    let (src, tgt) = toy_pairs(50, 3);
    write_lines(&dir.join("test.src"), &src);
    write_lines(&dir.join("test.ref"), &tgt);
    let out = decodex(&[
        "translate",
        "--model",
        run.to_str().unwrap(),
        "--input",
        dir.join("test.src").to_str().unwrap(),
        "--beam",
        &beam.to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("test.hyp"), &out.stdout).unwrap();
    let out = decodex(&[
        "eval",
        "bleu",
        "--hyp",
        dir.join("test.hyp").to_str().unwrap(),
        "--ref",
        dir.join("test.ref").to_str().unwrap(),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["bleu"].as_f64().unwrap()
}

/// Trains `model` on the toy corpus and checks greedy and beam translations of held-out pairs.
fn assert_learns(name: &str, model: &str) {
    let d = tempfile::tempdir().unwrap();
    let run = train(d.path(), model, 8);
    let greedy = held_out_bleu(d.path(), &run, 1);
    let beam = held_out_bleu(d.path(), &run, 4);
    println!("{name} toy BLEU: greedy {greedy:.1}, beam {beam:.1}");
    assert!(greedy > 80.0 && beam > 80.0, "greedy {greedy}, beam {beam}");
}

#[test]
fn transformer_learns_a_toy_translation() {
    assert_learns("transformer", TRANSFORMER);
}

#[test]
fn gru_with_attention_learns_a_toy_translation() {
    assert_learns("gru", GRU);
}

/// `decodex translate --model RUN --input INPUT --json EXTRA...`: one JSON object per line.
fn translate_json(run: &Path, input: &Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec![
        "translate",
        "--model",
        run.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = decodex(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Empty lines translate to empty lines, --json gives one object per line, the heatmap is a
/// PNG, and a source longer than max_len is an error naming its line.
#[test]
fn translate_contract_and_bad_input() {
    let d = tempfile::tempdir().unwrap();
    let run = train(d.path(), TRANSFORMER, 1);
    let input = d.path().join("in.txt");
    std::fs::write(&input, "der hund\n\n  \nkatze mag ball\n").unwrap();
    let png = d.path().join("att.png");
    let lines = translate_json(&run, &input, &["--attention-png", png.to_str().unwrap()]);
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[1]["text"], "");
    assert_eq!(lines[2]["text"], "");
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");

    // n-best from beam search, and seeded sampling, both one object per line.
    for extra in [
        &["--beam", "3", "--n-best", "3"][..],
        &["--sample", "--seed", "5"][..],
    ] {
        let v = translate_json(&run, &input, extra);
        assert_eq!(v.len(), 4);
        if extra[0] == "--beam" {
            let nbest = v[0]["nbest"].as_array().unwrap();
            assert_eq!(nbest.len(), 3);
            let scores: Vec<f64> = nbest.iter().map(|h| h["score"].as_f64().unwrap()).collect();
            assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
        }
    }

    let long = d.path().join("long.txt");
    std::fs::write(
        &long,
        format!("der hund\n{}\n", vec!["katze"; 60].join(" ")),
    )
    .unwrap();
    let out = decodex(&[
        "translate",
        "--model",
        run.to_str().unwrap(),
        "--input",
        long.to_str().unwrap(),
    ]);
    assert_clear_error(&out, &["long.txt", "line 2", "max_len"]);
}

#[test]
fn a_language_model_is_not_a_translation_model() {
    let d = tempfile::tempdir().unwrap();
    let lm = common::trained_model(d.path(), 2);
    let input = d.path().join("in.txt");
    std::fs::write(&input, "der hund\n").unwrap();
    let out = decodex(&[
        "translate",
        "--model",
        lm.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
    ]);
    assert_clear_error(&out, &["config.json", "sequence-to-sequence"]);
}

#[test]
fn misaligned_parallel_files_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let cfg = toy_config(d.path(), TRANSFORMER, 1);
    std::fs::write(d.path().join("train.tgt"), "one line only\n").unwrap();
    let run = d.path().join("run");
    let out = decodex(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_clear_error(&out, &["train.src", "train.tgt", "aligned"]);
    assert!(!run.exists());
}
