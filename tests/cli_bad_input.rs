//! Bad input to every subcommand that had no such test: exit code 2, exactly one line on stderr
//! naming the problem (and the file, when a file is the problem), nothing on stdout, and nothing
//! written: the output path does not exist afterwards, or an existing one is byte-identical.
//! Flags are checked before a model is loaded: those cases name a model path that does not
//! exist, so the flag's message can only come first.
//!
//! A test whose doc comment says what "used to" happen is the regression test of that bug.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::decodex;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Exit code 2, one line on stderr holding every `needles`, and nothing on stdout.
fn refused(out: &Output, needles: &[&str]) {
    common::assert_clear_error(out, needles);
    assert!(
        out.stdout.is_empty(),
        "stdout holds a partial result: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `path` is not there.
fn absent(path: &Path) {
    assert!(!path.exists(), "{} was written", path.display());
}

/// Every file under `dir` with its bytes, for a before/after comparison.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
}

/// A file holding `old`, to check that a failed run leaves it as it was.
fn existing(path: &Path) -> Vec<u8> {
    let old = b"an earlier result that must survive\n".to_vec();
    std::fs::write(path, &old).unwrap();
    old
}

fn unchanged(path: &Path, old: &[u8]) {
    assert_eq!(
        std::fs::read(path).unwrap(),
        old,
        "{} was overwritten",
        path.display()
    );
}

const NO_MODEL: &str = "/nonexistent/model";

// --- tokenizer ----------------------------------------------------------------------------

#[test]
fn tokenizer_refuses_missing_empty_or_non_utf8_corpora_and_bad_vocab_sizes() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    let train = |input: &Path, out: &Path, extra: &[&str]| {
        let mut a = vec!["tokenizer", "train", "--input", s(input), "--out", s(out)];
        a.extend_from_slice(extra);
        decodex(&a)
    };
    let fresh = p("fresh.json");
    refused(
        &train(&p("nope.txt"), &fresh, &["--kind", "char"]),
        &["nope.txt", "No such file"],
    );
    absent(&fresh);
    std::fs::write(p("empty.txt"), "").unwrap();
    refused(
        &train(&p("empty.txt"), &fresh, &["--kind", "char"]),
        &["empty.txt", "empty"],
    );
    absent(&fresh);

    // An existing tokenizer.json survives every failed run, --force or not.
    let kept = p("tokenizer.json");
    let old = existing(&kept);
    std::fs::write(p("latin1.txt"), b"caf\xe9 au lait\n".repeat(50)).unwrap();
    refused(
        &train(&p("latin1.txt"), &kept, &["--kind", "char", "--force"]),
        &["latin1.txt", "UTF-8"],
    );
    std::fs::write(p("c.txt"), "the quick brown fox\n".repeat(50)).unwrap();
    refused(
        &train(&p("c.txt"), &kept, &["--kind", "bpe", "--force"]),
        &["--vocab-size", "required"],
    );
    refused(
        &train(
            &p("c.txt"),
            &kept,
            &["--kind", "bpe", "--vocab-size", "0", "--force"],
        ),
        &["vocab_size 0", "257"],
    );
    unchanged(&kept, &old);

    // Encoding with a file that is not a tokenizer.json.
    for (name, text) in [("not_json.json", "hello"), ("no_model.json", "{\"a\": 1}")] {
        std::fs::write(p(name), text).unwrap();
        refused(
            &decodex(&[
                "tokenizer",
                "encode",
                "--tokenizer",
                s(&p(name)),
                "--text",
                "hi",
            ]),
            &[name, "not a valid tokenizer.json"],
        );
    }
}

// --- export -------------------------------------------------------------------------------

#[test]
fn export_refuses_unknown_formats_missing_models_and_its_own_folder() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("hf");
    refused(
        &decodex(&[
            "export",
            "--model",
            NO_MODEL,
            "--format",
            "onnx",
            "--out",
            s(&out),
        ]),
        &["--format \"onnx\"", "\"hf\""],
    );
    absent(&out);
    refused(
        &decodex(&["export", "--model", NO_MODEL, "--out", s(&out)]),
        &[NO_MODEL, "not found"],
    );
    absent(&out);
    // Exporting a model onto itself is refused, every file as it was.
    let run = common::trained_model(d.path(), 2);
    let before = snapshot(&run);
    let same = format!("{}/", run.display());
    for target in [s(&run), same.as_str()] {
        refused(
            &decodex(&["export", "--model", s(&run), "--out", target]),
            &["--out is the model directory"],
        );
    }
    assert_eq!(snapshot(&run), before);
}

// --- plot ---------------------------------------------------------------------------------

#[test]
fn plot_refuses_missing_or_malformed_metrics_and_unknown_image_types() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    let plot = |metrics: &Path, out: &Path| decodex(&["plot", s(metrics), "--out", s(out)]);
    let png = p("loss.png");
    refused(
        &plot(&p("nope.jsonl"), &png),
        &["nope.jsonl", "No such file"],
    );
    absent(&png);
    std::fs::write(p("other.jsonl"), "{\"epoch\": 1, \"loss\": 2.0}\n").unwrap();
    refused(
        &plot(&p("other.jsonl"), &png),
        &["other.jsonl", "line 1", "step"],
    );
    absent(&png);
    std::fs::write(
        p("m.jsonl"),
        "{\"step\": 1, \"train_loss\": 2.0, \"lr\": 0.001}\n",
    )
    .unwrap();
    refused(
        &plot(&p("m.jsonl"), &p("loss.jpg")),
        &["loss.jpg", ".png or .svg"],
    );
    absent(&p("loss.jpg"));
    // An earlier plot survives a failed one, even with --force.
    let old = existing(&png);
    let forced = decodex(&["plot", s(&p("other.jsonl")), "--out", s(&png), "--force"]);
    refused(&forced, &["other.jsonl"]);
    unchanged(&png, &old);
}

/// src/plot.rs `read_metrics` used to number the non-blank lines only (`filter` before
/// `enumerate`), so a bad line after a blank one was reported a line early; and an empty
/// metrics file failed as "invalid config: no metrics to plot", naming no file.
#[test]
fn plot_names_the_line_and_file_of_bad_metrics() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    let png = p("loss.png");
    std::fs::write(
        p("m.jsonl"),
        "{\"step\": 1, \"train_loss\": 2.0, \"lr\": 0.001}\n\nnot json\n",
    )
    .unwrap();
    refused(
        &decodex(&["plot", s(&p("m.jsonl")), "--out", s(&png)]),
        &["m.jsonl", "line 3"],
    );
    std::fs::write(p("empty.jsonl"), "").unwrap();
    refused(
        &decodex(&["plot", s(&p("empty.jsonl")), "--out", s(&png)]),
        &["empty.jsonl", "no metrics"],
    );
    absent(&png);
}

// --- bench --------------------------------------------------------------------------------

#[test]
fn bench_refuses_zero_counts_long_prompts_and_empty_inputs() {
    let d = tempfile::tempdir().unwrap();
    let zero = "--reps must be at least 1, and --prompt-tokens or --new-tokens too";
    for flags in [
        &["--reps", "0"][..],
        &["--prompt-tokens", "0", "--new-tokens", "0"],
    ] {
        let mut a = vec!["bench", "decode", "--model", NO_MODEL];
        a.extend_from_slice(flags);
        refused(&decodex(&a), &[zero]);
    }
    // llama_tiny attends over 64 positions; each test runs after the depth.
    let llama = common::tiny_llama(d.path(), "llama", common::LLAMA_CHARS);
    refused(
        &decodex(&[
            "bench",
            "decode",
            "--model",
            s(&llama),
            "--prompt-tokens",
            "60",
            "--new-tokens",
            "8",
            "--depth",
            "8",
        ]),
        &["depth 8 + 60 prompt tokens", "context of 64"],
    );
    refused(
        &decodex(&[
            "bench",
            "train",
            "--config",
            "/nonexistent.toml",
            "--iters",
            "0",
        ]),
        &["--max-steps must be at least 1"],
    );
    refused(
        &decodex(&["bench", "train", "--config", "/nonexistent.toml"]),
        &["/nonexistent.toml"],
    );
    let m = common::minilm();
    let empty = d.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    refused(
        &decodex(&["bench", "embed", "--model", s(&m), "--input", s(&empty)]),
        &["empty.txt", "no texts"],
    );
    std::fs::write(d.path().join("t.txt"), "one text\n").unwrap();
    refused(
        &decodex(&[
            "bench",
            "embed",
            "--model",
            s(&m),
            "--input",
            s(&d.path().join("t.txt")),
            "--rounds",
            "0",
        ]),
        &["--rounds must be at least 1"],
    );
}

/// `bench decode` used to check the context against prompt + max(new, 32) tokens even without
/// `--beam`, refusing "40 prompt tokens + 8 new exceed the context of 64" (48 fit in 64). Its
/// tests are llama-bench's now, each after `--depth` tokens: the prompt test needs depth +
/// prompt positions, the generation test depth + new, and `--beam` the beam's own 32 new tokens
/// after at most 32 of the prompt: llama_tiny's 64 positions hold depth 24 + 40 (and the beam's
/// 32 + 32), not depth 25 + 40.
#[test]
fn bench_decode_checks_the_context_it_will_use() {
    let d = tempfile::tempdir().unwrap();
    let llama = common::tiny_llama(d.path(), "llama", common::LLAMA_CHARS);
    let bench = |depth: &str, extra: &[&str]| {
        let mut a = vec![
            "bench",
            "decode",
            "--model",
            s(&llama),
            "--prompt-tokens",
            "40",
            "--new-tokens",
            "24",
            "--depth",
            depth,
            "--reps",
            "1",
            "--json",
        ];
        a.extend_from_slice(extra);
        decodex(&a)
    };
    for extra in [&[][..], &["--beam"]] {
        let out = bench("24", extra);
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (v["prompt_tokens"].as_u64(), v["new_tokens"].as_u64()),
            (Some(40), Some(24))
        );
        assert_eq!(
            v["beam4_tokens_per_sec"].is_number(),
            !extra.is_empty(),
            "{v}"
        );
    }
    refused(
        &bench("25", &[]),
        &["depth 25 + 40 prompt tokens", "context of 64"],
    );
}

/// src/cli/search.rs `bench_embed` used to check `--rounds` after loading the model and reading
/// the input, so `--rounds 0` with a missing model reported the model instead.
#[test]
fn bench_embed_checks_rounds_before_loading() {
    refused(
        &decodex(&[
            "bench",
            "embed",
            "--model",
            NO_MODEL,
            "--input",
            "/nonexistent.txt",
            "--rounds",
            "0",
        ]),
        &["--rounds"],
    );
}

// --- merge --------------------------------------------------------------------------------

/// A one-step LoRA adapter of rank 2 for `base`, in `dir/adapter`.
fn tiny_adapter(dir: &Path, base: &Path) -> PathBuf {
    let data = dir.join("ft.jsonl");
    let lines: String = (0..8)
        .map(|i| format!("{{\"prompt\":\"say red {i}: \",\"completion\":\"red red\"}}\n"))
        .collect();
    std::fs::write(&data, lines).unwrap();
    let adapter = dir.join("adapter");
    let out = decodex(&[
        "finetune",
        "--base",
        s(base),
        "--data",
        s(&data),
        "--out",
        s(&adapter),
        "--max-steps",
        "1",
        "--rank",
        "2",
        "--batch-tokens",
        "64",
        "--eval-examples",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    adapter
}

#[test]
fn merge_refuses_missing_adapters_and_non_llama_bases() {
    let d = tempfile::tempdir().unwrap();
    let base = common::tiny_llama(d.path(), "llama", common::LLAMA_CHARS);
    let out = d.path().join("merged");
    refused(
        &decodex(&[
            "merge",
            "--base",
            s(&base),
            "--adapter",
            s(&d.path().join("nope")),
            "--out",
            s(&out),
        ]),
        &["nope", "adapter_config.json"],
    );
    absent(&out);
    let adapter = tiny_adapter(d.path(), &base);
    let gpt = common::trained_model(d.path(), 2);
    refused(
        &decodex(&[
            "merge",
            "--base",
            s(&gpt),
            "--adapter",
            s(&adapter),
            "--out",
            s(&out),
        ]),
        &["Llama-family"],
    );
    absent(&out);
}

/// src/cli/tasks.rs `merge` used to have no check that `--out` is not the base (`export` had
/// one): it exited 0 having replaced the base's model.safetensors, config.json and
/// tokenizer.json by the merged model's.
#[test]
fn merge_refuses_to_write_over_its_base() {
    let d = tempfile::tempdir().unwrap();
    let base = common::tiny_llama(d.path(), "llama", common::LLAMA_CHARS);
    let adapter = tiny_adapter(d.path(), &base);
    let before = snapshot(&base);
    refused(
        &decodex(&[
            "merge",
            "--base",
            s(&base),
            "--adapter",
            s(&adapter),
            "--out",
            s(&base),
        ]),
        &["--out"],
    );
    assert_eq!(snapshot(&base), before, "the base was overwritten");
}

// --- eval ---------------------------------------------------------------------------------

#[test]
fn eval_perplexity_refuses_bad_flags_missing_files_and_empty_text() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    std::fs::write(p("t.txt"), "hello there\n").unwrap();
    refused(
        &decodex(&[
            "eval",
            "perplexity",
            "--model",
            NO_MODEL,
            "--text-file",
            s(&p("t.txt")),
            "--batch-size",
            "0",
        ]),
        &["--batch-size must be at least 1"],
    );
    refused(
        &decodex(&[
            "eval",
            "perplexity",
            "--model",
            NO_MODEL,
            "--text-file",
            s(&p("t.txt")),
        ]),
        &[NO_MODEL, "not found"],
    );
    let run = common::trained_model(d.path(), 2);
    let ppl = |text: &Path| {
        decodex(&[
            "eval",
            "perplexity",
            "--model",
            s(&run),
            "--text-file",
            s(text),
        ])
    };
    refused(&ppl(&p("nope.txt")), &["nope.txt", "No such file"]);
    std::fs::write(p("empty.txt"), "").unwrap();
    refused(&ppl(&p("empty.txt")), &["empty.txt", "empty"]);
}

/// A character the char model has never seen used to fail with its offset but without the text
/// file's name (src/eval/mod.rs `perplexity` did not attach the path it receives to the encode
/// error).
#[test]
fn eval_perplexity_names_the_file_with_an_unknown_character() {
    let d = tempfile::tempdir().unwrap();
    let run = common::trained_model(d.path(), 2);
    let text = d.path().join("euro.txt");
    std::fs::write(&text, "ten \u{20ac} please\n").unwrap();
    refused(
        &decodex(&[
            "eval",
            "perplexity",
            "--model",
            s(&run),
            "--text-file",
            s(&text),
        ]),
        &["euro.txt", "'\u{20ac}'", "vocabulary"],
    );
}

#[test]
fn eval_rouge_refuses_mismatched_missing_or_non_utf8_files() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    std::fs::write(p("hyp.txt"), "a cat sat\non the mat\n").unwrap();
    std::fs::write(p("ref.txt"), "a cat sat down\non a mat\n").unwrap();
    std::fs::write(p("short.txt"), "a cat sat down\n").unwrap();
    std::fs::write(p("latin1.txt"), b"caf\xe9\nau lait\n").unwrap();
    let rouge = |hyp: &Path, refs: &[&Path]| {
        let mut a = vec!["eval", "rouge", "--hyp", s(hyp)];
        for r in refs {
            a.extend(["--ref", s(r)]);
        }
        decodex(&a)
    };
    refused(
        &rouge(&p("hyp.txt"), &[&p("ref.txt"), &p("short.txt")]),
        &["short.txt", "1 lines", "hyp.txt", "has 2"],
    );
    refused(&rouge(&p("nope.txt"), &[&p("ref.txt")]), &["nope.txt"]);
    refused(&rouge(&p("hyp.txt"), &[&p("nope.txt")]), &["nope.txt"]);
    refused(
        &rouge(&p("hyp.txt"), &[&p("latin1.txt")]),
        &["latin1.txt", "UTF-8"],
    );
}

/// A SQuAD v1.1 file with one question, "q1".
fn squad_file(dir: &Path) -> PathBuf {
    let p = dir.join("squad.json");
    std::fs::write(
        &p,
        serde_json::json!({"version": "1.1", "data": [{"title": "T", "paragraphs": [{
            "context": "Paris is the capital of France.",
            "qas": [{"id": "q1", "question": "What is the capital of France?",
                     "answers": [{"text": "Paris", "answer_start": 0}]}]}]}]})
        .to_string(),
    )
    .unwrap();
    p
}

#[test]
fn eval_squad_refuses_predictions_and_datasets_of_the_wrong_shape() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    let data = squad_file(d.path());
    let squad = |data: &Path, preds: &Path| {
        decodex(&[
            "eval",
            "squad",
            "--data",
            s(data),
            "--predictions",
            s(preds),
        ])
    };
    for (name, text, needle) in [
        ("list.json", "[\"Paris\"]", "expected a map"),
        ("cut.json", "{\"q1\": \"Paris\"", "EOF"),
        ("number.json", "{\"q1\": 3}", "expected a string"),
    ] {
        std::fs::write(p(name), text).unwrap();
        refused(
            &squad(&data, &p(name)),
            &[name, "predictions must be one JSON object", needle],
        );
    }
    std::fs::write(p("ok.json"), "{\"q1\": \"Paris\"}").unwrap();
    std::fs::write(p("lines.jsonl"), "{\"prompt\": \"a\"}\n").unwrap();
    refused(
        &squad(&p("lines.jsonl"), &p("ok.json")),
        &["lines.jsonl", "not a SQuAD dataset"],
    );
    refused(&squad(&p("nope.json"), &p("ok.json")), &["nope.json"]);
}

/// Predictions that answer none of the dataset's questions (the predictions of another
/// dataset) used to score EM 0 and F1 0 with exit code 0 and nothing on stderr: the
/// `tracing::warn!` in src/cli/commands.rs is below the "error" level src/cli/mod.rs lets
/// through. (Predictions answering some of the questions still score the others 0, as the
/// official script does.)
#[test]
fn eval_squad_refuses_predictions_for_another_dataset() {
    let d = tempfile::tempdir().unwrap();
    let data = squad_file(d.path());
    let preds = d.path().join("other.json");
    std::fs::write(
        &preds,
        "{\"5733be284776f41900661182\": \"Saint Bernadette\"}",
    )
    .unwrap();
    refused(
        &decodex(&[
            "eval",
            "squad",
            "--data",
            s(&data),
            "--predictions",
            s(&preds),
        ]),
        &["other.json", "squad.json"],
    );
}

/// An STS Benchmark line: genre, file, year, id, score, sentence 1, sentence 2.
fn sts_line(score: &str, a: &str, b: &str) -> String {
    format!("main-captions\tMSRvid\t2012test\t0001\t{score}\t{a}\t{b}\n")
}

#[test]
fn eval_sts_refuses_missing_or_malformed_files() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    let m = common::minilm();
    let sts = |data: &Path| decodex(&["eval", "sts", "--model", s(&m), "--data", s(data)]);
    refused(&sts(&p("nope.csv")), &["nope.csv", "No such file"]);
    std::fs::write(
        p("score.csv"),
        sts_line("2.5", "A girl.", "A boy.") + &sts_line("five", "A cat.", "A dog."),
    )
    .unwrap();
    refused(&sts(&p("score.csv")), &["score.csv", "line 2", "\"five\""]);
    std::fs::write(
        p("short.csv"),
        "main-captions\tMSRvid\t2012test\t0001\t2.5\tA girl.\n",
    )
    .unwrap();
    refused(&sts(&p("short.csv")), &["short.csv", "line 1", "6 column"]);
    std::fs::write(p("empty.csv"), "").unwrap();
    refused(&sts(&p("empty.csv")), &["empty.csv", "no sentence pairs"]);
}

/// One pair used to fail as "invalid config: correlation needs at least 2 values, got 1"
/// without the file's name, and gold scores that are all equal gave exit code 0 and
/// `"spearman": null` (NaN); src/eval/sts.rs `read_sts` now refuses both, before the model loads.
#[test]
fn eval_sts_refuses_files_without_a_correlation() {
    let d = tempfile::tempdir().unwrap();
    let m = common::minilm();
    let one = d.path().join("one.csv");
    std::fs::write(&one, sts_line("2.5", "A girl.", "A boy.")).unwrap();
    refused(
        &decodex(&["eval", "sts", "--model", s(&m), "--data", s(&one)]),
        &["one.csv", "2"],
    );
    let flat = d.path().join("flat.csv");
    std::fs::write(
        &flat,
        sts_line("2.5", "A girl.", "A boy.") + &sts_line("2.5", "A cat.", "A dog."),
    )
    .unwrap();
    refused(
        &decodex(&["eval", "sts", "--model", s(&m), "--data", s(&flat)]),
        &["flat.csv"],
    );
}

#[test]
fn eval_retrieval_refuses_bad_qrels_queries_indexes_and_flags() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    let m = common::minilm();
    std::fs::write(
        p("corpus.jsonl"),
        "{\"_id\": \"d0\", \"text\": \"The cat sleeps.\"}\n{\"_id\": \"d1\", \"text\": \"Markets fell.\"}\n",
    )
    .unwrap();
    let idx = p("idx");
    common::decodex_json(&[
        "index",
        "build",
        "--model",
        s(&m),
        "--corpus",
        s(&p("corpus.jsonl")),
        "--out",
        s(&idx),
        "--json",
    ]);
    std::fs::write(
        p("queries.jsonl"),
        "{\"_id\": \"q1\", \"text\": \"a cat\"}\n",
    )
    .unwrap();
    let header = "query-id\tcorpus-id\tscore\n";
    std::fs::write(p("qrels.tsv"), format!("{header}q1\td0\t1\n")).unwrap();
    let eval = |index: &Path, queries: &Path, qrels: &Path, extra: &[&str]| {
        let mut a = vec![
            "eval",
            "retrieval",
            "--index",
            s(index),
            "--queries",
            s(queries),
            "--qrels",
            s(qrels),
        ];
        a.extend_from_slice(extra);
        decodex(&a)
    };
    let (q, r) = (p("queries.jsonl"), p("qrels.tsv"));
    std::fs::write(p("no_header.tsv"), "q1\td0\t1\n").unwrap();
    refused(
        &eval(&idx, &q, &p("no_header.tsv"), &[]),
        &["no_header.tsv", "line 1", "header"],
    );
    std::fs::write(p("grade.tsv"), format!("{header}q1\td0\thigh\n")).unwrap();
    refused(
        &eval(&idx, &q, &p("grade.tsv"), &[]),
        &["grade.tsv", "line 2", "\"high\""],
    );
    std::fs::write(p("other.tsv"), format!("{header}q9\td0\t1\n")).unwrap();
    refused(
        &eval(&idx, &q, &p("other.tsv"), &[]),
        &["queries.jsonl", "other.tsv", "none of its queries"],
    );
    std::fs::write(
        p("dup.jsonl"),
        "{\"_id\": \"q1\", \"text\": \"a\"}\n{\"_id\": \"q1\", \"text\": \"b\"}\n",
    )
    .unwrap();
    refused(
        &eval(&idx, &p("dup.jsonl"), &r, &[]),
        &["dup.jsonl", "line 2", "duplicate query id \"q1\""],
    );
    refused(&eval(&idx, &q, &p("nope.tsv"), &[]), &["nope.tsv"]);
    refused(&eval(d.path(), &q, &r, &[]), &["not an index"]);
    for flag in ["--top-k", "--ef"] {
        refused(&eval(&idx, &q, &r, &[flag, "0"]), &["must be at least 1"]);
    }
}

// --- chat, logits, summarize, answer, quickstart ------------------------------------------

#[test]
fn chat_refuses_bad_flags_missing_models_and_models_without_a_template() {
    let d = tempfile::tempdir().unwrap();
    let chat = |model: &str, extra: &[&str]| {
        let mut a = vec!["chat", "--model", model, "--json"];
        a.extend_from_slice(extra);
        decodex(&a)
    };
    refused(&chat(NO_MODEL, &[]), &[NO_MODEL, "not found"]);
    refused(&chat(NO_MODEL, &["--top-p", "0"]), &["top_p (0)"]);
    refused(
        &chat(NO_MODEL, &["--temperature=-1"]),
        &["temperature (-1)"],
    );
    refused(
        &chat(NO_MODEL, &["--repetition-penalty", "0"]),
        &["repetition_penalty (0)"],
    );
    // The first turn fails on a model without a chat template.
    let llama = common::tiny_llama(d.path(), "llama", common::LLAMA_CHARS);
    refused(
        &common::decodex_stdin(&["chat", "--model", s(&llama), "--json"], "Hello\n"),
        &["llama", "no chat template"],
    );
}

/// A model without a chat template used to be refused only once a first message had been read
/// (the template is rendered per turn in src/cli/generate.rs `chat`): with nothing typed the
/// exit code was 0, and the message advised to "drop --chat", a flag `chat` does not have
/// (src/models/pretrained.rs `chat_prompt_for`).
#[test]
fn chat_refuses_a_model_without_a_template_before_reading() {
    let d = tempfile::tempdir().unwrap();
    let llama = common::tiny_llama(d.path(), "llama", common::LLAMA_CHARS);
    let out = common::decodex_stdin(&["chat", "--model", s(&llama), "--json"], "");
    refused(&out, &["llama", "no chat template"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("--chat"), "{stderr}");
}

/// `--max-new-tokens 0` used not to be checked by src/cli/generate.rs `chat` (`generate`
/// refused it): every reply was empty and the exit code 0.
#[test]
fn chat_refuses_zero_new_tokens() {
    refused(
        &decodex(&["chat", "--model", NO_MODEL, "--max-new-tokens", "0"]),
        &["--max-new-tokens"],
    );
}

#[test]
fn logits_refuses_missing_models_empty_or_unknown_text_and_adapters_on_gpt() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    let logits = |model: &Path, text: &str, out: &Path, extra: &[&str]| {
        let mut a = vec![
            "logits",
            "--model",
            s(model),
            "--text",
            text,
            "--out",
            s(out),
        ];
        a.extend_from_slice(extra);
        decodex(&a)
    };
    let out = p("logits.safetensors");
    let old = existing(&out);
    refused(
        &logits(Path::new(NO_MODEL), "hi", &out, &["--force"]),
        &[NO_MODEL, "not found"],
    );
    unchanged(&out, &old);
    let run = common::trained_model(d.path(), 2);
    let llama = common::tiny_llama(d.path(), "llama", common::LLAMA_CHARS);
    let fresh = p("fresh.safetensors");
    for model in [&run, &llama] {
        refused(&logits(model, "", &fresh, &[]), &["--text", "no tokens"]);
    }
    refused(
        &logits(&run, "ten \u{20ac}", &fresh, &[]),
        &["'\u{20ac}'", "not in the char tokenizer's vocabulary"],
    );
    refused(
        &logits(&llama, "hi", &fresh, &["--adapter", s(&p("nope"))]),
        &["nope", "adapter_config.json"],
    );
    refused(
        &logits(&run, "hi", &fresh, &["--adapter", s(&p("nope"))]),
        &["Llama-family"],
    );
    absent(&fresh);
}

/// A text longer than the model's context used to be cut to the context without a word
/// (src/cli/commands.rs `logits`: `ids.truncate(block_size)`), where `generate` refused such a
/// prompt.
#[test]
fn logits_refuses_text_longer_than_the_context() {
    let d = tempfile::tempdir().unwrap();
    let run = common::trained_model(d.path(), 2); // block_size 16
    let out = d.path().join("l.safetensors");
    refused(
        &decodex(&[
            "logits",
            "--model",
            s(&run),
            "--text",
            &"the king ".repeat(5),
            "--out",
            s(&out),
        ]),
        &["45", "context"],
    );
    absent(&out);
}

#[test]
fn summarize_refuses_malformed_records_and_bad_flags_before_loading() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    let out = p("summaries.txt");
    let old = existing(&out);
    let summarize = |input: &Path, extra: &[&str]| {
        let mut a = vec![
            "summarize",
            "--model",
            NO_MODEL,
            "--input",
            s(input),
            "--out",
            s(&out),
            "--force",
        ];
        a.extend_from_slice(extra);
        decodex(&a)
    };
    let ok = "{\"document\": \"#Person1#: Hi.\", \"summary\": \"A greeting.\"}\n";
    for (name, second, needle) in [
        (
            "missing.jsonl",
            "{\"summary\": \"x\"}",
            "missing field \"document\"",
        ),
        ("not_json.jsonl", "document: hi", "not JSON"),
        (
            "array.jsonl",
            "{\"document\": [\"hi\"]}",
            "\"document\" must be a string",
        ),
        (
            "summary.jsonl",
            "{\"document\": \"hi\", \"summary\": 3}",
            "\"summary\" must be a string",
        ),
    ] {
        std::fs::write(p(name), format!("{ok}{second}\n")).unwrap();
        refused(&summarize(&p(name), &[]), &[name, "line 2", needle]);
    }
    std::fs::write(p("empty.jsonl"), "\n").unwrap();
    refused(
        &summarize(&p("empty.jsonl"), &[]),
        &["empty.jsonl", "no documents"],
    );
    std::fs::write(p("ok.jsonl"), ok).unwrap();
    refused(
        &summarize(&p("ok.jsonl"), &["--max-new-tokens", "0"]),
        &["--max-new-tokens"],
    );
    refused(
        &summarize(&p("ok.jsonl"), &["--batch-size", "0"]),
        &["--batch-size"],
    );
    refused(
        &summarize(&p("ok.jsonl"), &["--strategy", "sample"]),
        &["--strategy \"sample\"", "greedy, beam"],
    );
    refused(
        &decodex(&["summarize", "--model", NO_MODEL]),
        &["--input", "required"],
    );
    refused(&summarize(&p("nope.jsonl"), &[]), &["nope.jsonl"]);
    unchanged(&out, &old);
}

/// `--num-beams 0` used to be refused only once the model was loaded (BeamConfig::validate
/// inside beam_search), where every other flag of src/cli/tasks.rs was checked before.
#[test]
fn summarize_checks_num_beams_before_loading() {
    let d = tempfile::tempdir().unwrap();
    let input = d.path().join("ok.jsonl");
    std::fs::write(&input, "{\"document\": \"#Person1#: Hi.\"}\n").unwrap();
    refused(
        &decodex(&[
            "summarize",
            "--model",
            NO_MODEL,
            "--input",
            s(&input),
            "--strategy",
            "beam",
            "--num-beams",
            "0",
        ]),
        &["num_beams"],
    );
}

#[test]
fn answer_refuses_missing_inputs_and_non_squad_files() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    let out = p("predictions.json");
    let answer = |extra: &[&str]| {
        let mut a = vec!["answer", "--model", NO_MODEL, "--out", s(&out)];
        a.extend_from_slice(extra);
        decodex(&a)
    };
    refused(&answer(&[]), &["--input", "--question"]);
    refused(
        &answer(&["--question", "Where?"]),
        &["--question needs --context"],
    );
    let data = squad_file(d.path());
    refused(
        &answer(&["--input", s(&data), "--question", "Where?"]),
        &["--input", "--question"],
    );
    std::fs::write(p("lines.jsonl"), "{\"document\": \"hi\"}\n").unwrap();
    refused(
        &answer(&["--input", s(&p("lines.jsonl"))]),
        &["lines.jsonl", "not a SQuAD dataset"],
    );
    refused(&answer(&["--input", s(&p("nope.json"))]), &["nope.json"]);
    refused(
        &answer(&["--input", s(&data), "--limit", "0"]),
        &["squad.json", "no questions"],
    );
    refused(
        &answer(&["--input", s(&data), "--max-new-tokens", "0"]),
        &["--max-new-tokens"],
    );
    absent(&out);
}

#[test]
fn quickstart_refuses_zero_iterations_and_missing_presets() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    refused(
        &decodex(&["quickstart", "--out", s(&out), "--max-iters", "0"]),
        &["--max-steps must be at least 1"],
    );
    absent(&out);
    refused(
        &decodex(&[
            "quickstart",
            "--out",
            s(&out),
            "--config",
            s(&d.path().join("nope.toml")),
        ]),
        &["nope.toml", "No such file"],
    );
    absent(&out);
}

// --- empty inputs and existing outputs ----------------------------------------------------

/// An empty `--prompts` file and empty `--hyp`/`--ref` files used to exit 0 (with no output,
/// or a score of nothing; sacreBLEU refuses them): each is one error line naming the file.
#[test]
fn empty_prompt_and_hypothesis_files_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    std::fs::write(p("empty.jsonl"), "").unwrap();
    std::fs::write(p("blank.jsonl"), "\n  \n").unwrap();
    std::fs::write(p("empty.txt"), "").unwrap();
    std::fs::write(p("one.txt"), "a cat\n").unwrap();
    let run = common::trained_model(d.path(), 2);
    for f in ["empty.jsonl", "blank.jsonl"] {
        refused(
            &decodex(&["generate", "--model", s(&run), "--prompts", s(&p(f))]),
            &[f, "no prompts"],
        );
    }
    for metric in ["bleu", "rouge"] {
        let eval =
            |hyp: &str, r: &str| decodex(&["eval", metric, "--hyp", s(&p(hyp)), "--ref", s(&p(r))]);
        refused(&eval("empty.txt", "empty.txt"), &["empty.txt", "empty"]);
        refused(&eval("empty.txt", "one.txt"), &["empty.txt", "empty"]);
        refused(&eval("one.txt", "empty.txt"), &["empty.txt", "0 lines"]);
    }
}

/// `embed` used to overwrite its output silently while `index build` refused an existing
/// folder: every command that writes refuses an existing output (a file, or a folder that is
/// not empty) unless --force, before loading anything, and leaves it as it was.
#[test]
fn every_writing_command_refuses_an_existing_output_unless_forced() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    let run = common::trained_model(d.path(), 2);
    let corpus = p("c.txt");
    std::fs::write(p("texts.txt"), "one text\nanother text\n").unwrap();
    std::fs::write(
        p("docs.jsonl"),
        "{\"document\": \"a b\", \"summary\": \"a\"}\n",
    )
    .unwrap();
    let cfg = p("ok.toml");
    let (file, dir) = (p("taken.npy"), p("taken"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("keep.txt"), "keep").unwrap();
    let (texts, docs, metrics, v) = (
        p("texts.txt"),
        p("docs.jsonl"),
        run.join("metrics.jsonl"),
        p("v.npy"),
    );
    // (the arguments before --out, the output)
    let cases: Vec<(Vec<&str>, &Path)> = vec![
        (
            vec![
                "tokenizer",
                "train",
                "--input",
                s(&corpus),
                "--kind",
                "char",
            ],
            &file,
        ),
        (
            vec!["data", "prepare", "--input", s(&corpus), "--kind", "char"],
            &dir,
        ),
        (vec!["train", "--config", s(&cfg)], &dir),
        (vec!["export", "--model", s(&run)], &dir),
        (vec!["plot", s(&metrics)], &file),
        (vec!["logits", "--model", s(&run), "--text", "ab"], &file),
        (
            vec!["embed", "--model", s(&run), "--input", s(&texts)],
            &file,
        ),
        (
            vec!["index", "build", "--model", s(&run), "--input", s(&texts)],
            &dir,
        ),
        (
            vec!["summarize", "--model", NO_MODEL, "--input", s(&docs)],
            &file,
        ),
        (
            vec!["merge", "--model", NO_MODEL, "--adapter", NO_MODEL],
            &dir,
        ),
        (
            vec!["finetune", "--model", NO_MODEL, "--input", s(&docs)],
            &dir,
        ),
    ];
    let keep = std::fs::read(dir.join("keep.txt")).unwrap();
    for (before, out) in &cases {
        let old = existing(&file);
        let mut args = before.clone();
        args.extend(["--out", s(out)]);
        refused(&decodex(&args), &[s(out), "already exists", "--force"]);
        unchanged(&file, &old);
        assert_eq!(
            std::fs::read(dir.join("keep.txt")).unwrap(),
            keep,
            "{args:?}"
        );
    }
    // translate's --attention-png too (checked before the model loads).
    let old = existing(&file);
    refused(
        &decodex(&[
            "translate",
            "--model",
            NO_MODEL,
            "--input",
            s(&corpus),
            "--attention-png",
            s(&file),
        ]),
        &[s(&file), "already exists", "--force"],
    );
    unchanged(&file, &old);
    // --force overwrites a file and writes into a folder.
    let out = decodex(&[
        "embed",
        "--model",
        s(&run),
        "--input",
        s(&texts),
        "--out",
        s(&v),
    ]);
    assert!(out.status.success());
    let again = |force: &[&str]| {
        let mut a = vec!["embed", "--model", s(&run), "--input", s(&corpus), "--out"];
        a.push(s(&v));
        a.extend(force);
        decodex(&a)
    };
    let before = std::fs::read(&v).unwrap();
    refused(&again(&[]), &["v.npy", "already exists"]);
    assert_eq!(std::fs::read(&v).unwrap(), before);
    assert!(again(&["--force"]).status.success());
    assert_ne!(std::fs::read(&v).unwrap(), before);
    let built = decodex(&[
        "index",
        "build",
        "--model",
        s(&run),
        "--input",
        s(&texts),
        "--out",
        s(&dir),
        "--force",
        "--json",
    ]);
    assert_eq!(common::json_of(&built, "index build --force")["count"], 2);
    assert!(
        !dir.join("keep.txt").exists(),
        "the old folder was replaced"
    );
}
