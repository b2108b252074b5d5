#!/usr/bin/env python3
"""Checks that an adapter written by `decodex finetune --method lora` loads in PEFT and computes
the same function as decodex's own `--adapter` path.

Loads SmolLM2-135M-Instruct.Q4_1.gguf with transformers (`gguf_file=`: every tensor dequantized
to float32, q/k rows back in Hugging Face's order), wraps it with
`peft.PeftModel.from_pretrained(model, ADAPTER)`, and compares its logits on a few texts with
those of `decodex logits --model GGUF --adapter ADAPTER` (every position, every vocabulary
entry). Also checks that the adapter is not a no-op (its logits move away from the base's).

Usage: python3 scripts/check_peft_adapter.py ADAPTER_DIR [--models DIR] [--decodex BIN]
Needs: pip install -r scripts/requirements-reference.txt peft==0.13.2
"""
import argparse
import json
import os
import pathlib
import subprocess
import tempfile

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
ROOT = pathlib.Path(__file__).resolve().parent.parent
TEXTS = [
    "#Person1#: Hi, how are you doing today?\n#Person2#: Fine, thanks. I'm looking for a new flat.",
    "Summarize the following dialogue in one or two sentences.",
    "The 2008 Sichuan earthquake killed 69,197 people.",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("adapter")
    ap.add_argument("--models", default=os.environ.get("DECODEX_MODELS", os.path.expanduser("~/.cache/decodex/models")))
    ap.add_argument("--decodex", default=str(ROOT / "target" / "release" / "decodex"))
    a = ap.parse_args()
    torch.set_num_threads(2)
    base = AutoModelForCausalLM.from_pretrained(a.models, gguf_file=GGUF, torch_dtype=torch.float32)
    # The GGUF has no output.weight (the head is tied to the embeddings), which transformers
    # 4.46.3 leaves randomly initialized: tie it, as llama.cpp and decodex do.
    base.lm_head.weight = base.model.embed_tokens.weight
    model = PeftModel.from_pretrained(base, a.adapter)
    model.eval()
    worst, moved = 0.0, 0.0
    for text in TEXTS:
        with tempfile.TemporaryDirectory() as tmp:
            out = pathlib.Path(tmp) / "l.safetensors"
            gguf = str(pathlib.Path(a.models) / GGUF)
            subprocess.run([a.decodex, "logits", "--model", gguf, "--adapter", a.adapter, "--text", text,
                            "--out", str(out), "--json"], check=True, capture_output=True)
            got = load_file(str(out))
        ids = got["input_ids"].long()
        with torch.no_grad():
            want = model(input_ids=ids).logits
            with model.disable_adapter():
                plain = model(input_ids=ids).logits
        d = (got["logits"] - want).abs().max().item()
        worst = max(worst, d)
        moved = max(moved, (want - plain).abs().max().item())
        print(json.dumps({"text": text[:40], "tokens": ids.shape[1], "max_abs_diff": d}))
    ok = worst < 1e-3 and moved > 1e-2
    print(json.dumps({"max_abs_diff": worst, "adapter_moves_logits_by": moved, "ok": ok}))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
