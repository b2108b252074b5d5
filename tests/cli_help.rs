//! `--help` of `decodex` and of every subcommand, found by walking the "Commands:" sections of
//! the help itself (so a new subcommand is covered without a change here): each exits 0 and
//! lists its flags, every one with a description. Also: the old flag spellings kept as aliases
//! still parse, and decoding flags a command does not take are refused before loading.

mod common;

use std::process::Command;

fn help(path: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_decodex"))
        .args(path)
        .arg("--help")
        .output()
        .expect("the decodex binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "decodex {} --help: exit {:?}, stderr: {}",
        path.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The lines of the section that starts with `title` (up to the next unindented line).
fn section<'a>(text: &'a str, title: &str) -> Vec<&'a str> {
    text.lines()
        .skip_while(|l| !l.starts_with(title))
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .filter(|l| !l.trim().is_empty())
        .collect()
}

/// The subcommand names of a help text's "Commands:" section (without `help`).
fn subcommands(text: &str) -> Vec<String> {
    section(text, "Commands:")
        .iter()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect()
}

/// The flags of every options section ("Options:", "Decoding options:", ...), each with
/// whether it has a description.
fn flags(text: &str) -> Vec<(String, bool)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut in_options = false;
    for (i, l) in lines.iter().enumerate() {
        if !l.starts_with(' ') && !l.is_empty() {
            in_options = l.ends_with("ptions:");
            continue;
        }
        let t = l.trim_start();
        let indent = l.len() - t.len();
        if !in_options || indent > 6 || !(t.starts_with('-')) {
            continue;
        }
        let name = t
            .split([',', ' ', '='])
            .find(|w| w.starts_with("--"))
            .unwrap_or(t.split_whitespace().next().unwrap_or(""))
            .to_string();
        // The description follows two spaces on the line, or on the next, indented further.
        let spec_end = t.find("  ").map(|k| t[k..].trim()).unwrap_or("");
        let next = lines.get(i + 1).copied().unwrap_or("");
        let next_indent = next.len() - next.trim_start().len();
        let described =
            !spec_end.is_empty() || (next_indent > indent + 2 && !next.trim().is_empty());
        out.push((name, described));
    }
    out
}

#[test]
fn every_command_help_exits_zero_and_describes_its_flags() {
    let mut queue: Vec<Vec<String>> = vec![vec![]];
    let mut seen = 0;
    while let Some(path) = queue.pop() {
        let text = help(&path);
        let what = format!("decodex {} --help", path.join(" "));
        assert!(text.contains("Usage:"), "{what}: no usage\n{text}");
        let fl = flags(&text);
        let names: Vec<&str> = fl.iter().map(|(n, _)| n.as_str()).collect();
        for required in ["--help", "--json", "--threads"] {
            assert!(names.contains(&required), "{what} lacks {required}\n{text}");
        }
        for (name, described) in &fl {
            assert!(described, "{what}: {name} has no description\n{text}");
        }
        let subs = subcommands(&text);
        if subs.is_empty() {
            // A leaf: it takes flags of its own besides the global ones and --help.
            assert!(
                names
                    .iter()
                    .any(|n| !["--help", "--json", "--threads"].contains(n))
                    || text.contains("Arguments:"),
                "{what} lists no flags of its own\n{text}"
            );
        }
        for s in subs {
            let mut p = path.clone();
            p.push(s);
            queue.push(p);
        }
        seen += 1;
    }
    // decodex itself, its commands and their nested commands.
    assert!(seen > 30, "only {seen} help texts found");
}

#[test]
fn decoding_commands_list_their_decoding_flags_only() {
    let text = help(&["generate".into()]);
    for f in [
        "--max-new-tokens",
        "--do-sample",
        "--temperature",
        "--top-k",
        "--top-p",
        "--min-p",
        "--typical-p",
        "--repetition-penalty",
        "--no-repeat-ngram-size",
        "--num-beams",
        "--num-return-sequences",
        "--length-penalty",
        "--early-stopping",
        "--num-beam-groups",
        "--diversity-penalty",
        "--seed",
        "--model",
        "--adapter",
        "--dequantize",
    ] {
        assert!(text.contains(f), "generate --help lacks {f}");
    }
    let chat = help(&["chat".into()]);
    assert!(chat.contains("--temperature") && chat.contains("[default: 0.7]"));
    assert!(!chat.contains("--num-beams"), "{chat}");
    let translate = help(&["translate".into()]);
    assert!(translate.contains("--num-beams") && translate.contains("--do-sample"));
    assert!(!translate.contains("--max-new-tokens"), "{translate}");
}

#[test]
fn old_spellings_still_parse() {
    use common::{assert_clear_error, decodex};
    // (bench train --iters for --max-steps: tests/cli_bad_input.rs.)
    // translate --beam / --n-best are --num-beams / --num-return-sequences; --sample is
    // --do-sample.
    let translate = |extra: &[&str]| {
        let mut a = vec![
            "translate",
            "--model",
            "/nonexistent",
            "--input",
            "/nonexistent",
        ];
        a.extend_from_slice(extra);
        decodex(&a)
    };
    assert_clear_error(
        &translate(&["--beam", "2", "--n-best", "3"]),
        &["--num-return-sequences (3)", "--num-beams (2)"],
    );
    assert_clear_error(
        &translate(&["--beam", "2", "--sample"]),
        &["--do-sample decodes with --num-beams 1"],
    );
    // generate --ban / --stop / --tokenizer are --suppress-tokens / --stop-strings /
    // --tokenizer-file; the flags are checked before the model is looked for.
    let out = decodex(&[
        "generate",
        "--model",
        "/nonexistent",
        "--prompt",
        "a",
        "--ban",
        "1",
        "--stop",
        "x",
        "--tokenizer",
        "/nonexistent.json",
        "--greedy",
        "--do-sample",
    ]);
    assert_clear_error(&out, &["--do-sample", "--greedy"]);
    // A decoding flag the command does not take.
    assert_clear_error(
        &decodex(&["chat", "--model", "/nonexistent", "--top-k", "3"]),
        &["--top-k does not apply to `decodex chat`"],
    );
    // A value outside a closed set: one line naming the flag and the values.
    assert_clear_error(
        &decodex(&[
            "generate",
            "--model",
            "/x",
            "--prompt",
            "a",
            "--early-stopping",
            "maybe",
        ]),
        &["--early-stopping \"maybe\"", "\"never\""],
    );
    // --json is global: before or after the subcommand.
    assert_clear_error(
        &decodex(&[
            "--json",
            "eval",
            "squad",
            "--data",
            "/nonexistent.json",
            "--predictions",
            "/p",
        ]),
        &["/nonexistent.json"],
    );
}

/// The top-level help used to say that `eval` gives perplexity, BLEU and chrF only and that
/// `generate` reads "a model directory", and `summarize --help` offered answer's --question and
/// --context.
#[test]
fn help_texts_say_what_each_command_takes() {
    let top = help(&[]);
    let line = |name: &str| {
        top.lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{top}"))
            .to_string()
    };
    let eval = line("eval");
    let subs = subcommands(&help(&["eval".into()]));
    assert_eq!(
        subs,
        ["perplexity", "bleu", "rouge", "squad", "retrieval", "sts"],
        "eval's metrics changed: update its description"
    );
    for metric in [
        "perplexity",
        "BLEU",
        "chrF",
        "ROUGE",
        "SQuAD",
        "nDCG@10",
        "STS",
    ] {
        assert!(eval.contains(metric), "eval's line lacks {metric}: {eval}");
    }
    let generate = line("generate");
    assert!(
        generate.contains("GGUF") && !generate.contains("model directory"),
        "{generate}"
    );
    let summarize = help(&["summarize".into()]);
    for f in ["--question", "--context"] {
        assert!(
            !summarize.contains(f),
            "summarize --help offers {f}\n{summarize}"
        );
    }
    let answer = help(&["answer".into()]);
    assert!(answer.contains("--question") && answer.contains("--context"));
    common::assert_clear_error(
        &common::decodex(&["summarize", "--model", "/x", "--question", "q"]),
        &["--question"],
    );
}
