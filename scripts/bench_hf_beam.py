#!/usr/bin/env python3
"""Beam search speed of Hugging Face transformers on CPU, for comparison with
`decodex bench decode --beam`: SmolLM2-135M-Instruct from the same GGUF (dequantized to f32 by
transformers), 4 beams, 32 new tokens, early_stopping, the first 32 tokens of Tiny Shakespeare as
the prompt, EOS disabled so every run makes 32 tokens. Prints one JSON line.

Usage: python3 scripts/bench_hf_beam.py [--threads 2] [--reps 3]
"""
import argparse
import json
import os
import pathlib
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = pathlib.Path(__file__).resolve().parent.parent
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = os.environ.get("DECODEX_MODELS", os.path.expanduser("~/.cache/decodex/models"))
    tok = AutoTokenizer.from_pretrained(models, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(models, gguf_file=GGUF, torch_dtype=torch.float32)
    model.lm_head.weight = model.model.embed_tokens.weight  # tied (see gen_smollm2_fixture.py)
    model.eval()
    data = os.environ.get("DECODEX_DATA", str(ROOT.parent / "shared" / "data"))
    text = open(os.path.join(data, "lm/tinyshakespeare/input.txt"), encoding="utf-8").read()[:2000]
    ids = torch.tensor([tok(text, add_special_tokens=False).input_ids[:32]])
    times = []
    for rep in range(args.reps + 1):
        t = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32,
                                 min_new_tokens=32, num_beams=4, early_stopping=True,
                                 do_sample=False, pad_token_id=2)
        if rep > 0:
            times.append(time.perf_counter() - t)
    n = out.shape[1] - ids.shape[1]
    print(json.dumps({"impl": "transformers 4.46.3 (torch 2.5.1, f32)", "threads": args.threads,
                      "new_tokens": n, "beam4_tokens_per_sec": n / statistics.median(times)}))


if __name__ == "__main__":
    main()
