//! The README's commands run: every command of its ```sh, ```bash and ```console blocks runs in
//! README order against the built binary (a `decodex` symlink first on the PATH), in a temporary
//! folder, and must succeed; a ```console block's output lines must be what its command prints
//! on stdout. So that the whole README runs in about two minutes on 2 cores, the data folder the
//! commands see (`../shared/data` and `DECODEX_DATA`) holds cut copies of the real files
//! ([`DATA`]), the two sequence-to-sequence presets run one epoch ([`CONFIGS`]) and the long
//! commands get smaller sizes ([`REDUCED`]). A command neither run nor listed in [`SKIPPED`]
//! cannot exist; an entry of these tables that no README command uses fails the test, so the
//! tables follow the README.
//!
//! Needs the data folder (`DECODEX_DATA`) and the two models of `scripts/fetch_models.sh`.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// README commands not run, and why.
const SKIPPED: &[(&str, &str)] = &[
    (
        "cargo install --path .",
        "installs the binary this test runs from the build folder",
    ),
    (
        "scripts/fetch_models.sh && cargo test --release",
        "downloads the models with pip, and runs this very test suite",
    ),
    (
        "decodex --threads 2 serve --model $M --embedding-model $E --port 8080 --parallel 4",
        "a server runs until it is stopped: tests/serve.rs starts it on loopback and calls \
         every route",
    ),
    (
        "curl -s localhost:8080/v1/chat/completions -d '{\"messages\": [{\"role\": \"user\", \"content\": \"What is 2 + 2?\"}], \"temperature\": 0}'",
        "calls the server above (tests/serve.rs makes the same request)",
    ),
];

/// Text replaced in every command: the README's spelling, what runs.
fn rewrites() -> Vec<(&'static str, String)> {
    vec![
        // The quickstart runs the built binary.
        ("cargo run --release --", "decodex".into()),
        // The models where this machine keeps them (DECODEX_MODELS).
        (
            "~/.cache/decodex/models",
            common::models_dir().to_string_lossy().into_owned(),
        ),
    ]
}

/// Smaller sizes: (README command, without its trailing comment; flags set to these values,
/// replacing the command's own value of the flag or appended).
const REDUCED: &[(&str, &[(&str, &str)])] = &[
    ("cargo run --release -- quickstart", &[("--max-steps", "20")]),
    (
        "decodex train --config configs/shakespeare-char.toml --out runs/shakespeare-char --force",
        &[("--max-iters", "20")],
    ),
    (
        "decodex train --config configs/shakespeare-char.toml --out runs/shakespeare-char --max-iters 1000 --force",
        &[("--max-iters", "20")],
    ),
    (
        "decodex train --config configs/shakespeare-char.toml --out runs/shakespeare-char --resume",
        &[("--max-iters", "40")],
    ),
    (
        "decodex train --config configs/gutenberg-bpe.toml --out runs/gutenberg-bpe --json",
        &[("--max-iters", "5")],
    ),
    (
        "decodex generate --model $M --prompts prompts.jsonl --strategy beam --num-beams 4 --num-return-sequences 2 --early-stopping true --json",
        &[("--max-new-tokens", "8")],
    ),
    (
        "decodex generate --model $M --prompt \"Once upon a time\" --strategy sample --top-p 0.9 --min-p 0.05 --repetition-penalty 1.1 --seed 1 --logprobs --json",
        &[("--max-new-tokens", "16")],
    ),
    (
        "decodex generate --model $M --prompts prompts.jsonl --strategy greedy --batch-size 8 --json",
        &[("--max-new-tokens", "16")],
    ),
    (
        "decodex generate --model $M --dequantize --prompt \"def fib(n):\" --strategy greedy --max-new-tokens 32",
        &[("--max-new-tokens", "8")],
    ),
    (
        "decodex finetune --model $M --input ../shared/data/sum/dialogsum/train.jsonl.gz --task summarize --out runs/dialogsum-lora --time-limit-min 60",
        FINETUNE,
    ),
    (
        "decodex finetune --model $M --input ../shared/data/qa/squad/train-v1.1.every4th.jsonl.gz --task qa --out runs/squad-lora --time-limit-min 60",
        FINETUNE,
    ),
    (
        "decodex summarize --model $M --adapter runs/dialogsum-lora --input ../shared/data/sum/dialogsum/test.jsonl --out hyp.txt --json",
        &[("--max-new-tokens", "8")],
    ),
    (
        "decodex summarize --model $M --dequantize --input ../shared/data/sum/dialogsum/test.jsonl --out summaries.txt --json",
        &[("--max-new-tokens", "8")],
    ),
    (
        "decodex answer --model $M --adapter runs/squad-lora --input ../shared/data/qa/squad/dev-v1.1.json --limit 1000 --out pred.json --json",
        &[("--max-new-tokens", "8")],
    ),
    (
        "decodex bench train --config configs/shakespeare-char.toml --max-steps 50 --json",
        &[("--max-steps", "2"), ("--warmup", "1")],
    ),
    (
        "decodex --threads 2 bench decode --model $M --num-beams 4 --json",
        &[("--prompt-tokens", "16"), ("--new-tokens", "8"), ("--reps", "1")],
    ),
    (
        "decodex --threads 2 bench embed --model $E --input $S/scifact/queries.jsonl --json",
        &[("--rounds", "1")],
    ),
];

/// Fine-tuning: one step of short examples.
const FINETUNE: &[(&str, &str)] = &[
    ("--max-steps", "1"),
    ("--batch-tokens", "384"),
    ("--max-len", "384"),
    ("--overlong", "truncate"),
    ("--eval-examples", "2"),
];

/// The sequence-to-sequence presets, one epoch of a small model with a small vocabulary:
/// (config, TOML lines replaced).
const CONFIGS: &[(&str, &[(&str, &str)])] = &[
    (
        "multi30k-transformer.toml",
        &[
            ("epochs = 20", "epochs = 1"),
            ("vocab_size = 8000", "vocab_size = 300"),
            ("d_model = 256", "d_model = 32"),
            ("d_ff = 512", "d_ff = 64"),
        ],
    ),
    (
        "multi30k-gru.toml",
        &[
            ("epochs = 30", "epochs = 1"),
            ("vocab_size = 8000", "vocab_size = 300"),
            ("emb_dim = 256", "emb_dim = 32"),
            ("enc_hidden = 256", "enc_hidden = 32"),
            ("dec_hidden = 512", "dec_hidden = 64"),
            ("attn_dim = 256", "attn_dim = 32"),
        ],
    ),
];

/// How a data file is cut.
enum Cut {
    /// The whole file.
    Whole,
    /// The first N lines (of the decompressed text for .gz files).
    Lines(usize),
    /// The first N questions of the first paragraph (SQuAD JSON).
    Squad(usize),
    /// The first N judgments (and the header), the queries they judge and the first N
    /// documents of the corpus (BEIR).
    Beir(usize),
}

/// The data folder the README's commands see: (path under it, cut of the real file).
const DATA: &[(&str, Cut)] = &[
    ("lm/tinyshakespeare/input.txt", Cut::Whole),
    ("lm/gutenberg/train.txt.gz", Cut::Lines(500)),
    ("lm/gutenberg/valid.txt", Cut::Lines(200)),
    ("mt/multi30k/train.de", Cut::Lines(100)),
    ("mt/multi30k/train.en", Cut::Lines(100)),
    ("mt/multi30k/val.de", Cut::Lines(10)),
    ("mt/multi30k/val.en", Cut::Lines(10)),
    ("mt/multi30k/test2016.de", Cut::Lines(6)),
    ("mt/multi30k/test2016.en", Cut::Lines(6)),
    ("sum/dialogsum/train.jsonl.gz", Cut::Lines(16)),
    ("sum/dialogsum/test.jsonl", Cut::Lines(2)),
    ("qa/squad/train-v1.1.every4th.jsonl.gz", Cut::Lines(16)),
    ("qa/squad/dev-v1.1.json", Cut::Squad(2)),
    ("search/scifact", Cut::Beir(20)),
    ("search/stsb/sts-test.csv", Cut::Lines(20)),
];

/// Files the README takes as the user's own, written into the working folder first.
const GIVEN: &[(&str, &str)] = &[(
    "more.jsonl",
    "{\"_id\": \"readme-1\", \"title\": \"Vitamin D\", \"text\": \"Vitamin D keeps bones strong.\"}\n",
)];

fn read_text(p: &Path) -> String {
    if p.extension().is_some_and(|e| e == "gz") {
        let mut s = String::new();
        let f = std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(f), &mut s).unwrap();
        s
    } else {
        std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }
}

fn write_text(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    if p.extension().is_some_and(|e| e == "gz") {
        let f = std::fs::File::create(p).unwrap();
        let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        gz.finish().unwrap();
    } else {
        std::fs::write(p, text).unwrap();
    }
}

fn head(text: &str, n: usize) -> String {
    text.lines().take(n).map(|l| format!("{l}\n")).collect()
}

/// Writes the cut copies of [`DATA`] from `real` into `small`.
fn cut_data(real: &Path, small: &Path) {
    for (rel, cut) in DATA {
        let (from, to) = (real.join(rel), small.join(rel));
        match cut {
            Cut::Whole => write_text(&to, &read_text(&from)),
            Cut::Lines(n) => write_text(&to, &head(&read_text(&from), *n)),
            Cut::Squad(n) => {
                let mut v: serde_json::Value = serde_json::from_str(&read_text(&from)).unwrap();
                let article = &mut v["data"][0];
                article["paragraphs"].as_array_mut().unwrap().truncate(1);
                article["paragraphs"][0]["qas"]
                    .as_array_mut()
                    .unwrap()
                    .truncate(*n);
                let first = article.clone();
                v["data"] = serde_json::json!([first]);
                write_text(&to, &v.to_string());
            }
            Cut::Beir(n) => {
                let qrels = head(&read_text(&from.join("qrels/test.tsv")), n + 1);
                let judged: Vec<&str> = qrels
                    .lines()
                    .skip(1)
                    .flat_map(|l| l.split('\t').take(2))
                    .collect();
                let keep = |text: String, lines: usize| -> String {
                    text.lines()
                        .enumerate()
                        .filter(|(i, l)| {
                            *i < lines || {
                                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                                judged.contains(&v["_id"].as_str().unwrap_or(""))
                            }
                        })
                        .map(|(_, l)| format!("{l}\n"))
                        .collect()
                };
                write_text(&to.join("qrels/test.tsv"), &qrels);
                write_text(
                    &to.join("queries.jsonl"),
                    &keep(read_text(&from.join("queries.jsonl")), 0),
                );
                write_text(
                    &to.join("corpus.jsonl"),
                    &keep(read_text(&from.join("corpus.jsonl")), *n),
                );
            }
        }
    }
}

/// One README command: its text and, in a console block, the output shown after it.
struct Example {
    line: usize,
    command: String,
    output: Option<Vec<String>>,
}

/// The commands of the README's sh, bash and console blocks, in order.
fn examples(readme: &str) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut lang: Option<String> = None;
    let mut pending = String::new();
    for (i, raw) in readme.lines().enumerate() {
        if let Some(fence) = raw.strip_prefix("```") {
            lang = match lang {
                None => Some(fence.trim().to_string()),
                Some(_) => None,
            };
            continue;
        }
        let Some(l) = lang.as_deref() else { continue };
        if !["sh", "bash", "console"].contains(&l) {
            continue;
        }
        let text = if l == "console" && pending.is_empty() {
            match raw.strip_prefix("$ ") {
                Some(c) => c,
                None => {
                    // An output line of the last command.
                    let last = out.last_mut().expect("console output after a command");
                    last.output
                        .get_or_insert_with(Vec::new)
                        .push(raw.to_string());
                    continue;
                }
            }
        } else {
            raw
        };
        let text = text.trim();
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        if let Some(start) = text.strip_suffix('\\') {
            pending.push_str(start);
            continue;
        }
        let command = std::mem::take(&mut pending) + text;
        out.push(Example {
            line: i + 1,
            command,
            output: (l == "console").then(Vec::new),
        });
    }
    out
}

/// The command without a trailing `# comment` (outside quotes).
fn strip_comment(c: &str) -> &str {
    let mut quote = None;
    let bytes = c.as_bytes();
    for (i, ch) in c.char_indices() {
        match (quote, ch) {
            (None, '"' | '\'') => quote = Some(ch),
            (Some(q), _) if ch == q => quote = None,
            (None, '#') if i > 0 && bytes[i - 1] == b' ' => return c[..i].trim_end(),
            _ => {}
        }
    }
    c.trim_end()
}

/// `command` with each flag set to its value: an existing `--flag value` is replaced, a
/// missing one appended.
fn set_flags(command: &str, flags: &[(&str, &str)]) -> String {
    let mut words: Vec<String> = command.split(' ').map(String::from).collect();
    for (flag, value) in flags {
        match words.iter().position(|w| w == flag) {
            Some(i) => words[i + 1] = value.to_string(),
            None => words.extend([flag.to_string(), value.to_string()]),
        }
    }
    words.join(" ")
}

/// Whether a line only sets shell variables (`M=…`, `E=…; S=…`).
fn is_assignment(c: &str) -> bool {
    c.split(';').all(|part| {
        let part = part.trim();
        part.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|ch| ch.is_ascii_uppercase() || ch == '_')
        })
    })
}

#[test]
fn every_readme_command_runs() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let examples = examples(&readme);
    assert!(
        examples.len() > 40,
        "only {} README commands found",
        examples.len()
    );
    assert!(common::smollm2().exists() && common::minilm().exists());

    // root/work is where the commands run; root/shared/data is their ../shared/data.
    let root = tempfile::tempdir().unwrap();
    let (work, data) = (root.path().join("work"), root.path().join("shared/data"));
    // The data folder, as the commands would find it (DECODEX_DATA, else ../shared/data).
    let probe = Path::new("lm/tinyshakespeare/input.txt");
    let real = decodex::train::config::resolve_data_path(probe);
    let real = real.ancestors().nth(3).unwrap();
    cut_data(real, &data);
    let bin = root.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_decodex"), bin.join("decodex")).unwrap();
    std::fs::create_dir_all(work.join("configs")).unwrap();
    std::os::unix::fs::symlink(repo.join("scripts"), work.join("scripts")).unwrap();
    for e in std::fs::read_dir(repo.join("configs")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let mut text = std::fs::read_to_string(&p).unwrap();
        for (file, edits) in CONFIGS.iter().filter(|(f, _)| *f == name) {
            for (from, to) in *edits {
                assert!(
                    text.contains(from),
                    "{file} has no {from:?}: update CONFIGS"
                );
                text = text.replace(from, to);
            }
        }
        std::fs::write(work.join("configs").join(&name), text).unwrap();
    }
    for (name, text) in GIVEN {
        std::fs::write(work.join(name), text).unwrap();
    }
    // refs.txt: the references of the summarized test file, one per line.
    let refs: String = read_text(&data.join("sum/dialogsum/test.jsonl"))
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{}\n", v["summary"].as_str().unwrap())
        })
        .collect();
    std::fs::write(work.join("refs.txt"), refs).unwrap();

    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut prelude = String::new();
    let (mut used_skips, mut used_reduced) = (Vec::new(), Vec::new());
    let t0 = std::time::Instant::now();
    for ex in &examples {
        let readme_command = strip_comment(&ex.command);
        if let Some(k) = SKIPPED.iter().position(|(c, _)| *c == readme_command) {
            used_skips.push(k);
            continue;
        }
        let mut command = readme_command.to_string();
        if let Some(k) = REDUCED.iter().position(|(c, _)| *c == readme_command) {
            used_reduced.push(k);
            command = set_flags(&command, REDUCED[k].1);
        }
        for (from, to) in rewrites() {
            command = command.replace(from, &to);
        }
        if is_assignment(&command) {
            prelude.push_str(&command);
            prelude.push('\n');
            continue;
        }
        let t = std::time::Instant::now();
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("set -eo pipefail\n{prelude}{command}"))
            .current_dir(&work)
            .env("PATH", &path)
            .env("DECODEX_DATA", &data)
            .env("DECODEX_CACHE", root.path().join("cache"))
            .env("RAYON_NUM_THREADS", "2")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "README.md:{}: {command}\nexit {:?}\nstderr: {}",
            ex.line,
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(expected) = &ex.output {
            let got: Vec<&str> = stdout.lines().collect();
            assert_eq!(
                got, *expected,
                "README.md:{}: {command}: the output shown",
                ex.line
            );
        }
        println!(
            "{:6.1} s  README.md:{}: {command}",
            t.elapsed().as_secs_f64(),
            ex.line
        );
        std::io::stdout().lock().flush().ok();
    }
    println!("all README commands: {:.0} s", t0.elapsed().as_secs_f64());
    for (k, (c, why)) in SKIPPED.iter().enumerate() {
        assert!(
            used_skips.contains(&k),
            "SKIPPED names no README command: {c} ({why})"
        );
    }
    for (k, (c, _)) in REDUCED.iter().enumerate() {
        assert!(
            used_reduced.contains(&k),
            "REDUCED names no README command: {c}"
        );
    }
}

#[test]
fn readme_commands_are_parsed_as_written() {
    let text = "```sh\nA=1; B=2\ndecodex x --y \"a # b\"   # note\n```\n\
                ```console\n$ decodex z \\\n  --w 1\nout 1\nout 2\n```\n```\nnot run\n```\n";
    let ex = examples(text);
    assert_eq!(ex.len(), 3);
    assert!(is_assignment(&ex[0].command));
    assert_eq!(strip_comment(&ex[1].command), "decodex x --y \"a # b\"");
    assert_eq!(ex[2].command, "decodex z --w 1");
    assert_eq!(
        ex[2].output.as_deref(),
        Some(&["out 1".to_string(), "out 2".into()][..])
    );
    assert_eq!(
        set_flags("d t --n 5 --j", &[("--n", "2"), ("--k", "3")]),
        "d t --n 2 --j --k 3"
    );
}
