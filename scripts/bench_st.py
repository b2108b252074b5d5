#!/usr/bin/env python3
"""Encoding-throughput baseline: sentence-transformers' `model.encode` on the CPU.

Loads the all-MiniLM-L6-v2 folder (--model, default $DECODEX_MODELS/all-MiniLM-L6-v2, as fetched
by scripts/fetch_models.sh), reads the texts of a JSONL file ({"text": ...} per line), runs one
untimed warm-up encode, then times `--rounds` calls of
model.encode(texts, batch_size=BATCH, normalize_embeddings=True) and prints one JSON line per
round: {"round": i, "sentences": n, "seconds": s, "sentences_per_s": x}.

    python3 scripts/bench_st.py --sentences tests/fixtures/minilm/sentences.jsonl \\
        --threads 2 --rounds 3 --batch 32

Versions used: Python 3.11.7, torch 2.5.1, transformers 4.46.3, sentence-transformers 3.3.1.
"""
import argparse
import json
import os
import sys
import time

import torch

MODELS = os.environ.get("DECODEX_MODELS", os.path.expanduser("~/.cache/decodex/models"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sentences", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--model", default=os.path.join(MODELS, "all-MiniLM-L6-v2"))
    args = ap.parse_args()
    # Before any torch work: set_num_interop_threads fails once parallel work has started.
    torch.set_num_interop_threads(1)
    torch.set_num_threads(args.threads)
    if not os.path.isfile(os.path.join(args.model, "modules.json")):
        sys.exit(f"error: no sentence-transformers model at {args.model}; run scripts/fetch_models.sh "
                 "or pass --model DIR")
    from sentence_transformers import SentenceTransformer

    with open(args.sentences, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    model = SentenceTransformer(args.model, device="cpu")
    enc = lambda: model.encode(texts, batch_size=args.batch, normalize_embeddings=True,
                               show_progress_bar=False)
    enc()  # warm-up
    for i in range(args.rounds):
        t0 = time.perf_counter()
        enc()
        s = time.perf_counter() - t0
        print(json.dumps({"round": i, "sentences": len(texts), "seconds": round(s, 4),
                          "sentences_per_s": round(len(texts) / s, 2)}), flush=True)


if __name__ == "__main__":
    main()
