//! Retrieval and STS metrics against the reference Python implementations: nDCG@k and Recall@k
//! against pytrec_eval-terrier 0.5.11 and MRR@k against BEIR 2.2.0's code
//! (tests/fixtures/retrieval/retrieval.json), Spearman and Pearson against scipy 1.17.1
//! (correlation.json), both written by scripts/gen_retrieval_fixture.py. The readers are tested
//! on the real SciFact and STS Benchmark files in ../shared/data (DECODEX_DATA overrides).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use decodex::error::Error;
use decodex::eval::retrieval::{self, EvalOptions, Qrels, Run};
use decodex::eval::sts;
use serde_json::Value;

/// README/docs/search.md: max |diff| 2.2e-16 against pytrec_eval and BEIR's MRR, 5.6e-16 against
/// scipy (a few f64 ulps of figures at most 1).
const TOL: f64 = 1e-15;

fn fixture(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/retrieval")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn data(rel: &str) -> PathBuf {
    let p = decodex::train::config::data_dir().join(rel);
    assert!(
        p.exists(),
        "{} is missing (set DECODEX_DATA to the shared data folder)",
        p.display()
    );
    p
}

fn fixture_qrels(v: &Value) -> Qrels {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(q, docs)| {
            let docs = docs
                .as_object()
                .unwrap()
                .iter()
                .map(|(d, g)| (d.clone(), g.as_i64().unwrap() as i32))
                .collect();
            (q.clone(), docs)
        })
        .collect()
}

fn fixture_run(v: &Value) -> Run {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(q, hits)| {
            let hits = hits
                .as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    // Written as the f64 a float32 widens to; serde_json (without its
                    // float_roundtrip feature) may read it 1 ulp off, which `as f32` undoes.
                    let s = h[1].as_f64().unwrap();
                    let s32 = s as f32;
                    assert!(
                        (s32 as f64 - s).abs() <= 1e-15 * s.abs(),
                        "{s} is no float32"
                    );
                    (h[0].as_str().unwrap().to_string(), s32)
                })
                .collect();
            (q.clone(), hits)
        })
        .collect()
}

/// Tracks the largest |diff| of each metric and prints them llm.c style.
#[derive(Default)]
struct MaxDiff(Vec<(String, f64, usize)>);

impl MaxDiff {
    fn check(&mut self, name: &str, got: f64, want: f64, what: &str) {
        let d = (got - want).abs();
        assert!(d <= TOL, "{what}: {name} = {got}, reference {want}");
        match self.0.iter_mut().find(|(n, _, _)| n == name) {
            Some((_, worst, count)) => {
                *worst = worst.max(d);
                *count += 1;
            }
            None => self.0.push((name.to_string(), d, 1)),
        }
    }

    fn print(&self, case: &str) {
        for (name, worst, count) in &self.0 {
            println!("{case}: {name:<16} OK  maxdiff {worst:.1e}  ({count} values)");
        }
    }
}

#[test]
fn ndcg_recall_mrr_match_pytrec_eval_and_beir() {
    let f = fixture("retrieval.json");
    let ks: Vec<usize> = f["k_values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_u64().unwrap() as usize)
        .collect();
    let qrels = fixture_qrels(&f["qrels"]);
    let run = fixture_run(&f["results"]);
    for case in f["cases"].as_array().unwrap() {
        let opts = EvalOptions {
            ignore_identical_ids: case["ignore_identical_ids"].as_bool().unwrap(),
        };
        let label = format!("ignore_identical_ids={}", opts.ignore_identical_ids);
        let e = retrieval::evaluate(&run, &qrels, &ks, &opts).unwrap();
        assert_eq!(e.queries as u64, case["queries"].as_u64().unwrap());
        assert_eq!(
            e.judged_queries as u64,
            case["judged_queries"].as_u64().unwrap()
        );
        let want = case["per_query"].as_object().unwrap();
        let mut got_ids: Vec<&String> = e.per_query.keys().collect();
        let mut want_ids: Vec<&String> = want.keys().collect();
        got_ids.sort();
        want_ids.sort();
        assert_eq!(got_ids, want_ids, "{label}: the scored queries");
        let mut diffs = MaxDiff::default();
        for (q, rows) in &e.per_query {
            for a in rows {
                let w = &want[q];
                let what = format!("{label}, query {q}");
                let k = a.k;
                diffs.check(
                    &format!("ndcg_cut_{k}"),
                    a.ndcg,
                    w[format!("ndcg_cut_{k}")].as_f64().unwrap(),
                    &what,
                );
                diffs.check(
                    &format!("recall_{k}"),
                    a.recall,
                    w[format!("recall_{k}")].as_f64().unwrap(),
                    &what,
                );
                diffs.check(
                    &format!("rr_{k}"),
                    a.mrr,
                    w[format!("rr_{k}")].as_f64().unwrap(),
                    &what,
                );
            }
        }
        for a in &e.mean {
            let (m, b) = (&case["mean"], &case["beir"]);
            let k = a.k;
            for (name, got) in [("NDCG", a.ndcg), ("Recall", a.recall), ("MRR", a.mrr)] {
                let key = format!("{name}@{k}");
                diffs.check(
                    &format!("mean {key}"),
                    got,
                    m[&key].as_f64().unwrap(),
                    &label,
                );
                // BEIR reports round(mean, 5).
                let rounded = b[&key].as_f64().unwrap();
                assert!(
                    (got - rounded).abs() <= 5e-6 + 1e-12,
                    "{label}: {key} {got} vs BEIR {rounded}"
                );
            }
        }
        diffs.print(&label);
        let s = retrieval::scores(&run, &qrels, &opts).unwrap();
        assert_eq!(s.ndcg_at_10, e.at(10).unwrap().ndcg);
        assert_eq!(s.mrr_at_10, e.at(10).unwrap().mrr);
        assert_eq!(s.recall_at_100, e.at(100).unwrap().recall);
    }
}

/// The fixture would not catch a wrong tie rule unless ties decide some figures: with the
/// other rule (list order for nDCG, doc id order for MRR) some per-query values must change.
#[test]
fn fixture_ties_decide_figures() {
    let f = fixture("retrieval.json");
    let qrels = fixture_qrels(&f["qrels"]);
    let run = fixture_run(&f["results"]);
    let (mut ndcg_changed, mut rr_changed) = (0, 0);
    for (q, hits) in &run {
        let Some(judged) = qrels.get(q) else { continue };
        let hits: Vec<(&str, f32)> = hits.iter().map(|(d, s)| (d.as_str(), *s)).collect();
        let (trec, beir) = (retrieval::trec_order(&hits), retrieval::beir_order(&hits));
        for k in [1, 3, 10] {
            ndcg_changed += (retrieval::ndcg_cut(&trec, judged, k)
                != retrieval::ndcg_cut(&beir, judged, k)) as usize;
            rr_changed += (retrieval::reciprocal_rank(&trec, judged, k)
                != retrieval::reciprocal_rank(&beir, judged, k)) as usize;
        }
    }
    println!("tie rule decides {ndcg_changed} nDCG and {rr_changed} RR values of the fixture");
    assert!(ndcg_changed > 0 && rr_changed > 0);
}

#[test]
fn spearman_and_pearson_match_scipy() {
    let f = fixture("correlation.json");
    let mut diffs = MaxDiff::default();
    let floats = |v: &Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    for c in f["cases"].as_array().unwrap() {
        let (x, y) = (floats(&c["x"]), floats(&c["y"]));
        let what = c["name"].as_str().unwrap();
        for (name, got) in [
            ("spearman", sts::spearman(&x, &y).unwrap()),
            ("pearson", sts::pearson(&x, &y).unwrap()),
        ] {
            match c[name].as_f64() {
                Some(want) => diffs.check(name, got, want, what),
                None => assert!(got.is_nan(), "{what}: {name} = {got}, scipy NaN"),
            }
        }
    }
    diffs.print("scipy");
}

#[test]
fn reads_scifact() {
    let dir = data("search/scifact");
    let corpus = decodex::search::open_records(&dir.join("corpus.jsonl"))
        .unwrap()
        .read_all()
        .unwrap();
    let queries = retrieval::read_queries(&dir.join("queries.jsonl")).unwrap();
    let test = retrieval::read_qrels(&dir.join("qrels/test.tsv")).unwrap();
    assert_eq!(corpus.len(), 5183);
    assert_eq!(queries.len(), 1109);
    assert_eq!(test.len(), 300);
    assert_eq!(test.values().map(HashMap::len).sum::<usize>(), 339);
    assert_eq!(test["1"]["31715818"], 1);
    assert_eq!(
        queries[0],
        (
            "0".to_string(),
            "0-dimensional biomaterials lack inductive properties.".to_string()
        )
    );
    let d = &corpus[0];
    assert_eq!(d.id, "4983");
    let full = &d.text;
    assert!(full.starts_with("Microstructural development of human newborn cerebral white matter assessed in vivo by diffusion tensor magnetic resonance imaging. Alterations of the architecture"), "{full}");
    // Every judgment names a known query and document.
    let doc_ids: std::collections::HashSet<&str> = corpus.iter().map(|d| d.id.as_str()).collect();
    let query_ids: std::collections::HashSet<&str> = queries.iter().map(|q| q.0.as_str()).collect();
    for (q, docs) in &test {
        assert!(query_ids.contains(q.as_str()), "query {q}");
        assert!(
            docs.keys().all(|d| doc_ids.contains(d.as_str())),
            "query {q}"
        );
    }
    // A perfect run scores 1 everywhere.
    let run: Run = test
        .iter()
        .map(|(q, docs)| (q.clone(), docs.keys().map(|d| (d.clone(), 1.0)).collect()))
        .collect();
    let s = retrieval::scores(&run, &test, &EvalOptions::default()).unwrap();
    assert_eq!((s.queries, s.judged_queries), (300, 300));
    assert!((s.ndcg_at_10 - 1.0).abs() < 1e-12 && s.mrr_at_10 == 1.0 && s.recall_at_100 == 1.0);
}

#[test]
fn reads_sts_benchmark_test() {
    let pairs = sts::read_sts(&data("search/stsb/sts-test.csv")).unwrap();
    assert_eq!(pairs.len(), 1379);
    assert_eq!(
        pairs[0],
        sts::StsPair {
            score: 2.5,
            s1: "A girl is styling her hair.".into(),
            s2: "A girl is brushing her hair.".into(),
        }
    );
    assert!(pairs.iter().all(|p| (0.0..=5.0).contains(&p.score)));
}

fn data_error(err: Error) -> (PathBuf, String) {
    match err {
        Error::Data { path, msg } => (path, msg),
        other => panic!("expected a Data error, got {other:?}"),
    }
}

#[test]
fn malformed_qrels_line_is_an_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("test.tsv");
    let cases = [
        (
            "query-id\tcorpus-id\tscore\r\n1\t10\t1\r\n1\t11\tyes\r\n",
            "line 3",
            "not an integer",
        ),
        (
            "query-id\tcorpus-id\tscore\n1\t10\t1\n\n2 11 1\n",
            "line 4",
            "1 column",
        ),
        ("1\t10\t1\n", "line 1", "header"),
    ];
    for (text, line, why) in cases {
        std::fs::write(&p, text).unwrap();
        let (path, msg) = data_error(retrieval::read_qrels(&p).unwrap_err());
        assert_eq!(path, p);
        assert!(msg.contains(line) && msg.contains(why), "{text:?}: {msg}");
    }
    let err = retrieval::read_qrels(&p).unwrap_err().to_string();
    assert!(err.starts_with(&p.display().to_string()), "{err}");
}

#[test]
fn malformed_sts_line_is_an_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("sts.csv");
    std::fs::write(
        &p,
        "g\tf\t2012\t0001\t5.000\ta\tb\ng\tf\t2012\t0002\tfive\ta\tb\n",
    )
    .unwrap();
    let (_, msg) = data_error(sts::read_sts(&p).unwrap_err());
    assert!(msg.contains("line 2") && msg.contains("\"five\""), "{msg}");
}
