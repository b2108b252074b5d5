//! A GPT trained by decodex decodes through the shared engine with every strategy, from the
//! command line: greedy, sampling with the processor chain, beam search and diverse beam search.

mod common;

use common::decodex;
use serde_json::Value;

fn json_lines(out: &std::process::Output) -> Vec<Value> {
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

#[test]
fn trained_gpt_decodes_with_every_strategy() {
    let d = tempfile::tempdir().unwrap();
    let run = common::trained_model(d.path(), 20);
    let m = run.to_str().unwrap();
    let gen = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            m,
            "--prompt",
            "the ",
            "--max-new-tokens",
            "8",
            "--json",
        ];
        args.extend_from_slice(extra);
        json_lines(&decodex(&args))
    };
    // Greedy through the engine (--logprobs) equals greedy through the sliding-window path.
    let a = gen(&["--strategy", "greedy", "--logprobs"]);
    let b = gen(&["--strategy", "greedy"]);
    assert_eq!(a[0]["tokens"], b[0]["tokens"]);
    assert_eq!(a[0]["logprobs"].as_array().unwrap().len(), 8);
    assert!(a[0]["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p.as_f64().unwrap() <= 0.0));
    // Sampling with the processor chain is reproducible for a seed.
    let flags = [
        "--strategy",
        "sample",
        "--min-p",
        "0.05",
        "--repetition-penalty",
        "1.2",
        "--typical-p",
        "0.9",
        "--no-repeat-ngram-size",
        "3",
        "--seed",
        "7",
    ];
    let s1 = gen(&flags);
    assert_eq!(s1[0]["tokens"], gen(&flags)[0]["tokens"]);
    assert_eq!(s1[0]["tokens"].as_array().unwrap().len(), 8);
    // Three sampled sequences from consecutive seeds.
    assert_eq!(
        gen(&["--strategy", "sample", "--num-return-sequences", "3"]).len(),
        3
    );
    // Beam search: two sequences, best first, scores are mean log-probabilities (≤ 0).
    let beams = gen(&[
        "--strategy",
        "beam",
        "--num-beams",
        "4",
        "--num-return-sequences",
        "2",
    ]);
    assert_eq!(beams.len(), 2);
    let (s0, s1) = (
        beams[0]["score"].as_f64().unwrap(),
        beams[1]["score"].as_f64().unwrap(),
    );
    assert!(s0 >= s1 && s0 <= 0.0, "{s0} {s1}");
    // Diverse beam search: two groups return different sequences.
    let diverse = gen(&[
        "--strategy",
        "beam",
        "--num-beams",
        "4",
        "--num-beam-groups",
        "2",
        "--diversity-penalty",
        "2.0",
        "--num-return-sequences",
        "2",
    ]);
    assert_ne!(diverse[0]["tokens"], diverse[1]["tokens"]);
    // Several prompts from a JSONL file: one object per prompt, indexed.
    let prompts = d.path().join("p.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"the \"}\n\"and \"\n").unwrap();
    let many = json_lines(&decodex(&[
        "generate",
        "--model",
        m,
        "--prompts",
        prompts.to_str().unwrap(),
        "--strategy",
        "greedy",
        "--max-new-tokens",
        "4",
        "--json",
    ]));
    assert_eq!(many.len(), 2);
    assert_eq!(many[1]["index"], 1);
}
