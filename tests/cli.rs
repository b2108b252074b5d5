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

/// `generate … --json` as the one JSON object it prints for one prompt.
fn generate_json(run: &std::path::Path, extra: &[&str]) -> Value {
    let mut args = vec!["generate", "--model", run.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let lines = json_lines(&decodex(&args));
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines[0].clone()
}

/// The README's `--stop "\n\n"` used to stop at a backslash followed by an n (the shell passes
/// both characters): the escapes \n, \t, \\ and \" are now the characters they stand for.
#[test]
fn stop_strings_interpret_escapes() {
    let d = tempfile::tempdir().unwrap();
    // 400 steps: long enough to have learnt line breaks.
    let edits = [("max_iters = 40", "max_iters = 400")];
    let cfg = common::write_config(d.path(), "long.toml", "", "", &edits);
    let run = d.path().join("run");
    json_lines(&decodex(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--json",
    ]));
    let greedy = [
        "--prompt",
        "MENENIUS:",
        "--greedy",
        "--max-new-tokens",
        "120",
    ];
    let free = generate_json(&run, &greedy);
    let text = free["text"].as_str().unwrap();
    let line = text
        .find('\n')
        .map(|i| &text[..i])
        .unwrap_or_else(|| panic!("the greedy text has no line break to stop at: {text:?}"));
    let mut stopped = greedy.to_vec();
    stopped.extend(["--stop", r"\n"]);
    let g = generate_json(&run, &stopped);
    assert_eq!(g["text"], line, "cut before the first line break");
    assert_eq!(g["stopped_by"], "stop:\n");
    // An escape that means nothing is refused before the model loads.
    let out = decodex(&[
        "generate",
        "--model",
        "/nonexistent",
        "--prompt",
        "a",
        "--stop",
        r"\q",
    ]);
    common::assert_clear_error(&out, &["--stop-strings", r"unknown escape \q"]);
}

/// A 200,000-character prompt could not be passed (one argument is limited to 128 KiB):
/// `--prompt-file PATH` reads it from a file, `--prompt-file -` from stdin.
#[test]
fn prompt_file_takes_prompts_longer_than_an_argument() {
    let d = tempfile::tempdir().unwrap();
    let run = common::trained_model(d.path(), 5);
    let long: String = common::small_corpus()
        .chars()
        .cycle()
        .take(200_000)
        .collect();
    let file = d.path().join("prompt.txt");
    std::fs::write(&file, format!("{long}\n")).unwrap();
    let flags = ["--greedy", "--max-new-tokens", "4"];
    let mut args = vec!["--prompt-file", file.to_str().unwrap()];
    args.extend(flags);
    let from_file = generate_json(&run, &args);
    // The final newline is dropped: 200,000 characters, one token each.
    assert_eq!(from_file["prompt_tokens"], 200_000);
    let mut stdin_args = vec!["generate", "--model", run.to_str().unwrap(), "--json"];
    stdin_args.extend(["--prompt-file", "-"]);
    stdin_args.extend(flags);
    let from_stdin = json_lines(&common::decodex_stdin(&stdin_args, &long));
    assert_eq!(from_stdin[0]["tokens"], from_file["tokens"]);
    // A short prompt gives the same as --prompt.
    std::fs::write(&file, "ROMEO:").unwrap();
    let mut a = vec!["--prompt-file", file.to_str().unwrap()];
    a.extend(flags);
    let mut b = vec!["--prompt", "ROMEO:"];
    b.extend(flags);
    assert_eq!(
        generate_json(&run, &a)["tokens"],
        generate_json(&run, &b)["tokens"]
    );
    // Exactly one of the two.
    let both = decodex(&[
        "generate",
        "--model",
        run.to_str().unwrap(),
        "--prompt",
        "a",
        "--prompt-file",
        file.to_str().unwrap(),
    ]);
    common::assert_clear_error(&both, &["--prompt", "--prompt-file"]);
}

/// `generate --json` used to report one `tokens_per_sec` that counted the prompt's time, and
/// text mode no speed: the prompt and the generation are now timed apart, and text mode ends
/// with a one-line summary on stderr.
#[test]
fn generate_reports_prompt_and_generation_speed_apart() {
    let d = tempfile::tempdir().unwrap();
    let run = common::trained_model(d.path(), 5);
    let g = generate_json(
        &run,
        &["--prompt", "ROMEO:", "--greedy", "--max-new-tokens", "8"],
    );
    assert!(g.get("tokens_per_sec").is_none(), "{g}");
    assert_eq!(g["prompt_tokens"], 6);
    assert_eq!(g["new_tokens"], 8);
    for f in [
        "prompt_seconds",
        "prompt_tokens_per_sec",
        "generation_seconds",
        "generation_tokens_per_sec",
    ] {
        assert!(g[f].as_f64().is_some_and(|x| x > 0.0), "{f}: {g}");
    }
    let out = decodex(&[
        "generate",
        "--model",
        run.to_str().unwrap(),
        "--prompt",
        "ROMEO:",
        "--greedy",
        "--max-new-tokens",
        "8",
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout, format!("ROMEO:{}\n", g["text"].as_str().unwrap()));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("prompt: 6 tokens, ") && stderr.contains("; generation: 8 tokens, "),
        "{stderr}"
    );
}

/// `generate` used to print the prompt, then fail: a run that fails leaves stdout empty.
#[test]
fn generate_prints_nothing_before_a_failure() {
    let d = tempfile::tempdir().unwrap();
    let run = common::trained_model(d.path(), 5);
    let vocab = decodex::tokenizer::Tokenizer::from_file(&run.join("tokenizer.json"))
        .unwrap()
        .vocab_size();
    // Every token suppressed: the first step has nothing to choose.
    let ids: Vec<String> = (0..vocab).map(|i| i.to_string()).collect();
    let mut args = vec![
        "generate",
        "--model",
        run.to_str().unwrap(),
        "--prompt",
        "ROMEO:",
    ];
    for id in &ids {
        args.extend(["--suppress-tokens", id.as_str()]);
    }
    let out = decodex(&args);
    common::assert_clear_error(&out, &["no token possible"]);
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Ctrl-C (SIGINT) and SIGTERM used to leave hidden `.NAME.tmpPID` files and folders behind: an
/// interrupted write removes them and exits with 128 + the signal's number.
#[test]
fn interrupted_writes_leave_no_temporary_files() {
    let d = tempfile::tempdir().unwrap();
    let run = common::trained_model(d.path(), 5);
    // Enough texts to take a while with any model (the corpus's lines: no unknown character).
    let corpus = common::small_corpus();
    let lines = corpus.lines().filter(|l| !l.trim().is_empty()).cycle();
    let texts: String = lines.take(400_000).map(|l| format!("{l}\n")).collect();
    let input = d.path().join("texts.txt");
    std::fs::write(&input, texts).unwrap();
    let cases = [
        ("embed", "vectors.npy", "TERM", 143),
        ("index", "index", "INT", 130),
    ];
    for (command, name, signal, code) in cases {
        let out = d.path().join("outputs").join(name);
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let mut args = vec![command];
        if command == "index" {
            args.push("build");
        }
        args.extend([
            "--model",
            run.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--chunk",
            "1000",
            "--json",
        ]);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_decodex"))
            .args(&args)
            .env("DECODEX_CACHE", common::init_cache())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Wait until the temporary file or folder is there, then interrupt.
        let dir = out.parent().unwrap();
        let t0 = std::time::Instant::now();
        let tmp_files = || -> Vec<String> {
            std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp"))
                .collect()
        };
        while tmp_files().is_empty() {
            assert!(t0.elapsed().as_secs() < 60, "{command}: no temporary file");
            assert!(child.try_wait().unwrap().is_none(), "{command} ended early");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let kill = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "{command} after SIG{signal}");
        assert!(tmp_files().is_empty(), "{command} left {:?}", tmp_files());
        assert!(!out.exists(), "{command} wrote {}", out.display());
    }
}
