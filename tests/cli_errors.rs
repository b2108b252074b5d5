//! Bad input gets one clear line on stderr naming the problem and the file, exit code 2, and
//! nothing is overwritten.

mod common;

use common::{assert_clear_error, decodex};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn missing_corpus() {
    let d = tmp();
    let out_dir = d.path().join("out");
    let missing = d.path().join("nope.txt");
    let out = decodex(&[
        "data",
        "prepare",
        "--input",
        missing.to_str().unwrap(),
        "--tokenizer",
        "char",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_clear_error(&out, &["nope.txt"]);
    assert!(!out_dir.exists());
}

#[test]
fn empty_corpus() {
    let d = tmp();
    let corpus = d.path().join("empty.txt");
    std::fs::write(&corpus, "").unwrap();
    let out_dir = d.path().join("out");
    let out = decodex(&[
        "data",
        "prepare",
        "--input",
        corpus.to_str().unwrap(),
        "--tokenizer",
        "char",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_clear_error(&out, &["empty.txt", "empty"]);
    assert!(!out_dir.join("train.bin").exists());
}

#[test]
fn non_utf8_corpus() {
    let d = tmp();
    let corpus = d.path().join("latin1.txt");
    std::fs::write(&corpus, b"caf\xe9 au lait\n".repeat(100)).unwrap();
    let out_dir = d.path().join("out");
    let out = decodex(&[
        "data",
        "prepare",
        "--input",
        corpus.to_str().unwrap(),
        "--tokenizer",
        "char",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_clear_error(&out, &["latin1.txt", "UTF-8"]);
    assert!(!out_dir.join("train.bin").exists());
}

#[test]
fn heads_do_not_divide_embedding() {
    let d = tmp();
    let cfg = common::write_config(
        d.path(),
        "bad.toml",
        "",
        "",
        &[("n_head = 2", "n_head = 3")],
    );
    let out = decodex(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        d.path().join("run").to_str().unwrap(),
    ]);
    assert_clear_error(&out, &["bad.toml", "n_embd (32)", "n_head (3)"]);
}

#[test]
fn unknown_config_key() {
    let d = tmp();
    let cfg = common::write_config(d.path(), "typo.toml", "", "learning_rat = 1.0", &[]);
    let out = decodex(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        d.path().join("run").to_str().unwrap(),
    ]);
    assert_clear_error(&out, &["typo.toml", "learning_rat"]);
}

/// Trains a 2-step model into `dir/run` and returns its path.
fn trained_model(d: &std::path::Path) -> std::path::PathBuf {
    common::trained_model(d, 2)
}

#[test]
fn truncated_or_corrupt_checkpoint() {
    let d = tmp();
    let run = trained_model(d.path());
    let model = run.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let out = decodex(&[
        "generate",
        "--model",
        run.to_str().unwrap(),
        "--prompt",
        "ROMEO:",
    ]);
    assert_clear_error(&out, &["model.safetensors", "truncated or corrupt"]);
    std::fs::write(&model, b"this is not a safetensors file at all").unwrap();
    let out = decodex(&[
        "generate",
        "--model",
        run.to_str().unwrap(),
        "--prompt",
        "ROMEO:",
    ]);
    assert_clear_error(&out, &["model.safetensors", "truncated or corrupt"]);
    // Resuming from it fails the same way and leaves the files as they were.
    let before = std::fs::read(run.join("optimizer.safetensors")).unwrap();
    let out = decodex(&[
        "train",
        "--config",
        d.path().join("ok.toml").to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--resume",
    ]);
    assert_clear_error(&out, &["model.safetensors"]);
    assert_eq!(
        before,
        std::fs::read(run.join("optimizer.safetensors")).unwrap()
    );
}

#[test]
fn tokenizer_model_vocab_mismatch() {
    let d = tmp();
    let run = trained_model(d.path());
    // A tokenizer with more tokens than the model's embedding has rows.
    let other = d.path().join("other.txt");
    let text: String = (0..3000)
        .map(|i| char::from_u32(0x4e00 + i).unwrap())
        .collect();
    std::fs::write(&other, text).unwrap();
    let tok = run.join("tokenizer.json");
    let out = decodex(&[
        "tokenizer",
        "train",
        "--input",
        other.to_str().unwrap(),
        "--kind",
        "char",
        "--out",
        tok.to_str().unwrap(),
        "--force",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = decodex(&[
        "generate",
        "--model",
        run.to_str().unwrap(),
        "--prompt",
        "a",
    ]);
    assert_clear_error(&out, &["tokenizer.json", "does not match"]);
}

#[test]
fn train_refuses_to_overwrite_a_checkpoint() {
    let d = tmp();
    let run = trained_model(d.path());
    let before = std::fs::read(run.join("model.safetensors")).unwrap();
    let out = decodex(&[
        "train",
        "--config",
        d.path().join("ok.toml").to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_clear_error(&out, &["--resume"]);
    assert_eq!(
        before,
        std::fs::read(run.join("model.safetensors")).unwrap()
    );
}

#[test]
fn invalid_sampling_flags_fail_before_loading() {
    // The model path does not exist: each flag is refused before it would be opened.
    let cases: [(&[&str], &str); 5] = [
        (&["--temperature=-1"], "temperature"),
        (&["--top-p", "0"], "top-p"),
        (&["--top-p", "1.5"], "top-p"),
        (
            &[
                "--strategy",
                "beam",
                "--num-beams",
                "2",
                "--num-return-sequences",
                "3",
            ],
            "num_return_sequences",
        ),
        (&["--strategy", "nucleus"], "strategy"),
    ];
    for (flags, needle) in cases {
        let mut args = vec!["generate", "--model", "/nonexistent", "--prompt", "a"];
        args.extend_from_slice(flags);
        assert_clear_error(&decodex(&args), &[needle]);
    }
    assert_clear_error(
        &decodex(&["generate", "--model", "/nonexistent", "--prompt", ""]),
        &["empty"],
    );
}

/// Bad GGUF files: another architecture, an unsupported quantization, a truncated file; and a
/// prompt longer than the model's context.
#[test]
fn bad_gguf_files_and_long_prompts_are_refused() {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    let d = tmp();
    // `generate` on `path` fails with one line holding each of `needles`.
    let refused = |path: &std::path::Path, needles: &[&str]| {
        let out = decodex(&[
            "generate",
            "--model",
            path.to_str().unwrap(),
            "--prompt",
            "a",
        ]);
        assert_clear_error(&out, needles);
    };
    // A minimal GGUF: one tensor, metadata naming the architecture.
    let write = |name: &str, arch: &str, dtype: GgmlDType| {
        let path = d.path().join(name);
        let t = Tensor::zeros((64, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, dtype).unwrap();
        let arch = gguf_file::Value::String(arch.into());
        let mut f = std::fs::File::create(&path).unwrap();
        gguf_file::write(
            &mut f,
            &[("general.architecture", &arch)],
            &[("token_embd.weight", &q)],
        )
        .unwrap();
        path
    };
    let gpt2 = write("gpt2.gguf", "gpt2", GgmlDType::F32);
    refused(
        &gpt2,
        &["gpt2.gguf", "architecture \"gpt2\" is not supported"],
    );
    let q81 = write("q81.gguf", "llama", GgmlDType::Q8_1);
    refused(&q81, &["q81.gguf", "quantization Q8_1", "not supported"]);
    // Truncated: a real header whose tensor data is cut.
    let full = std::fs::read(write("whole.gguf", "llama", GgmlDType::F32)).unwrap();
    let cut = d.path().join("cut.gguf");
    std::fs::write(&cut, &full[..full.len() - 100]).unwrap();
    refused(&cut, &["cut.gguf", "truncated or corrupt"]);
    std::fs::write(&cut, b"GGUF but not really").unwrap();
    refused(&cut, &["cut.gguf", "truncated or corrupt"]);
    // A prompt longer than a trained GPT's context (16 positions).
    let run = trained_model(d.path());
    let long = "a".repeat(40);
    let out = decodex(&[
        "generate",
        "--model",
        run.to_str().unwrap(),
        "--prompt",
        &long,
        "--strategy",
        "beam",
    ]);
    assert_clear_error(&out, &["context"]);
}

#[test]
fn bleu_reference_with_another_line_count() {
    let d = tmp();
    let hyp = d.path().join("hyp.txt");
    let good = d.path().join("ref.txt");
    let short = d.path().join("short_ref.txt");
    std::fs::write(&hyp, "a cat sat\non the mat\n").unwrap();
    std::fs::write(&good, "a cat sat\non a mat\n").unwrap();
    std::fs::write(&short, "a cat sat\n").unwrap();
    let out = decodex(&[
        "eval",
        "bleu",
        "--hyp",
        hyp.to_str().unwrap(),
        "--ref",
        good.to_str().unwrap(),
        "--ref",
        short.to_str().unwrap(),
    ]);
    assert_clear_error(&out, &["short_ref.txt", "1 lines", "hyp.txt", "has 2"]);
    assert!(out.stdout.is_empty());
}

#[test]
fn bleu_missing_or_non_utf8_file() {
    let d = tmp();
    let hyp = d.path().join("hyp.txt");
    std::fs::write(&hyp, "a cat\n").unwrap();
    let missing = d.path().join("nope.txt");
    let bleu = |hyp: &std::path::Path, r: &std::path::Path| {
        decodex(&[
            "eval",
            "bleu",
            "--hyp",
            hyp.to_str().unwrap(),
            "--ref",
            r.to_str().unwrap(),
        ])
    };
    assert_clear_error(&bleu(&hyp, &missing), &["nope.txt"]);
    assert_clear_error(&bleu(&missing, &hyp), &["nope.txt"]);
    let latin1 = d.path().join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9\n").unwrap();
    assert_clear_error(&bleu(&hyp, &latin1), &["latin1.txt", "UTF-8"]);
}

/// A `DECODEX_ISA` that is no tier, or a tier above the CPU's, is one clear line before anything
/// runs; `--version` names the tier that runs and the CPU features.
#[test]
fn kernel_tier_is_reported_and_checked() {
    let run = |isa: &str, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_decodex"))
            .args(args)
            .env("DECODEX_ISA", isa)
            .output()
            .unwrap()
    };
    let d = tmp();
    let out_dir = d.path().join("out");
    let args = [
        "data",
        "prepare",
        "--input",
        "c.txt",
        "--tokenizer",
        "char",
        "--out",
    ];
    let out = run("sse9", &[&args[..], &[out_dir.to_str().unwrap()]].concat());
    assert_clear_error(
        &out,
        &["DECODEX_ISA", "sse9", "portable, neon, avx2 or avx512"],
    );
    assert!(!out_dir.exists());
    let version = run("portable", &["--version"]);
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(version.status.success(), "{text}");
    assert!(text.contains("isa portable; cpu features:"), "{text}");
    let best = run("", &["--version"]);
    let text = String::from_utf8_lossy(&best.stdout);
    assert!(text.contains("isa "), "{text}");
}

/// GGUF errors used to end in an unclosed parenthesis (candle's message went on over more
/// lines) and to advise "re-train or restore it from a backup" for a downloaded file.
#[test]
fn gguf_errors_are_one_closed_sentence_that_advises_a_new_download() {
    let d = tmp();
    let cut = d.path().join("model.gguf");
    let cases: [&[u8]; 3] = [b"GGUF but not really", b"hi\n", b"GGUF\x03\x00\x00\x00"];
    for bytes in cases {
        std::fs::write(&cut, bytes).unwrap();
        let out = decodex(&[
            "generate",
            "--model",
            cut.to_str().unwrap(),
            "--prompt",
            "a",
        ]);
        assert_clear_error(
            &out,
            &["model.gguf", "truncated or corrupt", "download it again"],
        );
        let line = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
        assert_eq!(
            line.matches('(').count(),
            line.matches(')').count(),
            "unbalanced parentheses: {line}"
        );
        assert!(!line.contains("re-train"), "{line}");
    }
}

/// A bad `--out` path is named with the operating system's reason, not called a config error.
#[test]
fn a_bad_out_path_is_named_as_such() {
    let d = tmp();
    let cfg = common::write_config(d.path(), "ok.toml", "", "", &[]);
    let blocked = d.path().join("c.txt").join("run");
    let out = decodex(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        blocked.to_str().unwrap(),
    ]);
    assert_clear_error(&out, &["c.txt/run", "Not a directory"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("config"));
}
