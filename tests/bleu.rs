//! Corpus BLEU and chrF against sacreBLEU 2.4.3's figures for every pair in tests/fixtures/bleu
//! (written by scripts/gen_bleu_fixture.py): scores, precisions, brevity penalty, lengths and
//! signatures, cased and lowercased, through the library and through `decodex eval bleu`.
//! Each pair prints its largest difference, llm.c style; sacreBLEU's floats are read from their
//! bits, so the difference printed is the real one (0 where the arithmetic agrees bit for bit).

mod common;

use std::path::{Path, PathBuf};

use decodex::eval::bleu::{
    corpus_bleu, corpus_chrf, evaluate_files, read_lines, tokenize_13a, BleuOptions, BleuScore,
};
use serde_json::Value;

/// The README states BLEU, precisions, BP and chrF are bit-identical to sacreBLEU's (max
/// difference 0): sacreBLEU's floats are read from their bits, so anything above 0 is a regression.
const TOL: f64 = 0.0;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bleu")
}

/// expected.json's pairs: (name, figures).
fn pairs() -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["sacrebleu_version"], "2.4.3");
    let pairs = v["pairs"].as_object().unwrap();
    assert!(pairs.len() >= 6, "only {} pairs", pairs.len());
    pairs.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn files(pair: &Value) -> (PathBuf, Vec<PathBuf>) {
    let dir = fixture_dir();
    let hyp = dir.join(pair["hyp"].as_str().unwrap());
    let refs = pair["refs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| dir.join(r.as_str().unwrap()))
        .collect();
    (hyp, refs)
}

/// The figure `key` of `figures` exactly: from its IEEE-754 bits (`f64_bits`), as decimals
/// parsed by serde_json can be one ulp off.
fn exact(figures: &Value, key: &str) -> f64 {
    f64::from_bits(figures["f64_bits"][key].as_u64().unwrap())
}

/// The list of figures `key` of `figures`, exactly.
fn exact_list(figures: &Value, key: &str) -> Vec<f64> {
    figures["f64_bits"][key]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| f64::from_bits(b.as_u64().unwrap()))
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Asserts `got` is within TOL of `want` and returns the difference.
fn close(what: &str, got: f64, want: f64) -> f64 {
    let d = (got - want).abs();
    assert!(d <= TOL, "{what}: decodex {got} vs sacreBLEU {want}");
    d
}

/// Compares every BLEU figure with sacreBLEU's; returns the largest difference.
fn check_bleu(what: &str, got: &BleuScore, want: &Value) -> f64 {
    let mut maxdiff = close(&format!("{what} score"), got.score, exact(want, "score"));
    assert_eq!(
        exact_list(want, "precisions").len(),
        4,
        "{what}: fixture precisions"
    );
    maxdiff = maxdiff.max(close(&format!("{what} bp"), got.bp, exact(want, "bp")));
    for (n, (&g, w)) in got
        .precisions
        .iter()
        .zip(exact_list(want, "precisions"))
        .enumerate()
    {
        maxdiff = maxdiff.max(close(&format!("{what} precision {}", n + 1), g, w));
    }
    assert_eq!(
        got.sys_len,
        want["sys_len"].as_u64().unwrap(),
        "{what} sys_len"
    );
    assert_eq!(
        got.ref_len,
        want["ref_len"].as_u64().unwrap(),
        "{what} ref_len"
    );
    assert_eq!(
        got.counts.to_vec(),
        serde_json::from_value::<Vec<u64>>(want["counts"].clone()).unwrap(),
        "{what} counts"
    );
    assert_eq!(
        got.totals.to_vec(),
        serde_json::from_value::<Vec<u64>>(want["totals"].clone()).unwrap(),
        "{what} totals"
    );
    assert_eq!(got.signature, want["signature"], "{what} signature");
    assert_eq!(got.line(), want["line"], "{what} summary line");
    maxdiff
}

#[test]
fn every_fixture_pair_matches_sacrebleu() {
    let mut overall = 0.0f64;
    for (name, pair) in pairs() {
        let (hyp_path, ref_paths) = files(&pair);
        let hyps = read_lines(&hyp_path).unwrap();
        let refs: Vec<Vec<String>> = ref_paths.iter().map(|p| read_lines(p).unwrap()).collect();
        assert_eq!(
            hyps.len() as u64,
            pair["lines"].as_u64().unwrap(),
            "{name} lines"
        );

        let cased = corpus_bleu(&hyps, &refs, &BleuOptions::default()).unwrap();
        let lower = corpus_bleu(&hyps, &refs, &BleuOptions { lowercase: true }).unwrap();
        let chrf = corpus_chrf(&hyps, &refs).unwrap();
        let mut maxdiff = check_bleu(&format!("{name} BLEU"), &cased, &pair["bleu"]);
        maxdiff = maxdiff.max(check_bleu(
            &format!("{name} lowercase BLEU"),
            &lower,
            &pair["bleu_lowercase"],
        ));
        let want = &pair["chrf"];
        maxdiff = maxdiff.max(close(
            &format!("{name} chrF"),
            chrf.score,
            exact(want, "score"),
        ));
        assert_eq!(chrf.signature, want["signature"], "{name} chrF signature");
        assert_eq!(chrf.line(), want["line"], "{name} chrF summary line");

        // The file-level entry point gives the same figures.
        let r = evaluate_files(&hyp_path, &ref_paths, &BleuOptions::default()).unwrap();
        assert_eq!((r.bleu, r.chrf), (cased.clone(), chrf.clone()), "{name}");

        println!(
            "{name:20} BLEU {:8.4} (lc {:8.4}) chrF {:8.4}  OK maxdiff {maxdiff:.1e}",
            cased.score, lower.score, chrf.score
        );
        overall = overall.max(maxdiff);
    }
    println!("max |decodex - sacreBLEU| over all pairs and figures: {overall:.1e}");
}

#[test]
fn tokenization_matches_sacrebleu_on_every_line_of_the_small_pairs() {
    let mut checked = 0;
    for (name, pair) in pairs() {
        let Some(tok) = pair.get("tok_13a") else {
            continue;
        };
        let (hyp_path, ref_paths) = files(&pair);
        let mut streams = vec![(read_lines(&hyp_path).unwrap(), &tok["hyp"])];
        for (k, p) in ref_paths.iter().enumerate() {
            streams.push((read_lines(p).unwrap(), &tok["refs"][k]));
        }
        for (lines, want) in streams {
            let want = want.as_array().unwrap();
            assert_eq!(lines.len(), want.len(), "{name}");
            for (line, w) in lines.iter().zip(want) {
                assert_eq!(tokenize_13a(line), w.as_str().unwrap(), "{name}: {line:?}");
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "only {checked} lines checked");
}

#[test]
fn cli_json_reports_sacrebleu_figures() {
    let all = pairs();
    let (_, pair) = all
        .iter()
        .find(|(name, _)| name == "multi30k_two_refs")
        .unwrap();
    let (hyp, refs) = files(pair);
    let mut args = vec!["eval", "bleu", "--hyp", hyp.to_str().unwrap()];
    for r in &refs {
        args.extend(["--ref", r.to_str().unwrap()]);
    }
    for lowercase in [false, true] {
        let mut args = args.clone();
        if lowercase {
            args.push("--lowercase");
        }
        args.push("--json");
        let out = common::decodex(&args);
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.lines().count(), 1, "one JSON object: {stdout}");
        let v: Value = serde_json::from_str(&stdout).unwrap();
        let bleu = &pair[if lowercase { "bleu_lowercase" } else { "bleu" }];
        close("bleu", v["bleu"].as_f64().unwrap(), exact(bleu, "score"));
        close(
            "chrf",
            v["chrf"].as_f64().unwrap(),
            exact(&pair["chrf"], "score"),
        );
        close("bp", v["bp"].as_f64().unwrap(), exact(bleu, "bp"));
        assert_eq!(f64s(&v["precisions"]).len(), 4, "precisions printed");
        assert_eq!(
            exact_list(bleu, "precisions").len(),
            4,
            "fixture precisions"
        );
        for (g, w) in f64s(&v["precisions"])
            .into_iter()
            .zip(exact_list(bleu, "precisions"))
        {
            close("precision", g, w);
        }
        assert_eq!(v["sys_len"], bleu["sys_len"]);
        assert_eq!(v["ref_len"], bleu["ref_len"]);
        assert_eq!(v["signature_bleu"], bleu["signature"]);
        assert_eq!(v["signature_chrf"], pair["chrf"]["signature"]);
        assert!(v["signature_bleu"]
            .as_str()
            .unwrap()
            .starts_with("nrefs:2|"));
    }
    // Without --json: sacreBLEU's summary lines, then the signatures.
    let out = common::decodex(&args);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], pair["bleu"]["line"]);
    assert_eq!(lines[1], pair["chrf"]["line"]);
    assert_eq!(
        lines[2],
        format!(
            "BLEU signature: {}",
            pair["bleu"]["signature"].as_str().unwrap()
        )
    );
    assert_eq!(
        lines[3],
        format!(
            "chrF2 signature: {}",
            pair["chrf"]["signature"].as_str().unwrap()
        )
    );
}
