//! `decodex finetune`, `--adapter`, `merge`, on the tiny Hugging Face Llama of
//! tests/fixtures/llama_tiny (with a char tokenizer written beside it): LoRA training lowers the
//! eval loss and leaves the base bit-identical, a resumed run equals an uninterrupted one, the
//! merged model decodes as base + adapter, and bad input fails with one clear line.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_clear_error, decodex};
use serde_json::Value;

/// A temporary copy of llama_tiny with a char tokenizer over its 96 characters.
fn tiny_model(tmp: &Path) -> PathBuf {
    common::tiny_llama(tmp, "base", common::LLAMA_CHARS)
}

fn write_data(tmp: &Path) -> (PathBuf, PathBuf) {
    let mut train = String::new();
    for i in 0..24 {
        let w = ["red", "blue", "green", "black"][i % 4];
        train.push_str(&format!(
            "{{\"prompt\":\"say {w} {i}: \",\"completion\":\"{w} {w}\"}}\n"
        ));
    }
    let eval: String = train.lines().take(8).map(|l| format!("{l}\n")).collect();
    let (t, e) = (tmp.join("train.jsonl"), tmp.join("eval.jsonl"));
    std::fs::write(&t, train).unwrap();
    std::fs::write(&e, eval).unwrap();
    (t, e)
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("decodex-ft-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn lines(out: &std::process::Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn finetune(base: &Path, data: &Path, eval: &Path, out: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "finetune",
        "--base",
        base.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--eval",
        eval.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    // Defaults, each unless `extra` sets it.
    for (flag, value) in [
        ("--rank", "4"),
        ("--alpha", "8"),
        ("--warmup-steps", "2"),
        ("--batch-tokens", "64"),
        ("--eval-every", "0"),
        ("--lr", "1e-2"),
    ] {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    lines(&decodex(&args))
}

fn event<'a>(ls: &'a [Value], name: &str) -> &'a Value {
    ls.iter().find(|v| v["event"] == name).unwrap()
}

#[test]
fn lora_lowers_eval_loss_leaves_base_unchanged_and_resumes_exactly() {
    let tmp = tmpdir("lora");
    let base = tiny_model(&tmp);
    let (train, eval) = write_data(&tmp);
    let before = finetune(
        &base,
        &train,
        &eval,
        &tmp.join("a0"),
        &["--max-steps", "1", "--lr", "1e-9"],
    );
    let start_loss = event(&before, "done")["eval_loss"].as_f64().unwrap();
    let run = finetune(&base, &train, &eval, &tmp.join("a"), &["--max-steps", "80"]);
    let done = event(&run, "done");
    let end_loss = done["eval_loss"].as_f64().unwrap();
    assert!(
        end_loss < 0.7 * start_loss,
        "eval loss {start_loss} -> {end_loss}"
    );
    assert_eq!(done["base_unchanged"], true);
    let start = event(&run, "start");
    assert_eq!(start["trainable_params"], lora_params());
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.join("a/adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert!(tmp.join("a/adapter_model.safetensors").exists() && tmp.join("a/loss.png").exists());
    let st =
        decodex::nn::tensor_io::load_tensors(&tmp.join("a/adapter_model.safetensors")).unwrap();
    assert!(st
        .tensors
        .contains_key("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));
    // Paused after 30 of 80 steps, then resumed: the same adapter as 80 straight.
    let p = tmp.join("b");
    finetune(
        &base,
        &train,
        &eval,
        &p,
        &["--max-steps", "80", "--pause-at", "30"],
    );
    finetune(&base, &train, &eval, &p, &["--max-steps", "80", "--resume"]);
    let a = decodex::nn::tensor_io::load_tensors(&tmp.join("a/adapter_model.safetensors")).unwrap();
    let b = decodex::nn::tensor_io::load_tensors(&p.join("adapter_model.safetensors")).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (name, (_, x)) in &a.tensors {
        assert_eq!(x, &b.tensors[name].1, "{name} differs after resume");
    }
    // Decoding with --adapter equals decoding the merged model.
    let gen = |model: &Path, adapter: Option<&Path>| -> String {
        let mut args = vec![
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "say blue 5: ",
            "--greedy",
            "--max-new-tokens",
            "9",
            "--json",
        ];
        if let Some(a) = adapter {
            args.extend(["--adapter", a.to_str().unwrap()]);
        }
        lines(&decodex(&args))[0]["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let merged = tmp.join("merged");
    let m = decodex(&[
        "merge",
        "--base",
        base.to_str().unwrap(),
        "--adapter",
        tmp.join("a").to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
        "--json",
    ]);
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    let with_adapter = gen(&base, Some(&tmp.join("a")));
    assert_eq!(with_adapter, gen(&merged, None));
    assert_eq!(with_adapter, "blue blue", "the adapter learned the task");
    assert_ne!(gen(&base, None), with_adapter);
}

/// LoRA parameters of rank 4 on all seven projections of llama_tiny (2 layers, hidden 64, 4
/// heads of 16, 2 kv heads, intermediate 128): r · (in + out) per projection.
fn lora_params() -> i64 {
    let per_layer = 4 * ((64 + 64) + (64 + 32) * 2 + (64 + 64) + (64 + 128) * 2 + (128 + 64));
    2 * per_layer
}

#[test]
fn full_finetuning_lowers_eval_loss_and_writes_a_hf_folder() {
    let tmp = tmpdir("full");
    let base = tiny_model(&tmp);
    let (train, eval) = write_data(&tmp);
    let before = finetune(
        &base,
        &train,
        &eval,
        &tmp.join("f0"),
        &["--method", "full", "--max-steps", "1", "--lr", "1e-9"],
    );
    let run = finetune(
        &base,
        &train,
        &eval,
        &tmp.join("f"),
        &["--method", "full", "--max-steps", "150", "--lr", "3e-3"],
    );
    let (l0, l1) = (
        event(&before, "done")["eval_loss"].as_f64().unwrap(),
        event(&run, "done")["eval_loss"].as_f64().unwrap(),
    );
    assert!(l1 < 0.7 * l0, "eval loss {l0} -> {l1}");
    assert_eq!(
        event(&run, "start")["trainable_params"],
        event(&run, "start")["base_params"]
    );
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.jsonl",
    ] {
        assert!(tmp.join("f").join(f).exists(), "{f}");
    }
    let out = decodex(&[
        "generate",
        "--model",
        tmp.join("f").to_str().unwrap(),
        "--prompt",
        "say green 2: ",
        "--greedy",
        "--max-new-tokens",
        "11",
        "--json",
    ]);
    assert_eq!(lines(&out)[0]["text"], "green green");
}

#[test]
fn bad_input_is_one_clear_line() {
    let tmp = tmpdir("bad");
    let base = tiny_model(&tmp);
    let (train, eval) = write_data(&tmp);
    let o = tmp.join("o");
    let run = |data: &Path, extra: &[&str]| {
        let mut args = vec![
            "finetune",
            "--base",
            base.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            o.to_str().unwrap(),
            "--max-steps",
            "1",
        ];
        args.extend_from_slice(extra);
        decodex(&args)
    };
    let bad = tmp.join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\":\"a\",\"completion\":\"b\"}\n\n{\"prompt\":\"a\"}\n",
    )
    .unwrap();
    assert_clear_error(
        &run(&bad, &[]),
        &["bad.jsonl", "line 3", "missing field \"completion\""],
    );
    std::fs::write(&bad, "{\"prompt\":\"a\",\"completion\":[1]}\n").unwrap();
    assert_clear_error(
        &run(&bad, &[]),
        &["line 1", "\"completion\" must be a string, found an array"],
    );
    std::fs::write(&bad, "{\"messages\":[{\"role\":\"user\"}]}\n").unwrap();
    assert_clear_error(&run(&bad, &[]), &["line 1", "\"role\" and \"content\""]);
    assert_clear_error(&run(&train, &["--rank", "0"]), &["rank must be at least 1"]);
    assert_clear_error(
        &run(&train, &["--targets", "q,attn"]),
        &["unknown LoRA target \"attn\""],
    );
    // Too-long examples: skipped (default) or truncated, and counted either way.
    let count = |extra: &[&str]| -> Value {
        let mut a = vec![
            "--max-len",
            "20",
            "--json",
            "--eval",
            eval.to_str().unwrap(),
            "--force",
        ];
        a.extend_from_slice(extra);
        event(&lines(&run(&train, &a)), "start")["train"].clone()
    };
    let skip = count(&[]);
    // "say W N: " is 11 to 15 chars; completions are 7 to 11 chars + EOS.
    assert!(
        skip["skipped_overlong"].as_u64().unwrap() > 0 && skip["truncated"] == 0,
        "{skip}"
    );
    let trunc = count(&["--overlong", "truncate"]);
    assert_eq!(trunc["truncated"], skip["skipped_overlong"], "{trunc}");
    assert_eq!(trunc["skipped_overlong"], 0);
    // An adapter for a base of another shape.
    finetune(&base, &train, &eval, &tmp.join("a"), &["--max-steps", "1"]);
    let wpath = tmp.join("a/adapter_model.safetensors");
    let mut st = decodex::nn::tensor_io::load_tensors(&wpath).unwrap();
    let sig = st.metadata["decodex_base"].replace("\"hidden_size\":64", "\"hidden_size\":576");
    st.metadata.insert("decodex_base".into(), sig);
    let named: Vec<(String, Vec<usize>, &[f32])> = st
        .tensors
        .iter()
        .map(|(n, (s, d))| (n.clone(), s.clone(), &d[..]))
        .collect();
    decodex::nn::tensor_io::save_tensors(&wpath, &named, st.metadata.clone()).unwrap();
    // And one whose tensors do not fit (a PEFT adapter carries no shape record).
    let other = tmp.join("b");
    finetune(
        &base,
        &train,
        &eval,
        &other,
        &["--max-steps", "1", "--rank", "2"],
    );
    let cpath = other.join("adapter_config.json");
    let text = std::fs::read_to_string(&cpath)
        .unwrap()
        .replace("\"r\": 2", "\"r\": 4");
    std::fs::write(&cpath, text).unwrap();
    let bpath = other.join("adapter_model.safetensors");
    let mut st = decodex::nn::tensor_io::load_tensors(&bpath).unwrap();
    st.metadata.remove("decodex_base");
    let named: Vec<(String, Vec<usize>, &[f32])> = st
        .tensors
        .iter()
        .map(|(n, (s, d))| (n.clone(), s.clone(), &d[..]))
        .collect();
    decodex::nn::tensor_io::save_tensors(&bpath, &named, st.metadata.clone()).unwrap();
    let out = decodex(&[
        "generate",
        "--model",
        base.to_str().unwrap(),
        "--adapter",
        other.to_str().unwrap(),
        "--prompt",
        "x",
        "--greedy",
        "--max-new-tokens",
        "2",
    ]);
    assert_clear_error(
        &out,
        &[
            "adapter_model.safetensors",
            "has shape",
            "another base model",
        ],
    );
    let out = decodex(&[
        "generate",
        "--model",
        base.to_str().unwrap(),
        "--adapter",
        tmp.join("a").to_str().unwrap(),
        "--prompt",
        "x",
        "--greedy",
        "--max-new-tokens",
        "2",
    ]);
    assert_clear_error(&out, &["adapter_model.safetensors", "another base model"]);
}

/// `finetune` used to print JSON (its data report) without --json: text mode prints human
/// lines only, and --json one JSON object per line.
#[test]
fn finetune_prints_json_only_with_json() {
    let tmp = tmpdir("text-mode");
    let base = tiny_model(&tmp);
    let (data, eval) = write_data(&tmp);
    let args = |out: &Path| {
        let mut a: Vec<String> = [
            "finetune",
            "--base",
            base.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--eval",
            eval.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--max-steps",
            "2",
            "--batch-tokens",
            "64",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push("--rank".into());
        a.push("4".into());
        a
    };
    let text_args = args(&tmp.join("text"));
    let out = decodex(&text_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    for l in stdout.lines().chain(stderr.lines()) {
        assert!(!l.contains('{'), "JSON in text mode: {l}");
    }
    assert!(stderr.contains("examples from"), "{stderr}");
    let mut json_args = args(&tmp.join("json"));
    json_args.push("--json".into());
    let lines = lines(&decodex(
        &json_args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert_eq!(lines.first().unwrap()["event"], "start");
    assert_eq!(lines.last().unwrap()["event"], "done");
    let _ = std::fs::remove_dir_all(&tmp);
}
