#!/usr/bin/env python3
"""Reference search/similarity quality of all-MiniLM-L6-v2 through sentence-transformers (CPU).

(a) STS-B test ($DECODEX_DATA/search/stsb/sts-test.csv, split on TAB, columns 5 and 6 = the
    sentence pair, column 4 = gold score): Spearman and Pearson (scipy) between the cosine
    similarity of the normalised embeddings and the gold score (published, MTEB: Spearman 0.8203,
    Pearson 0.8274).
(b) SciFact test (BEIR): exact cosine search of the 300 test queries over the 5,183 documents
    (text = (title + " " + text).strip()), top 1,000 per query, documents whose id equals the
    query id dropped (BEIR's ignore_identical_ids), then as BEIR's EvaluateRetrieval.evaluate:
    pytrec_eval ndcg_cut.10 and recall.100 averaged over the evaluated queries, and MRR@10 as
    BEIR's evaluate_custom (first relevant hit in the top 10, averaged over the qrels' queries).
    Published (MTEB): nDCG@10 0.6451, recall@100 0.925.
Prints one JSON object. --save-run writes the top 100 per test query {qid: {docid: score}};
--save-per-query writes {qid: ndcg@10}.

    python3 scripts/ref_search_eval.py [--model DIR] [--save-run F.json] [--save-per-query F.json]

Versions used: Python 3.11.7, torch 2.5.1, transformers 4.46.3, sentence-transformers 3.3.1,
scipy 1.17.1, pytrec_eval-terrier 0.5.11, numpy 2.4.6.
"""
import argparse
import json
import os
import pathlib
from importlib.metadata import version

import numpy as np
import pytrec_eval
import torch
from scipy.stats import pearsonr, spearmanr
from sentence_transformers import SentenceTransformer

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = os.environ.get("DECODEX_MODELS", os.path.expanduser("~/.cache/decodex/models"))


def stsb(model, data):
    rows = [l.rstrip("\n").split("\t") for l in open(data / "search/stsb/sts-test.csv", encoding="utf-8")]
    gold = np.array([float(r[4]) for r in rows])
    a = model.encode([r[5] for r in rows], batch_size=32, normalize_embeddings=True)
    b = model.encode([r[6] for r in rows], batch_size=32, normalize_embeddings=True)
    cos = (a * b).sum(axis=1)
    return {"pairs": len(rows), "spearman": spearmanr(cos, gold).statistic,
            "pearson": pearsonr(cos, gold).statistic}


def scifact(model, data, top_k=1000):
    d = data / "search/scifact"
    corpus = [json.loads(l) for l in open(d / "corpus.jsonl", encoding="utf-8")]
    queries = {q["_id"]: q["text"] for q in map(json.loads, open(d / "queries.jsonl", encoding="utf-8"))}
    qrels = {}
    for line in open(d / "qrels/test.tsv", encoding="utf-8").read().splitlines()[1:]:
        qid, did, score = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(score)
    qids = sorted(qrels, key=int)
    doc_ids = [c["_id"] for c in corpus]
    docs = model.encode([(c["title"] + " " + c["text"]).strip() for c in corpus], batch_size=32,
                        normalize_embeddings=True, convert_to_tensor=True)
    qs = model.encode([queries[q] for q in qids], batch_size=32, normalize_embeddings=True,
                      convert_to_tensor=True)
    scores, idx = torch.topk(qs @ docs.T, k=min(top_k + 1, len(doc_ids)), dim=1)
    run = {}
    for qid, s_row, i_row in zip(qids, scores.tolist(), idx.tolist()):
        hits = [(doc_ids[i], s) for i, s in zip(i_row, s_row) if doc_ids[i] != qid][:top_k]
        run[qid] = dict(hits)
    per_q = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    mrr = 0.0
    for qid in qrels:
        top = sorted(run.get(qid, {}).items(), key=lambda kv: kv[1], reverse=True)[:10]
        rel = {did for did, r in qrels[qid].items() if r > 0}
        mrr += next((1.0 / (rank + 1) for rank, (did, _) in enumerate(top) if did in rel), 0.0)
    mean = lambda m: sum(v[m] for v in per_q.values()) / len(per_q)
    out = {"queries": len(per_q), "docs": len(doc_ids), "ndcg@10": mean("ndcg_cut_10"),
           "mrr@10": mrr / len(qrels), "recall@100": mean("recall_100")}
    top100 = {q: dict(sorted(h.items(), key=lambda kv: kv[1], reverse=True)[:100]) for q, h in run.items()}
    return out, top100, {q: v["ndcg_cut_10"] for q, v in per_q.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(MODELS, "all-MiniLM-L6-v2"))
    ap.add_argument("--data", default=os.environ.get("DECODEX_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--save-run")
    ap.add_argument("--save-per-query")
    args = ap.parse_args()
    data = pathlib.Path(args.data)
    model = SentenceTransformer(args.model, device="cpu")
    res = {"stsb_test": stsb(model, data)}
    res["scifact_test"], run, per_q = scifact(model, data)
    if args.save_run:
        json.dump(run, open(args.save_run, "w"))
    if args.save_per_query:
        json.dump(per_q, open(args.save_per_query, "w"), indent=0, sort_keys=True)
    res["versions"] = {p: version(p) for p in
                       ("torch", "transformers", "sentence-transformers", "pytrec_eval-terrier")}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
