#!/usr/bin/env python3
"""Reference fixtures for the SmolLM2 decoding tests, from Hugging Face transformers.

Loads SmolLM2-135M-Instruct.Q4_1.gguf (fetched by scripts/fetch_models.sh) with
`transformers` (`gguf_file=`, which dequantizes every tensor to float32) and writes:

  tests/fixtures/smollm2_tokens.json      token ids of 1,000 lines of ../shared/data, named by file
                                          and line number (the texts stay in the data folder)
  tests/fixtures/smollm2_generate.json    for 10 prompts: input ids, the top-64 first-step logits,
                                          greedy 32-token continuation, beam search (4 beams,
                                          2 returned, length_penalty 1.0, early_stopping true,
                                          32 new tokens) sequences and sequences_scores
  tests/fixtures/smollm2_logits.safetensors  full first-step logits of the first 2 prompts

Usage: python3 scripts/gen_smollm2_fixture.py [--models DIR] [--data DIR]
Needs: pip install -r scripts/requirements-reference.txt (torch, transformers, gguf).
"""
import argparse
import json
import os
import pathlib

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"

# (file under the data folder, how many lines): prose, verse, German and French (unicode),
# tab-separated pairs, JSON records (code-like: quotes, braces, digits).
SOURCES = [
    ("lm/tinyshakespeare/input.txt", 250),
    ("lm/gutenberg/valid.txt", 250),
    ("mt/multi30k/val.de", 150),
    ("mt/eng-fra/eng-fra.txt", 150),
    ("search/scifact/corpus.jsonl", 100),
    ("search/scifact/queries.jsonl", 100),
]

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "def fibonacci(n):\n",
    "Water boils at a temperature of",
    "The three primary colors are",
    "In 1969, Neil Armstrong",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
    "Le chat est sur la",
    "Machine learning is a field of",
    "import numpy as np\nx = np.",
]


def pick_lines(data: pathlib.Path):
    """Every k-th non-empty line of each source, raw (only the newline removed)."""
    out = []
    for rel, want in SOURCES:
        with open(data / rel, encoding="utf-8", newline="") as f:
            lines = f.read().split("\n")
        # Cut very long lines at 2,000 characters.
        idx = [i for i, l in enumerate(lines) if l.strip()]
        step = max(1, len(idx) // want)
        for i in idx[::step][:want]:
            out.append((rel, i, lines[i][:2000]))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=os.environ.get(
        "DECODEX_MODELS", os.path.expanduser("~/.cache/decodex/models")))
    ap.add_argument("--data", default=os.environ.get("DECODEX_DATA", str(ROOT.parent / "shared" / "data")))
    args = ap.parse_args()
    data = pathlib.Path(args.data)
    tok = AutoTokenizer.from_pretrained(args.models, gguf_file=GGUF)

    lines = pick_lines(data)
    tokens = [{"file": f, "line": i, "chars": len(t), "ids": tok(t, add_special_tokens=False).input_ids}
              for f, i, t in lines]
    (FIX / "smollm2_tokens.json").write_text(json.dumps(tokens))
    print(f"{len(tokens)} lines tokenized")

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.models, gguf_file=GGUF, torch_dtype=torch.float32)
    model.eval()
    # The GGUF has no output.weight: the head is tied to the token embeddings. transformers
    # 4.46.3 leaves lm_head randomly initialized for such files ("newly initialized" warning),
    # so tie it here, as llama.cpp does.
    from gguf import GGUFReader
    if not any(t.name == "output.weight" for t in GGUFReader(os.path.join(args.models, GGUF)).tensors):
        model.lm_head.weight = model.model.embed_tokens.weight
    eos = model.generation_config.eos_token_id
    cases, full = [], {}
    for k, prompt in enumerate(PROMPTS):
        ids = tok(prompt, add_special_tokens=False).input_ids
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = model(x).logits[0, -1].float()
        top = torch.topk(logits, 64)
        if k < 2:
            full[f"logits_{k}"] = logits.contiguous()
        with torch.no_grad():
            greedy = model.generate(x, max_new_tokens=32, do_sample=False, num_beams=1,
                                    attention_mask=torch.ones_like(x), pad_token_id=eos)
            beam = model.generate(x, max_new_tokens=32, do_sample=False, num_beams=4,
                                  num_return_sequences=2, length_penalty=1.0, early_stopping=True,
                                  attention_mask=torch.ones_like(x), pad_token_id=eos,
                                  output_scores=True, return_dict_in_generate=True)
        n = len(ids)
        seqs = [s[n:].tolist() for s in beam.sequences]
        cases.append({
            "prompt": prompt,
            "input_ids": ids,
            "top_ids": top.indices.tolist(),
            "top_logits": top.values.tolist(),
            "greedy": greedy[0, n:].tolist(),
            "beam_sequences": seqs,
            "beam_scores": beam.sequences_scores.tolist(),
        })
        print(k, repr(prompt), "->", repr(tok.decode(greedy[0, n:])))
    (FIX / "smollm2_generate.json").write_text(json.dumps({"eos_token_id": eos, "cases": cases}, indent=1))
    save_file(full, str(FIX / "smollm2_logits.safetensors"))


if __name__ == "__main__":
    main()
