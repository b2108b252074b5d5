#!/usr/bin/env python3
"""A tiny random Llama in Hugging Face format, for the test of decodex's safetensors loader
(rotate-half RoPE, grouped-query attention, untied head): writes tests/fixtures/llama_tiny/
(config.json, model.safetensors) and tests/fixtures/llama_tiny.json (input ids, last-position
logits, greedy 12-token continuation).

Usage: python3 scripts/gen_llama_tiny_fixture.py
"""
import json
import pathlib

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures"

torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rope_theta=5000.0,
                  max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2)
model = LlamaForCausalLM(cfg).eval()
with torch.no_grad():  # sharper than the init, like a trained model
    for p in model.parameters():
        if p.dim() == 2:
            p.mul_(8.0)
model.save_pretrained(OUT / "llama_tiny", safe_serialization=True)
ids = [5, 17, 33, 8, 61, 42, 7]
x = torch.tensor([ids])
with torch.no_grad():
    logits = model(x).logits[0, -1]
    greedy = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False,
                            num_beams=1, eos_token_id=None, pad_token_id=0)[0, len(ids):]
(OUT / "llama_tiny.json").write_text(json.dumps(
    {"input_ids": ids, "logits": logits.tolist(), "greedy": greedy.tolist()}))
print("greedy", greedy.tolist())
