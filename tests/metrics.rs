//! ROUGE and SQuAD metrics against the reference Python implementations (rouge-score 0.1.2 and
//! the official SQuAD v1.1 script): fixtures in tests/fixtures/metrics, written by
//! scripts/gen_metric_fixtures.py, with empty, punctuation-only and unicode strings among the
//! pairs. The SQuAD parity with the official figures of the two prediction files reads
//! ../shared/data (DECODEX_DATA).

mod common;

use std::path::Path;

use decodex::eval::{rouge, squad};
use serde_json::Value;

/// README: max |diff| 1.1e-16 against rouge-score 0.1.2 and the official SQuAD script (a few
/// f64 ulps of figures at most 1).
const TOL: f64 = 1e-15;

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/metrics")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn check(got: &rouge::RougeScores, want: &Value, what: &str) -> f64 {
    let mut worst = 0f64;
    for (k, s) in [
        ("rouge1", got.rouge1),
        ("rouge2", got.rouge2),
        ("rougeL", got.rouge_l),
    ] {
        let w = want[k].as_array().unwrap();
        for (i, g) in [s.precision, s.recall, s.fmeasure].into_iter().enumerate() {
            let d = (g - w[i].as_f64().unwrap()).abs();
            assert!(d <= TOL, "{what}: {k}[{i}] = {g}, rouge-score {}", w[i]);
            worst = worst.max(d);
        }
    }
    worst
}

#[test]
fn rouge_matches_rouge_score() {
    let f = fixture("rouge.json");
    let pairs = f["pairs"].as_array().unwrap();
    assert!(pairs.len() >= 200);
    let mut worst = 0f64;
    for (i, p) in pairs.iter().enumerate() {
        let (t, h) = (
            p["target"].as_str().unwrap(),
            p["prediction"].as_str().unwrap(),
        );
        let what = format!("pair {i} ({t:?} / {h:?})");
        worst = worst.max(check(&rouge::score(t, h, true), &p["stem"], &what));
        worst = worst.max(check(&rouge::score(t, h, false), &p["nostem"], &what));
    }
    let multi = f["multi"].as_array().unwrap();
    for (i, m) in multi.iter().enumerate() {
        let ts: Vec<&str> = m["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let got = rouge::score_multi(&ts, m["prediction"].as_str().unwrap(), true);
        worst = worst.max(check(&got, &m["stem"], &format!("multi {i}")));
    }
    println!(
        "rouge: {} pairs ×2 stemming modes, {} multi-reference, max |diff| {worst:.1e}",
        pairs.len(),
        multi.len()
    );
}

#[test]
fn rouge_corpus_mean_and_cli() {
    let f = fixture("rouge.json");
    let pairs = f["pairs"].as_array().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Summaries with newlines can't be one line each; the corpus test takes the others.
    let one_line: Vec<&Value> = pairs
        .iter()
        .filter(|p| {
            !p["target"].as_str().unwrap().contains('\n')
                && !p["prediction"].as_str().unwrap().contains('\n')
        })
        .collect();
    let write = |name: &str, key: &str| {
        let text: String = one_line
            .iter()
            .map(|p| format!("{}\n", p[key].as_str().unwrap()))
            .collect();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (hyp, refp) = (write("hyp.txt", "prediction"), write("ref.txt", "target"));
    let mean = |k: &str, j: usize| {
        100.0
            * one_line
                .iter()
                .map(|p| p["stem"][k][j].as_f64().unwrap())
                .sum::<f64>()
            / one_line.len() as f64
    };
    let v = common::decodex_json(&[
        "eval",
        "rouge",
        "--hyp",
        hyp.to_str().unwrap(),
        "--ref",
        refp.to_str().unwrap(),
        "--json",
    ]);
    for k in ["rouge1", "rouge2", "rougeL"] {
        let d = (v[k].as_f64().unwrap() - mean(k, 2)).abs();
        assert!(d < 1e-9, "{k}: {} vs mean {}", v[k], mean(k, 2));
    }
    assert_eq!(v["pairs"].as_u64().unwrap() as usize, one_line.len());
}

#[test]
fn squad_matches_the_official_script() {
    let f = fixture("squad.json");
    let pairs = f["pairs"].as_array().unwrap();
    assert!(pairs.len() >= 200);
    let mut worst = 0f64;
    for (i, p) in pairs.iter().enumerate() {
        let pred = p["prediction"].as_str().unwrap();
        let truths: Vec<&str> = p["truths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert_eq!(
            squad::normalize_answer(pred),
            p["normalized"].as_str().unwrap(),
            "pair {i}"
        );
        let (em, f1) = squad::score(pred, &truths);
        for (g, w) in [(em, &p["em"]), (f1, &p["f1"])] {
            let d = (g - w.as_f64().unwrap()).abs();
            assert!(d <= TOL, "pair {i} ({pred:?} vs {truths:?}): {g} vs {w}");
            worst = worst.max(d);
        }
    }
    println!("squad: {} pairs, max |diff| {worst:.1e}", pairs.len());
}

#[test]
fn squad_reproduces_the_official_figures() {
    let dir = decodex::train::config::resolve_data_path(Path::new("qa/squad"));
    for (file, em, f1) in [
        ("logistic_regression_baseline", 40.14, 50.98),
        ("bert_ensemble", 86.21, 92.20),
    ] {
        let preds = dir.join(format!("predictions/{file}.dev-v1.1.predictions.json"));
        let v = common::decodex_json(&[
            "eval",
            "squad",
            "--data",
            dir.join("dev-v1.1.json").to_str().unwrap(),
            "--predictions",
            preds.to_str().unwrap(),
            "--json",
        ]);
        let (gem, gf1) = (
            v["exact_match"].as_f64().unwrap(),
            v["f1"].as_f64().unwrap(),
        );
        println!("{file}: EM {gem:.4} F1 {gf1:.4} (official {em} / {f1})");
        assert_eq!(format!("{gem:.2}"), format!("{em:.2}"), "{file} EM");
        assert_eq!(format!("{gf1:.2}"), format!("{f1:.2}"), "{file} F1");
        assert_eq!(v["total"], 10570);
    }
}
