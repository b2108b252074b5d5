//! The command-line contract scripts rely on: each subcommand runs end to end on a tiny model
//! and prints the documented JSON fields.

mod common;

use common::decodex;
use serde_json::Value;

fn json_lines(out: &std::process::Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect()
}

#[test]
fn train_generate_export_plot_bench_end_to_end() {
    let d = tempfile::tempdir().unwrap();
    let cfg = common::write_config(d.path(), "tiny.toml", "", "", &[]);
    let run = d.path().join("run");
    let (cfg_s, run_s) = (cfg.to_str().unwrap(), run.to_str().unwrap());

    // --max-iters 12 stops after step 12; the last step carries val_loss.
    let lines = json_lines(&decodex(&[
        "train",
        "--config",
        cfg_s,
        "--out",
        run_s,
        "--max-iters",
        "12",
        "--json",
    ]));
    let steps: Vec<&Value> = lines.iter().filter(|l| l.get("step").is_some()).collect();
    assert_eq!(steps.len(), 12);
    for s in &steps {
        assert!(s["train_loss"].is_number() && s["lr"].is_number());
    }
    assert!(steps.last().unwrap()["val_loss"].is_number());
    assert!(steps[9]["val_loss"].is_number()); // eval_interval 10
    assert!(steps[4].get("val_loss").is_none());
    // The learning rate at step 12 is the schedule's (max_iters 40), not one rescaled to 12.
    let lr12 = steps[11]["lr"].as_f64().unwrap();
    assert!(lr12 > 2e-3, "lr at step 12 was {lr12}");
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "optimizer.safetensors",
        "trainer_state.json",
        "metrics.jsonl",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }

    let g = json_lines(&decodex(&[
        "generate",
        "--model",
        run_s,
        "--prompt",
        "To be",
        "--max-new-tokens",
        "20",
        "--json",
    ]));
    assert_eq!(g.len(), 1);
    assert!(g[0]["text"].is_string());
    assert_eq!(g[0]["tokens"].as_array().unwrap().len(), 20);

    // Perplexity on a slice of the training text (every char is in the vocabulary).
    let text = d.path().join("eval.txt");
    let corpus = std::fs::read_to_string(d.path().join("c.txt")).unwrap();
    std::fs::write(&text, corpus.chars().take(2000).collect::<String>()).unwrap();
    let p = json_lines(&decodex(&[
        "eval",
        "perplexity",
        "--model",
        run_s,
        "--text-file",
        text.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(p.len(), 1);
    assert!(p[0]["perplexity"].as_f64().unwrap() > 1.0);
    assert!(p[0]["bits_per_byte"].as_f64().unwrap() > 0.0);

    let hf = d.path().join("hf");
    json_lines(&decodex(&[
        "export",
        "--model",
        run_s,
        "--format",
        "hf",
        "--out",
        hf.to_str().unwrap(),
        "--json",
    ]));
    assert!(hf.join("model.safetensors").exists() && !hf.join("optimizer.safetensors").exists());
    // The export loads back and generates the same greedy text.
    let a = json_lines(&decodex(&[
        "generate",
        "--model",
        run_s,
        "--prompt",
        "To",
        "--greedy",
        "--max-new-tokens",
        "10",
        "--json",
    ]));
    let b = json_lines(&decodex(&[
        "generate",
        "--model",
        hf.to_str().unwrap(),
        "--prompt",
        "To",
        "--greedy",
        "--max-new-tokens",
        "10",
        "--json",
    ]));
    assert_eq!(a[0]["tokens"], b[0]["tokens"]);

    for ext in ["png", "svg"] {
        let plot = d.path().join(format!("loss.{ext}"));
        let metrics = run.join("metrics.jsonl");
        json_lines(&decodex(&[
            "plot",
            metrics.to_str().unwrap(),
            "--out",
            plot.to_str().unwrap(),
            "--json",
        ]));
        assert!(std::fs::metadata(&plot).unwrap().len() > 1000);
    }

    let bench = json_lines(&decodex(&[
        "bench", "train", "--config", cfg_s, "--iters", "3", "--warmup", "1", "--json",
    ]));
    assert!(bench[0]["tokens_per_sec"].as_f64().unwrap() > 0.0);
    assert!(bench[0]["peak_rss_mb"].as_f64().unwrap() > 0.0);
}

#[test]
fn tokenizer_and_data_commands() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("c.txt");
    std::fs::write(&corpus, common::small_corpus()).unwrap();
    let tok = d.path().join("bpe.json");
    let t = json_lines(&decodex(&[
        "tokenizer",
        "train",
        "--input",
        corpus.to_str().unwrap(),
        "--kind",
        "bpe",
        "--vocab-size",
        "300",
        "--out",
        tok.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(t[0]["vocab_size"], 300);
    let e = json_lines(&decodex(&[
        "tokenizer",
        "encode",
        "--tokenizer",
        tok.to_str().unwrap(),
        "--text",
        "the king",
        "--json",
    ]));
    assert!(e[0]["tokens"].as_u64().unwrap() >= 2);
    let out = d.path().join("prepared");
    let p = json_lines(&decodex(&[
        "data",
        "prepare",
        "--input",
        corpus.to_str().unwrap(),
        "--tokenizer",
        "char",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]));
    let (tr, va) = (
        p[0]["train_tokens"].as_u64().unwrap(),
        p[0]["val_tokens"].as_u64().unwrap(),
    );
    assert!(tr > 8 * va && va > 0);
    // u16 tokens: two bytes each.
    assert_eq!(
        std::fs::metadata(out.join("train.bin")).unwrap().len(),
        2 * tr
    );
}

/// Ctrl-C (SIGINT) stops the run at the end of the current step and writes a checkpoint that
/// `--resume` continues.
#[test]
fn interrupt_writes_a_checkpoint() {
    use std::io::BufRead;
    let d = tempfile::tempdir().unwrap();
    let cfg = common::write_config(
        d.path(),
        "tiny.toml",
        "",
        "",
        &[("max_iters = 40", "max_iters = 1000000")],
    );
    let run = d.path().join("run");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_decodex"))
        .args([
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--json",
        ])
        .env("DECODEX_CACHE", common::init_cache())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["step"].as_u64() == Some(5) {
            break;
        }
    }
    let ok = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let rest: Vec<Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    assert!(child.wait().unwrap().success());
    let done = rest.last().unwrap();
    assert_eq!(done["summary"]["interrupted"], true);
    let step = done["summary"]["step"].as_u64().unwrap();
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("trainer_state.json")).unwrap())
            .unwrap();
    assert_eq!(state["step"].as_u64().unwrap(), step);
    let resumed = json_lines(&decodex(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--resume",
        "--max-iters",
        &(step + 2).to_string(),
        "--json",
    ]));
    assert_eq!(
        resumed.iter().filter(|l| l.get("step").is_some()).count(),
        2
    );
}
