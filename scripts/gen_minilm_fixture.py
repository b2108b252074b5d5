#!/usr/bin/env python3
"""Reference fixture for the all-MiniLM-L6-v2 sentence encoder, from sentence-transformers.

Chooses 1,000 texts deterministically from $DECODEX_DATA (default ../shared/data next to the
repository), encodes them with SentenceTransformer(MODEL, device="cpu").encode(batch_size=32,
normalize_embeddings=True) (mean pooling over the attention mask, L2 normalisation, truncation
to max_seq_length 256 tokens *including* [CLS] and [SEP]) and writes, under tests/fixtures/minilm/:

  sentences.jsonl   one {"text": ...} per line (ensure_ascii=False), in this order:
                    28 edge cases (empty, whitespace, "a", accents, CJK, emoji, control and
                    zero-width characters, a 150-letter word, long repetitive text ...),
                    8 SciFact documents of exactly 253..256 wordpieces (the truncation boundary),
                    then, spread evenly through each other: 400 STS-B test sentences, 150 SciFact
                    queries, 160 SciFact documents (title + " " + text; 80 longer than 256
                    wordpieces, incl. the 2 longest of the corpus) and 254 Gutenberg valid lines
  embeddings.npy    float32 (1000, 384), C order, npy format 1.0
  tokens.jsonl      for the first 50 texts: {"index", "input_ids", "untruncated_len"}, where
                    input_ids = model.tokenize([text]) (ST strips the text, then BertTokenizerFast
                    with truncation="longest_first", max_length=256) and untruncated_len = the
                    length with [CLS]/[SEP] but without truncation

Usage: python3 scripts/gen_minilm_fixture.py [--model DIR]
  (DIR defaults to $DECODEX_MODELS/all-MiniLM-L6-v2, as fetched by scripts/fetch_models.sh)
Made with: Python 3.11.7, torch 2.5.1 (CPU), transformers 4.46.3, tokenizers 0.20.3,
sentence-transformers 3.3.1, numpy 2.4.6 (scripts/requirements-reference.txt).
"""
import argparse
import json
import os
import pathlib

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "minilm"
MODELS = os.environ.get("DECODEX_MODELS", os.path.expanduser("~/.cache/decodex/models"))

EDGE = [
    "",
    "a",
    "A",
    "   ",
    "\t\n  hello   world \n\t",
    "Hello,   world!!!   How    are\tyou?\n\nFine.",
    "Café naïve résumé façade Ångström déjà vu",
    "Cre\u0300me bru\u0302le\u0301e with combining accents",
    "Crème brûlée — “smart quotes” … ‘apostrophes’ «guillemets»",
    "東京は日本の首都です。",
    "我爱自然语言处理，它很有趣！",
    "한국어 문장입니다",
    "Emoji test 😀👍🏽 🎉 done",
    "Привет, как дела?",
    "Ελληνικά κείμενα με τόνους",
    "مرحبا بالعالم",
    "İstanbul and STRASSE and Straße",
    "zero\u200bwidth\u200bspace, soft\u00adhyphen and non\u00a0breaking\u00a0space",
    "bad\ufffdchar, nul\x00byte and bell\x07char",
    "ﬁne ligature and full-width ＡＢＣ１２３",
    "x" * 150,
    "https://example.com/path/to/page?query=1&x=2#frag",
    "e-mail: someone@example.org, tel. +1 (555) 123-4567",
    "3.14159 2,718 1e-10 100% $5.00 #hashtag @user",
    "UPPER CASE TEXT And MiXeD CaSe",
    "word " * 300,
    "!?" * 200,
    "天" * 300,
]


def wordpieces(tok, texts):
    return [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]


def stride(items, n):
    """n items spread evenly over the list (first item always included)."""
    assert len(items) >= n, (len(items), n)
    return [items[i * len(items) // n] for i in range(n)]


def spread(groups):
    """Merge lists so that each list's items are spread evenly over the result."""
    keyed = [((j + 0.5) / len(g), gi, x) for gi, g in enumerate(groups) for j, x in enumerate(g)]
    return [x for _, _, x in sorted(keyed, key=lambda t: (t[0], t[1]))]


def choose(data, tok):
    sts = []
    for line in open(data / "search/stsb/sts-test.csv", encoding="utf-8"):
        f = line.rstrip("\n").split("\t")
        sts += [f[5], f[6]]
    sts = list(dict.fromkeys(sts))  # unique, in order of appearance
    queries = [json.loads(l)["text"] for l in open(data / "search/scifact/queries.jsonl")]
    docs = [json.loads(l) for l in open(data / "search/scifact/corpus.jsonl")]
    docs = [d["title"] + " " + d["text"] for d in docs]
    lens = wordpieces(tok, docs)
    boundary = [d for n in (253, 254, 255, 256) for d in [d for d, l in zip(docs, lens) if l == n][:2]]
    longest = [docs[i] for i in sorted(range(len(docs)), key=lambda i: -lens[i])[:2]]
    long_ = longest + stride([d for d, l in zip(docs, lens) if l > 256 and d not in longest], 78)
    short = stride([d for d, l in zip(docs, lens) if l < 253], 80)
    gut = [l.rstrip("\n") for l in open(data / "lm/gutenberg/valid.txt", encoding="utf-8")]
    gut = list(dict.fromkeys(l for l in gut if l.strip()))
    head = EDGE + boundary
    rest = [stride(sts, 400), stride(queries, 150), spread([long_, short])]
    rest.append(stride(gut, 1000 - len(head) - sum(map(len, rest))))
    texts = head + spread(rest)
    assert len(texts) == 1000 and len(set(texts)) == 1000
    return texts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(MODELS, "all-MiniLM-L6-v2"))
    ap.add_argument("--data", default=os.environ.get("DECODEX_DATA", str(ROOT.parent / "shared" / "data")))
    args = ap.parse_args()
    model = SentenceTransformer(args.model, device="cpu")
    tok = model.tokenizer
    texts = choose(pathlib.Path(args.data), tok)

    emb = model.encode(texts, batch_size=32, normalize_embeddings=True, convert_to_numpy=True)
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    assert emb.shape == (1000, 384)

    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "sentences.jsonl", "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    with open(OUT / "embeddings.npy", "wb") as f:
        np.lib.format.write_array(f, emb, version=(1, 0))
    with open(OUT / "tokens.jsonl", "w", encoding="utf-8") as f:
        for i, t in enumerate(texts[:50]):
            ids = model.tokenize([t])["input_ids"][0].tolist()
            full = len(tok(t.strip())["input_ids"])
            f.write(json.dumps({"index": i, "input_ids": ids, "untruncated_len": full}) + "\n")
    lens = [len(x) for x in tok([t.strip() for t in texts])["input_ids"]]
    print(json.dumps({"texts": len(texts), "truncated": sum(l > 256 for l in lens),
                      "torch": torch.__version__, "out": str(OUT)}))


if __name__ == "__main__":
    main()
