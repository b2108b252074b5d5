#!/usr/bin/env python3
"""Reference figures for decodex's ROUGE and SQuAD metrics.

Writes tests/fixtures/metrics/rouge.json and squad.json: pairs of texts with the reference
implementations' scores, so the tests need neither Python nor the data folder.

- ROUGE: Google's rouge-score 0.1.2, RougeScorer(["rouge1", "rouge2", "rougeL"]) with
  use_stemmer True and False; for each pair its precision, recall and F. Pairs: DialogSum test
  references against another annotator's summary, against system-like perturbations of
  themselves and against unrelated summaries, plus hand-written edge cases (empty strings,
  punctuation only, unicode, digits, words the stemmer treats specially). Also the three-reference
  score_multi of 60 summaries.
- SQuAD: the functions of the official evaluate-v1.1.py (normalize_answer, f1_score,
  exact_match_score, metric_max_over_ground_truths), reproduced below from the official script
  so that this file has no other dependency; pairs are the two official prediction files'
  answers for dev questions with their gold answers, plus edge cases.

Usage: DECODEX_DATA=/path/to/shared/data python3 scripts/gen_metric_fixtures.py
Needs: pip install rouge-score==0.1.2 (it pulls nltk; the fixtures were made with nltk 3.10.4).
"""
import collections
import json
import os
import pathlib
import random
import re
import string
import sys

import nltk
from rouge_score import rouge_scorer

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "metrics"
DATA = pathlib.Path(os.environ.get("DECODEX_DATA", str(ROOT.parent / "shared" / "data")))


# --- the official SQuAD v1.1 evaluation (evaluate-v1.1.py) ---------------------------------
def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def exact_match_score(prediction, ground_truth):
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


# --- pairs ----------------------------------------------------------------------------------
EDGE_ROUGE = [
    ("", ""),
    ("", "a summary with words"),
    ("a reference with words", ""),
    ("!!! ... ???", "--- ,,,"),
    ("Café crème brûlée à Paris", "cafe creme brulee a paris"),
    ("Ünïcödé wörds — “quoted” and ‘single’", "unicode words quoted and single"),
    ("日本語のテキスト and English", "English and 日本語"),
    ("The 1990s were 2x faster in 2023", "In the 1990s it was 2 times faster"),
    ("skies dying lying tying news innings outings cannings howe proceed",
     "sky die lie tie news inning outing canning howe proceeding"),
    ("generalizations relational conditional hopefulness formality",
     "generalize relate condition hopeful formal"),
    ("caresses ponies ties caress cats", "caress pony tie caresses cat"),
    ("controlling rolled hopping filing failing", "control roll hop file fail"),
    ("analogies logically apologies", "analogy logic apology"),
    ("yyyy yay eye boy toy syzygy", "yay boy"),
    ("#Person1# asks #Person2# about the trip.", "Person1 asks Person2 about the trip"),
    ("it it it it it", "it"),
    ("the the cat cat", "the cat the cat"),
    ("a", "a"),
    ("a b", "b a"),
    ("İstanbul KELVIN Straße ΣΊΣΥΦΟΣ", "istanbul kelvin strasse sisyphus"),
]

EDGE_SQUAD = [
    ("", [""]),
    ("", ["Denver Broncos"]),
    ("Denver Broncos", [""]),
    ("the", ["a"]),
    ("The Broncos!", ["Denver Broncos", "Broncos"]),
    ("Café au lait", ["cafe au lait", "Café-au-lait"]),
    ("“Saint Bernadette”", ["Saint Bernadette Soubirous"]),
    ("an an a the thé", ["thé"]),
    ("1,000,000 people", ["1000000"]),
    ("Ünïcödé — text", ["ünïcödé text"]),
    ("北京 China", ["北京"]),
    ("the_the", ["the the"]),
    ("apple\u00a0pie\tand\ncream", ["apple pie and cream"]),
    ("abc\u001cdef", ["abc def"]),
    ("Ⅷ century", ["viii century"]),
    ("İzmir", ["izmir", "i̇zmir"]),
    ("a-the-an", ["athean"]),
    ("cat cat dog", ["cat dog dog"]),
]


def perturb(text, rng, vocab):
    words = text.split()
    out = []
    for w in words:
        r = rng.random()
        if r < 0.1:
            continue
        if r < 0.2:
            out.append(rng.choice(vocab))
            continue
        if r < 0.25:
            out.append(w.upper())
            continue
        out.append(w)
        if r > 0.95:
            out.append(rng.choice(vocab))
    if len(out) > 3 and rng.random() < 0.3:
        i = rng.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    return " ".join(out)


def rouge_pairs(rng):
    lines = [json.loads(l) for l in open(DATA / "sum" / "dialogsum" / "test.jsonl", encoding="utf-8")]
    vocab = sorted({w for l in lines for w in l["summary"].split()})
    pairs = list(EDGE_ROUGE)
    for i, l in enumerate(lines[:90]):
        ref = l["summaries"][0]
        pairs.append((ref, l["summaries"][1 + i % 2]))
        pairs.append((ref, perturb(ref, rng, vocab)))
    for i in range(60):
        a, b = rng.sample(lines, 2)
        pairs.append((a["summary"], b["summary"]))
    multi = []
    for l in lines[100:160]:
        hyp = perturb(l["summaries"][rng.randrange(3)], rng, vocab)
        multi.append((l["summaries"], hyp))
    return pairs, multi


def squad_pairs(rng):
    dev = json.load(open(DATA / "qa" / "squad" / "dev-v1.1.json", encoding="utf-8"))
    qas = [qa for a in dev["data"] for p in a["paragraphs"] for qa in p["qas"]]
    preds = {}
    for name in ["logistic_regression_baseline", "bert_ensemble"]:
        path = DATA / "qa" / "squad" / "predictions" / f"{name}.dev-v1.1.predictions.json"
        preds[name] = json.load(open(path, encoding="utf-8"))
    pairs = [(p, t) for p, t in EDGE_SQUAD]
    for qa in rng.sample(qas, 240):
        name = rng.choice(sorted(preds))
        pred = preds[name].get(qa["id"], "")
        pairs.append((pred, [a["text"] for a in qa["answers"]]))
    return pairs


def main():
    assert nltk.__version__ == "3.10.4", nltk.__version__
    rng = random.Random(20261202)
    OUT.mkdir(parents=True, exist_ok=True)
    pairs, multi = rouge_pairs(rng)
    scorers = {
        stem: rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=stem)
        for stem in (True, False)
    }

    def flat(scores):
        return {k: [v.precision, v.recall, v.fmeasure] for k, v in scores.items()}

    rouge = {
        "rouge_score_version": "0.1.2",
        "nltk_version": nltk.__version__,
        "pairs": [
            {
                "target": t,
                "prediction": p,
                "stem": flat(scorers[True].score(t, p)),
                "nostem": flat(scorers[False].score(t, p)),
            }
            for t, p in pairs
        ],
        "multi": [
            {"targets": ts, "prediction": p, "stem": flat(scorers[True].score_multi(ts, p))}
            for ts, p in multi
        ],
    }
    with open(OUT / "rouge.json", "w", encoding="utf-8") as f:
        json.dump(rouge, f, ensure_ascii=False, indent=0)
    squad = {
        "pairs": [
            {
                "prediction": p,
                "truths": ts,
                "normalized": normalize_answer(p),
                "em": float(metric_max_over_ground_truths(exact_match_score, p, ts)),
                "f1": float(metric_max_over_ground_truths(f1_score, p, ts)),
            }
            for p, ts in squad_pairs(rng)
        ]
    }
    with open(OUT / "squad.json", "w", encoding="utf-8") as f:
        json.dump(squad, f, ensure_ascii=False, indent=0)
    print(f"rouge: {len(rouge['pairs'])} pairs, {len(multi)} multi; squad: {len(squad['pairs'])} pairs",
          file=sys.stderr)


if __name__ == "__main__":
    main()
