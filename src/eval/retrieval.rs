//! BEIR-style retrieval evaluation: BEIR's queries.jsonl and qrels TSV (corpus files are read
//! by `search::open_records`), and nDCG@k, Recall@k and MRR@k as BEIR 2.2.0 computes them, nDCG
//! and recall through pytrec_eval (trec_eval's `ndcg_cut` and `recall`), MRR with BEIR's own
//! `evaluate_custom(metric="mrr")`.
//!
//! The details that move a figure, each checked against pytrec_eval-terrier 0.5.11 by
//! tests/retrieval_metrics.rs (fixture from scripts/gen_retrieval_fixture.py):
//!
//! | case | behaviour |
//! |---|---|
//! | ranking for nDCG and recall | score descending, ties by document id descending (byte order): trec_eval's `comp_sim_docno` |
//! | ranking for MRR | score descending, ties in the order of the hit list: BEIR sorts with Python's stable `sorted` |
//! | nDCG gain | the qrel grade, linear (trec_eval's `ndcg_cut`); grades <= 0 gain nothing; discount `log2(rank + 1)` |
//! | ideal DCG | every judged document with grade > 0, best first, cut at k; 0 when there is none (nDCG 0) |
//! | relevant (recall, MRR) | grade > 0; recall is 0 when the query has no relevant document |
//! | hit whose id is the query's id | dropped first when [`EvalOptions::ignore_identical_ids`] (BEIR's default) |
//! | run query without judgments | ignored (pytrec_eval skips it; BEIR's MRR would raise) |
//! | judged query with an empty hit list | scored 0 and counted |
//! | judged query missing from the run | left out of the nDCG and recall means (pytrec_eval returns no row for it) but counted in the MRR mean, which BEIR divides by every judged query |
//!
//! Figures are fractions in [0, 1], not rounded (BEIR rounds its means to 5 digits).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Judgments: query id -> document id -> grade (BEIR's `qrels`).
pub type Qrels = HashMap<String, HashMap<String, i32>>;

/// A run: query id -> hits (document id, score). Scores rank the hits; the list order only
/// breaks ties for MRR, as a Python dict's insertion order does in BEIR.
pub type Run = HashMap<String, Vec<(String, f32)>>;

// --- readers ------------------------------------------------------------------------------

#[derive(Deserialize)]
struct Query {
    #[serde(rename = "_id")]
    id: String,
    text: String,
}

fn data_error(path: &Path, msg: String) -> Error {
    Error::Data {
        path: path.to_path_buf(),
        msg,
    }
}

/// The non-blank lines of `text` with their 1-based numbers, a trailing `\r` removed.
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty())
}

/// Parses each non-blank line of a JSONL file as a `T` with an id, rejecting a repeated id.
fn read_jsonl<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
    expected: &str,
    id: fn(&T) -> &str,
) -> Result<Vec<T>> {
    let text = crate::data::read_text(path)?;
    let mut first_line: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for (n, line) in numbered_lines(&text) {
        let item: T = serde_json::from_str(line)
            .map_err(|e| data_error(path, format!("line {n}: expected {expected} ({e})")))?;
        if let Some(first) = first_line.insert(id(&item).to_string(), n) {
            return Err(data_error(
                path,
                format!(
                    "line {n}: duplicate {what} id {:?} (first on line {first}); BEIR would \
                     silently keep only the last, so remove or rename one of them",
                    id(&item)
                ),
            ));
        }
        out.push(item);
    }
    Ok(out)
}

/// Reads BEIR's queries.jsonl (`{"_id": ..., "text": ..., "metadata": ...}` per line) into
/// (id, text) pairs in file order. A repeated id is an error.
pub fn read_queries(path: &Path) -> Result<Vec<(String, String)>> {
    let qs: Vec<Query> = read_jsonl(
        path,
        "query",
        "a JSON object with string \"_id\" and \"text\"",
        |q: &Query| &q.id,
    )?;
    Ok(qs.into_iter().map(|q| (q.id, q.text)).collect())
}

/// Reads a BEIR qrels TSV: a header line (`query-id\tcorpus-id\tscore`), then one judgment
/// per line, `query id \t document id \t integer grade` (further columns ignored, CRLF line
/// endings accepted). A pair judged twice keeps its last grade, as BEIR's loader does.
pub fn read_qrels(path: &Path) -> Result<Qrels> {
    let text = crate::data::read_text(path)?;
    let mut qrels = Qrels::new();
    let mut lines = numbered_lines(&text);
    let Some((n, header)) = lines.next() else {
        return Err(data_error(
            path,
            "no judgments: expected the header query-id<TAB>corpus-id<TAB>score, then one \
             judgment per line"
                .into(),
        ));
    };
    if header
        .split('\t')
        .nth(2)
        .is_some_and(|s| s.trim().parse::<i32>().is_ok())
    {
        return Err(data_error(
            path,
            format!(
                "line {n}: expected the header query-id<TAB>corpus-id<TAB>score, found a \
                 judgment; BEIR skips the first line, so add the header"
            ),
        ));
    }
    for (n, line) in lines {
        let cols: Vec<&str> = line.split('\t').collect();
        let bad = |why: String| {
            data_error(
                path,
                format!("line {n}: {why}; expected query-id<TAB>corpus-id<TAB>integer score"),
            )
        };
        if cols.len() < 3 {
            return Err(bad(format!("{} column(s) in {line:?}", cols.len())));
        }
        if cols[0].is_empty() || cols[1].is_empty() {
            return Err(bad(format!("empty id in {line:?}")));
        }
        let grade: i32 = cols[2]
            .trim()
            .parse()
            .map_err(|_| bad(format!("score {:?} is not an integer", cols[2])))?;
        qrels
            .entry(cols[0].to_string())
            .or_default()
            .insert(cols[1].to_string(), grade);
    }
    Ok(qrels)
}

// --- ranking and per-query metrics ----------------------------------------------------------

/// The score as a sort key: -0.0 and 0.0 compare equal, as in C and Python.
fn key(s: f32) -> f32 {
    if s == 0.0 {
        0.0
    } else {
        s
    }
}

/// pytrec_eval's ranking (trec_eval's `comp_sim_docno`): score descending, ties by document id
/// descending in byte order, so "9" ranks above "10".
pub fn trec_order<'a>(hits: &[(&'a str, f32)]) -> Vec<&'a str> {
    let mut v = hits.to_vec();
    v.sort_by(|a, b| key(b.1).total_cmp(&key(a.1)).then_with(|| b.0.cmp(a.0)));
    v.into_iter().map(|(d, _)| d).collect()
}

/// BEIR's MRR ranking: `sorted(doc_scores.items(), key=score, reverse=True)`, a stable sort, so
/// tied hits keep their list order.
pub fn beir_order<'a>(hits: &[(&'a str, f32)]) -> Vec<&'a str> {
    let mut v = hits.to_vec();
    v.sort_by(|a, b| key(b.1).total_cmp(&key(a.1)));
    v.into_iter().map(|(d, _)| d).collect()
}

fn grade(judged: &HashMap<String, i32>, doc: &str) -> i32 {
    judged.get(doc).copied().unwrap_or(0)
}

fn dcg(grades: impl Iterator<Item = i32>) -> f64 {
    // trec_eval: sum += gain / log2(i + 2) for the 0-based rank i, in rank order.
    grades
        .enumerate()
        .filter(|&(_, g)| g > 0)
        .map(|(i, g)| g as f64 / ((i + 2) as f64).log2())
        .sum()
}

/// trec_eval's `ndcg_cut.k` of one query: DCG of the first `k` ranked documents over the DCG of
/// the best `k` judged ones.
pub fn ndcg_cut(ranked: &[&str], judged: &HashMap<String, i32>, k: usize) -> f64 {
    let mut ideal: Vec<i32> = judged.values().copied().filter(|&g| g > 0).collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg = dcg(ideal.into_iter().take(k));
    if idcg > 0.0 {
        dcg(ranked.iter().take(k).map(|d| grade(judged, d))) / idcg
    } else {
        0.0
    }
}

/// trec_eval's `recall.k` of one query: relevant documents in the first `k` over all relevant
/// ones (0 when there are none).
pub fn recall(ranked: &[&str], judged: &HashMap<String, i32>, k: usize) -> f64 {
    let relevant = judged.values().filter(|&&g| g > 0).count();
    if relevant == 0 {
        return 0.0;
    }
    let found = ranked
        .iter()
        .take(k)
        .filter(|d| grade(judged, d) > 0)
        .count();
    found as f64 / relevant as f64
}

/// BEIR's reciprocal rank at `k`: 1 / rank of the first relevant document in the first `k`, else 0.
pub fn reciprocal_rank(ranked: &[&str], judged: &HashMap<String, i32>, k: usize) -> f64 {
    ranked
        .iter()
        .take(k)
        .position(|d| grade(judged, d) > 0)
        .map_or(0.0, |i| 1.0 / (i + 1) as f64)
}

// --- evaluation ----------------------------------------------------------------------------

/// Options of [`evaluate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalOptions {
    /// Drop every hit whose document id equals its query id before scoring, as BEIR's
    /// `EvaluateRetrieval.evaluate(..., ignore_identical_ids=True)` (its default) does.
    /// Default: true.
    pub ignore_identical_ids: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            ignore_identical_ids: true,
        }
    }
}

/// The three figures at one cutoff. In [`Evaluation::per_query`], `mrr` is the query's
/// reciprocal rank.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AtK {
    pub k: usize,
    pub ndcg: f64,
    pub recall: f64,
    pub mrr: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// Means, one per cutoff in the order asked for: nDCG and recall over [`Self::queries`],
    /// MRR over [`Self::judged_queries`].
    pub mean: Vec<AtK>,
    /// The figures of every scored query (judged and in the run), by query id.
    pub per_query: BTreeMap<String, Vec<AtK>>,
    /// Queries both in the run and judged: pytrec_eval's rows, the nDCG and recall denominator.
    pub queries: usize,
    /// Judged queries: BEIR's MRR denominator (`len(qrels)`).
    pub judged_queries: usize,
}

impl Evaluation {
    /// The means at cutoff `k`, if it was asked for.
    pub fn at(&self, k: usize) -> Option<&AtK> {
        self.mean.iter().find(|a| a.k == k)
    }
}

/// Scores `results` against `qrels` at each cutoff in `ks`, as BEIR's
/// `EvaluateRetrieval.evaluate` (pytrec_eval) and `evaluate_custom(metric="mrr")` do; see the
/// module docs for each rule. Errors when a cutoff is 0, when a query lists a document twice or
/// gives a NaN score, or when no query of the run is judged.
pub fn evaluate(
    results: &Run,
    qrels: &Qrels,
    ks: &[usize],
    opts: &EvalOptions,
) -> Result<Evaluation> {
    if ks.is_empty() || ks.contains(&0) {
        return Err(Error::Invalid(format!(
            "retrieval cutoffs must be at least 1, got {ks:?}"
        )));
    }
    let mut per_query = BTreeMap::new();
    for (qid, hits) in results {
        let mut seen = HashSet::new();
        for (doc, score) in hits {
            if !seen.insert(doc.as_str()) {
                return Err(Error::Invalid(format!(
                    "the results of query {qid:?} list document {doc:?} twice; keep one hit per document"
                )));
            }
            if score.is_nan() {
                return Err(Error::Invalid(format!(
                    "query {qid:?}: document {doc:?} has a NaN score"
                )));
            }
        }
        // pytrec_eval never sees a query without judgments.
        let Some(judged) = qrels.get(qid).filter(|j| !j.is_empty()) else {
            continue;
        };
        let hits: Vec<(&str, f32)> = hits
            .iter()
            .filter(|(doc, _)| !(opts.ignore_identical_ids && doc == qid))
            .map(|(doc, s)| (doc.as_str(), *s))
            .collect();
        let trec = trec_order(&hits);
        let beir = beir_order(&hits);
        let row = ks
            .iter()
            .map(|&k| AtK {
                k,
                ndcg: ndcg_cut(&trec, judged, k),
                recall: recall(&trec, judged, k),
                mrr: reciprocal_rank(&beir, judged, k),
            })
            .collect::<Vec<_>>();
        per_query.insert(qid.clone(), row);
    }
    let queries = per_query.len();
    if queries == 0 {
        let example = |ids: &mut dyn Iterator<Item = &String>| {
            ids.next().map_or("none".to_string(), |s| format!("{s:?}"))
        };
        return Err(Error::Invalid(format!(
            "none of the {} queries of the run has judgments in the qrels ({} judged queries, \
             e.g. {}; run e.g. {}); check that the query ids match",
            results.len(),
            qrels.len(),
            example(&mut qrels.keys()),
            example(&mut results.keys()),
        )));
    }
    let mean = ks
        .iter()
        .enumerate()
        .map(|(j, &k)| {
            let sum = |f: fn(&AtK) -> f64| per_query.values().map(|r| f(&r[j])).sum::<f64>();
            AtK {
                k,
                ndcg: sum(|a| a.ndcg) / queries as f64,
                recall: sum(|a| a.recall) / queries as f64,
                mrr: sum(|a| a.mrr) / qrels.len() as f64,
            }
        })
        .collect();
    Ok(Evaluation {
        mean,
        per_query,
        queries,
        judged_queries: qrels.len(),
    })
}

/// The headline figures of a BEIR run: nDCG@10 (BEIR's main score), MRR@10 and Recall@100.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetrievalScores {
    pub ndcg_at_10: f64,
    pub mrr_at_10: f64,
    pub recall_at_100: f64,
    /// Queries both in the run and judged (the nDCG and recall denominator).
    pub queries: usize,
    /// Judged queries (the MRR denominator).
    pub judged_queries: usize,
}

/// [`evaluate`] at cutoffs 10 and 100, reduced to [`RetrievalScores`].
pub fn scores(results: &Run, qrels: &Qrels, opts: &EvalOptions) -> Result<RetrievalScores> {
    let e = evaluate(results, qrels, &[10, 100], opts)?;
    Ok(RetrievalScores {
        ndcg_at_10: e.mean[0].ndcg,
        mrr_at_10: e.mean[0].mrr,
        recall_at_100: e.mean[1].recall,
        queries: e.queries,
        judged_queries: e.judged_queries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(pairs: &[(&str, i32)]) -> HashMap<String, i32> {
        pairs.iter().map(|(d, g)| (d.to_string(), *g)).collect()
    }

    #[test]
    fn ties_rank_by_descending_doc_id_for_trec_and_list_order_for_beir() {
        let hits = [("d1", 0.5), ("d2", 0.5), ("d3", 0.9), ("d10", 0.5)];
        assert_eq!(trec_order(&hits), ["d3", "d2", "d10", "d1"]);
        assert_eq!(beir_order(&hits), ["d3", "d1", "d2", "d10"]);
        assert_eq!(trec_order(&[("a", -0.0), ("b", 0.0)]), ["b", "a"]);
    }

    #[test]
    fn matches_pytrec_eval_by_hand() {
        // pytrec_eval-terrier 0.5.11 on this query: ndcg_cut_2 0.4796249331362629,
        // ndcg_cut_3 0.4030302838010049, ndcg_cut_10 0.5405857679450102, recall_100 2/3.
        let j = judged(&[("d1", 1), ("d2", 2), ("d9", 1)]);
        let ranked = trec_order(&[("d1", 0.5), ("d2", 0.5), ("d3", 0.9), ("d10", 0.5)]);
        for (k, want) in [
            (1, 0.0),
            (2, 0.4796249331362629),
            (3, 0.4030302838010049),
            (10, 0.5405857679450102),
        ] {
            assert!((ndcg_cut(&ranked, &j, k) - want).abs() < 1e-15, "k={k}");
        }
        assert!((recall(&ranked, &j, 100) - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(reciprocal_rank(&ranked, &j, 10), 0.5);
        assert_eq!(reciprocal_rank(&ranked, &j, 1), 0.0);
        // Negative and zero grades gain nothing: only d2 counts (pytrec_eval gives 0.5 at 3).
        let j = judged(&[("d1", -1), ("d2", 2), ("d3", 0)]);
        let ranked = ["d1", "d3", "d2"];
        assert_eq!(ndcg_cut(&ranked, &j, 3), 0.5);
        assert_eq!(recall(&ranked, &j, 3), 1.0);
        assert_eq!(ndcg_cut(&ranked, &judged(&[("x", 0)]), 10), 0.0);
        assert_eq!(recall(&ranked, &judged(&[("x", 0)]), 10), 0.0);
    }

    #[test]
    fn denominators_follow_beir() {
        let qrels: Qrels = [
            ("q1".to_string(), judged(&[("a", 1)])),
            ("q2".to_string(), judged(&[("b", 1)])),
        ]
        .into_iter()
        .collect();
        let run: Run = [
            (
                "q1".to_string(),
                vec![("q1".to_string(), 2.0), ("a".into(), 1.0)],
            ),
            ("q9".to_string(), vec![("a".to_string(), 1.0)]),
        ]
        .into_iter()
        .collect();
        let e = evaluate(&run, &qrels, &[1, 10], &EvalOptions::default()).unwrap();
        // q2 is judged but not run: out of the nDCG mean, in the MRR one; q9 is not judged.
        assert_eq!((e.queries, e.judged_queries), (1, 2));
        assert_eq!(e.at(1).unwrap().ndcg, 1.0);
        assert_eq!(e.at(1).unwrap().mrr, 0.5);
        let keep = EvalOptions {
            ignore_identical_ids: false,
        };
        let e = evaluate(&run, &qrels, &[1], &keep).unwrap();
        assert_eq!(e.at(1).unwrap().ndcg, 0.0);
        assert!(evaluate(&run, &qrels, &[0], &keep).is_err());
        let dup: Run = [(
            "q1".to_string(),
            vec![("a".to_string(), 1.0), ("a".into(), 0.5)],
        )]
        .into_iter()
        .collect();
        let err = evaluate(&dup, &qrels, &[1], &keep).unwrap_err().to_string();
        assert!(err.contains("\"a\" twice"), "{err}");
        let unjudged: Run = [("zz".to_string(), vec![])].into_iter().collect();
        let err = evaluate(&unjudged, &qrels, &[1], &keep)
            .unwrap_err()
            .to_string();
        assert!(err.contains("query ids match"), "{err}");
    }
}
