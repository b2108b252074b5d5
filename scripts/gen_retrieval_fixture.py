#!/usr/bin/env python3
"""Reference figures for decodex's retrieval metrics and STS correlations.

Writes two fixtures to tests/fixtures/retrieval/, so that tests/retrieval_metrics.rs needs
neither Python nor the data folder:

- retrieval.json: a synthetic run and qrels (query and document ids are numeric strings, so a
  query id can equal a document id and string order differs from numeric order: "9" > "10"),
  with ties in the scores, graded relevance 0/1/2, queries whose judgments are all 0, judged
  queries missing from the run, run queries without judgments, queries with an empty hit list,
  judged documents never retrieved, runs longer than 100, and hits whose id is the query's own.
  Scores are float32 values (the Rust side takes f32), written as the exact float64 they widen
  to. Two cases evaluate the same data with BEIR's ignore_identical_ids True (its default) and
  False. For each: pytrec_eval's per-query ndcg_cut_k and recall_k, BEIR's per-query reciprocal
  rank, and the means as BEIR's EvaluateRetrieval.evaluate and evaluate_custom(metric="mrr")
  compute them, both unrounded and rounded to 5 digits as BEIR reports them.
- correlation.json: pairs of vectors (small integers and one-decimal floats, so with many ties;
  plain floats; a constant vector; n = 2 and 3) with scipy.stats.spearmanr and
  scipy.stats.pearsonr (null where scipy returns NaN).

BEIR's evaluation code below is reproduced from beir 2.2.0 (beir/retrieval/evaluation.py,
EvaluateRetrieval.evaluate, and beir/retrieval/custom_metrics.py, mrr), only changed to also
return the unrounded means and the per-query values; importing beir itself would pull in torch.

Made with Python 3.11.7, pytrec_eval-terrier 0.5.11 (its bundled trec_eval), scipy 1.17.1,
numpy 2.4.6.

Usage: python3 scripts/gen_retrieval_fixture.py
Needs: pip install pytrec_eval-terrier==0.5.11 scipy==1.17.1
"""
import copy
import json
import math
import pathlib
import random
import struct
import sys
import warnings

import numpy as np
import pytrec_eval
import scipy
import scipy.stats

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "retrieval"
K_VALUES = [1, 3, 10, 100]


# --- BEIR 2.2.0: EvaluateRetrieval.evaluate (ndcg and recall; map and P dropped) -------------
def beir_evaluate(qrels, results, k_values, ignore_identical_ids=True):
    if ignore_identical_ids:
        popped = []
        for qid, rels in results.items():
            for pid in list(rels):
                if qid == pid:
                    results[qid].pop(pid)
                    popped.append(pid)

    ndcg = {}
    recall = {}
    for k in k_values:
        ndcg[f"NDCG@{k}"] = 0.0
        recall[f"Recall@{k}"] = 0.0

    ndcg_string = "ndcg_cut." + ",".join([str(k) for k in k_values])
    recall_string = "recall." + ",".join([str(k) for k in k_values])
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {ndcg_string, recall_string})
    scores = evaluator.evaluate(results)

    for query_id in scores.keys():
        for k in k_values:
            ndcg[f"NDCG@{k}"] += scores[query_id]["ndcg_cut_" + str(k)]
            recall[f"Recall@{k}"] += scores[query_id]["recall_" + str(k)]

    unrounded = {}
    for k in k_values:
        unrounded[f"NDCG@{k}"] = ndcg[f"NDCG@{k}"] / len(scores)
        unrounded[f"Recall@{k}"] = recall[f"Recall@{k}"] / len(scores)
        ndcg[f"NDCG@{k}"] = round(ndcg[f"NDCG@{k}"] / len(scores), 5)
        recall[f"Recall@{k}"] = round(recall[f"Recall@{k}"] / len(scores), 5)

    return ndcg, recall, unrounded, scores


# --- BEIR 2.2.0: custom_metrics.mrr (evaluate_custom(..., metric="mrr")) ----------------------
def beir_mrr(qrels, results, k_values):
    MRR = {}
    per_query = {}

    for k in k_values:
        MRR[f"MRR@{k}"] = 0.0

    k_max, top_hits = max(k_values), {}

    for query_id, doc_scores in results.items():
        top_hits[query_id] = sorted(doc_scores.items(), key=lambda item: item[1], reverse=True)[0:k_max]

    for query_id in top_hits:
        per_query[query_id] = {}
        query_relevant_docs = set([doc_id for doc_id in qrels[query_id] if qrels[query_id][doc_id] > 0])
        for k in k_values:
            per_query[query_id][f"rr_{k}"] = 0.0
            for rank, hit in enumerate(top_hits[query_id][0:k]):
                if hit[0] in query_relevant_docs:
                    MRR[f"MRR@{k}"] += 1.0 / (rank + 1)
                    per_query[query_id][f"rr_{k}"] = 1.0 / (rank + 1)
                    break

    unrounded = {}
    for k in k_values:
        unrounded[f"MRR@{k}"] = MRR[f"MRR@{k}"] / len(qrels)
        MRR[f"MRR@{k}"] = round(MRR[f"MRR@{k}"] / len(qrels), 5)

    return MRR, unrounded, per_query


# --- synthetic data ---------------------------------------------------------------------------
def f32(x):
    """The float32 nearest x, as the float64 it widens to."""
    return struct.unpack("f", struct.pack("f", x))[0]


def synthetic(rng):
    n_docs = 400
    qrels = {}
    # Judged queries 0..49; 45..49 are left out of the run.
    for q in range(50):
        qid = str(q)
        n = rng.randint(1, 8)
        docs = rng.sample(range(n_docs), n)
        if q % 11 == 3:
            qrels[qid] = {str(d): 0 for d in docs}  # judged, nothing relevant
        else:
            qrels[qid] = {str(d): rng.choice([0, 1, 1, 2]) for d in docs}
    results = {}
    # Run queries 0..44 and 50..54 (the last five have no judgments).
    for q in list(range(45)) + list(range(50, 55)):
        qid = str(q)
        if q in (7, 30, 51):
            results[qid] = []  # a query with no hits
            continue
        n = rng.choice([3, 8, 15, 30, 60]) if q % 9 else rng.randint(101, 150)
        pool = list(qrels.get(qid, {}).keys())
        # Some judged documents are retrieved, the rest never are.
        docs = [d for d in pool if rng.random() < 0.6]
        docs += [str(d) for d in rng.sample(range(n_docs), n)]
        if q % 5 == 0:
            docs.insert(rng.randint(0, len(docs)), qid)  # the query's own id among the hits
        seen, uniq = set(), []
        for d in docs:
            if d not in seen:
                seen.add(d)
                uniq.append(d)
        rng.shuffle(uniq)
        if q % 3 == 0:
            # Few distinct scores: many ties, broken by doc id (pytrec_eval) or list order (MRR).
            scores = [rng.choice([0.25, 0.5, 0.75, 1.0]) for _ in uniq]
        elif q % 3 == 1:
            scores = [f32(rng.uniform(-1, 1)) for _ in uniq]
            for i in range(0, len(scores) - 1, 4):
                scores[i + 1] = scores[i]  # pairs of equal scores
        else:
            scores = [f32(rng.gauss(10, 3)) for _ in uniq]
        results[qid] = [[d, s] for d, s in zip(uniq, scores)]
    return qrels, results


def evaluate_case(qrels, results_lists, ignore_identical_ids):
    # Python dicts keep insertion order: the list order is the order BEIR's stable sort keeps.
    results = {q: {d: s for d, s in hits} for q, hits in results_lists.items()}
    ndcg, recall, unrounded, scores = beir_evaluate(
        copy.deepcopy(qrels), results, K_VALUES, ignore_identical_ids
    )
    # BEIR's mrr indexes qrels[query_id] for every run query; callers pass judged queries only.
    judged_results = {q: r for q, r in results.items() if q in qrels}
    mrr, mrr_unrounded, rr = beir_mrr(qrels, judged_results, K_VALUES)
    unrounded.update(mrr_unrounded)
    per_query = {}
    for q in scores:
        row = {}
        for k in K_VALUES:
            row[f"ndcg_cut_{k}"] = scores[q][f"ndcg_cut_{k}"]
            row[f"recall_{k}"] = scores[q][f"recall_{k}"]
            row[f"rr_{k}"] = rr[q][f"rr_{k}"]
        per_query[q] = row
    rounded = {**ndcg, **recall, **mrr}
    return {
        "ignore_identical_ids": ignore_identical_ids,
        "queries": len(scores),
        "judged_queries": len(qrels),
        "per_query": per_query,
        "mean": unrounded,
        "beir": rounded,
    }


# --- correlations -----------------------------------------------------------------------------
def nan_to_none(x):
    x = float(x)
    return None if math.isnan(x) else x


def correlation_cases(rng):
    cases = []

    def add(name, x, y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = scipy.stats.spearmanr(x, y).statistic
            p = scipy.stats.pearsonr(x, y).statistic
        cases.append({"name": name, "x": x, "y": y, "spearman": nan_to_none(s), "pearson": nan_to_none(p)})

    for n in (2, 3, 10, 50, 300):
        add(f"small ints n={n}", [rng.randint(0, 5) for _ in range(n)], [rng.randint(0, 3) for _ in range(n)])
    for n in (20, 200):
        x = [round(rng.uniform(0, 5), 1) for _ in range(n)]
        add(f"one decimal, correlated n={n}", x, [round(v + rng.gauss(0, 1), 1) for v in x])
    x = [rng.gauss(0, 1) for _ in range(100)]
    add("floats n=100", x, [v * 0.5 + rng.gauss(0, 1) for v in x])
    add("anti-correlated with ties", [1, 2, 2, 3, 4, 4, 4, 5], [9, 7, 7, 6, 3, 3, 2, 0])
    add("perfect", [1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0])
    add("constant x", [2.0] * 6, [1, 2, 3, 4, 5, 6])
    add("large offset", [1e6 + v for v in (0.5, 0.25, 0.75, 1.0, 0.0)], [3, 1, 4, 1, 5])
    return cases


def main():
    rng = random.Random(20240601)
    OUT.mkdir(parents=True, exist_ok=True)
    qrels, results = synthetic(rng)
    retrieval = {
        "versions": {
            "python": sys.version.split()[0],
            "pytrec_eval": pytrec_eval.__version__,
            "beir_code": "2.2.0",
        },
        "k_values": K_VALUES,
        "qrels": qrels,
        "results": results,
        "cases": [evaluate_case(qrels, results, flag) for flag in (True, False)],
    }
    with open(OUT / "retrieval.json", "w", encoding="utf-8") as f:
        json.dump(retrieval, f, indent=0, sort_keys=False)
    correlation = {
        "versions": {"python": sys.version.split()[0], "scipy": scipy.__version__, "numpy": np.__version__},
        "cases": correlation_cases(rng),
    }
    with open(OUT / "correlation.json", "w", encoding="utf-8") as f:
        json.dump(correlation, f, indent=0)
    c = retrieval["cases"][0]
    print(
        f"retrieval: {len(results)} run queries, {len(qrels)} judged, {c['queries']} evaluated, "
        f"NDCG@10 {c['beir']['NDCG@10']} MRR@10 {c['beir']['MRR@10']} Recall@100 {c['beir']['Recall@100']}; "
        f"correlation: {len(correlation['cases'])} cases",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
