#!/usr/bin/env python3
"""Compatibility fixtures that CI checks without Python (tests/compat.rs): decodex's files read by
the Python tools, and the Python tools' answers written down.

Writes, under tests/fixtures/compat/ (each JSON records the versions that made it, "generator"):

  tokenizers/char.json, tokenizers/bpe.json
                  tokenizer.json files trained by `decodex tokenizer train` (char; byte-level
                  BPE, vocabulary 400) on the first 40,000 characters of Tiny Shakespeare
  tokenizers.json Python `tokenizers` ids and decoded strings for each file on edge-case texts
                  (empty, whitespace runs, tabs, CRLF, unicode, combining marks, emoji,
                  zero-width and control characters, <|endoftext|>, a 90 kB text past the
                  parallel-encoding cut, as a count, sha256 and head of the ids); for char, the
                  characters the vocabulary lacks (Python drops them, decodex refuses them)
  gpt_char/, gpt_bpe/
                  decodex checkpoints (config.json, model.safetensors, tokenizer.json) from
                  `decodex train`: char, no biases, gelu_new / the BPE above, biases, exact gelu
  gpt_char_hf/, gpt_bpe_hf/
                  `decodex export --format hf` of each
  gpt_export.json, gpt_logits.safetensors
                  per export: texts, `PreTrainedTokenizerFast` ids and `GPT2LMHeadModel` logits
                  (float32, every position; tensors "<model>.<i>", (T, V))
  lora/           a LoRA adapter (rank 4, alpha 8, all seven projections, 40 steps) written by
                  `decodex finetune --method lora` on tests/fixtures/llama_tiny with a char
                  tokenizer over the 96 characters of `LLAMA_CHARS`
  peft.json, peft_logits.safetensors
                  per text: `tokenizers` ids, and `PeftModel.from_pretrained` logits with the
                  adapter ("adapter.<i>"), with it disabled ("base.<i>") and merged into the
                  base weights by `merge_and_unload` ("merged.<i>", as decodex's --adapter does)
  npy/numpy_*.npy numpy-written arrays of known values: float32 (5, 3) C order in format 1.0,
                  2.0 and 3.0, and the files decodex must refuse (Fortran order, float64,
                  big-endian, 3-d)
  npy/decodex_embed.npy, npy/embed_texts.txt
                  `decodex embed --model gpt_char` of the texts (and whether numpy's np.save of
                  what it read is the same bytes)
  npy.json        the values (as float32 bit patterns) and numpy's reading of every .npy:
                  shape, dtype, fortran_order, format version, data offset

Usage: cargo build --release && python3 scripts/gen_compat_fixtures.py [--decodex BIN]
  (the data slice comes from $DECODEX_DATA, default ../shared/data). Every file is rewritten;
  decodex's safetensors headers list their metadata in hash-map order, so a rerun changes bytes
  even where no value changes.
Made with: Python 3.11.7, torch 2.5.1, transformers 4.46.3, tokenizers 0.20.3, peft 0.13.2,
numpy 2.4.6, safetensors 0.8.0 (scripts/requirements-reference.txt).
"""
import argparse
import hashlib
import io
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import peft
import safetensors
import tokenizers
import torch
import transformers
from peft import PeftModel
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import GPT2LMHeadModel, LlamaForCausalLM, PreTrainedTokenizerFast

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "compat"
DATA = pathlib.Path(os.environ.get("DECODEX_DATA", ROOT.parent / "shared" / "data"))
SLICE_CHARS = 40_000

sys.path.insert(0, str(ROOT / "scripts"))
import check_hf_export  # noqa: E402  (the hand-run check, reused on the fresh exports)

TOKENIZER_TEXTS = [
    "",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "   ",
    "\n",
    " \n \n  \n",
    "  leading and trailing spaces  ",
    "runs    of     spaces and\n\n\n\nnewlines",
    "tabs\tand\t\ttabs \t \n mixed",
    "windows\r\nline\r\nends\r\n",
    "it's they'll we've I'm don't o'er",
    "ALL CAPS SHOUTING!!! ??? ...",
    "123 4567 89,000.5",
    "Café naïve résumé — “quotes” … ‘apostrophes’",
    "Cre\u0300me bru\u0302le\u0301e (combining marks)",
    "東京は日本の首都です。",
    "Привет, как дела?",
    "Emoji 😀👍🏽 🎉 and a family 👨‍👩‍👧",
    "zero\u200bwidth, soft\u00adhyphen, non\u00a0breaking",
    "nul\x00byte and bell\x07char",
    "<|endoftext|>between<|endoftext|>",
    "end<|endoftext|>",
    "x" * 300,
    "ROMEO:\nBut soft, what light through yonder window breaks?",
]
# Repeated past byte_level::CHUNK_BYTES (64 KiB), so decodex cuts it and encodes the pieces in
# parallel; whitespace runs at the line ends sit on the cuts.
LONG_UNIT = "First Citizen:\nBefore we proceed any further,  hear me speak.\n\n   All:\nSpeak, speak.  \n\n\n"
LONG_REPEAT = 1000

GPT_TEXTS = {
    "char": ["First Citizen:\nBefore we proceed", "ROMEO:\nBut soft, what light", "A"],
    "bpe": ["First Citizen:\nBefore we proceed any further, hear me speak.",
            "All:\nSpeak, speak.", "A", "ROMEO:\nBut soft! What light?"],
}

# tests/finetune.rs's TEXT: 96 characters, one per id of llama_tiny's vocabulary.
LLAMA_CHARS = ("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:?!'\"{}[]-_\n"
               "#$%&()*+/;<=>@\\^`|~")
PEFT_TEXTS = ["say blue 5: blue blue", "say red 0: ", "The quick brown fox, 42!\n{x} = [y]"]

EMBED_TEXTS = ["First Citizen:", "Before we proceed any further, hear me speak.", "All:",
               "Speak, speak."]


def generator_info():
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None
    commit = git("rev-parse", "HEAD")
    # The binary is built from the working tree: say whether its sources differ from the commit.
    changed = git("status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock")
    return {"script": "scripts/gen_compat_fixtures.py", "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "peft": peft.__version__,
            "numpy": np.__version__, "safetensors": safetensors.__version__,
            "decodex_commit": commit, "decodex_sources_modified": bool(changed)}


def run(decodex, *args, cwd=None):
    out = subprocess.run([decodex, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                         env={**os.environ, "RAYON_NUM_THREADS": "2"})
    if out.returncode != 0:
        raise SystemExit(f"decodex {' '.join(map(str, args))} failed:\n{out.stderr}")
    return out.stdout


def write_json(path, value):
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def ids_digest(ids):
    return hashlib.sha256(np.asarray(ids, dtype="<u4").tobytes()).hexdigest()


def tokenizer_fixtures(decodex, tmp, gen):
    text = (DATA / "lm" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    corpus = tmp / "slice.txt"
    corpus.write_text(text[:SLICE_CHARS], encoding="utf-8")
    tdir = OUT / "tokenizers"
    tdir.mkdir(parents=True, exist_ok=True)
    run(decodex, "tokenizer", "train", "--input", corpus, "--kind", "char", "--out",
        tdir / "char.json")
    run(decodex, "tokenizer", "train", "--input", corpus, "--kind", "bpe", "--vocab-size", 400,
        "--out", tdir / "bpe.json")
    long_text = LONG_UNIT * LONG_REPEAT
    fixture = {"generator": gen, "slice_chars": SLICE_CHARS,
               "long": {"unit": LONG_UNIT, "repeat": LONG_REPEAT}, "tokenizers": {}}
    for name in ("char", "bpe"):
        tok = Tokenizer.from_file(str(tdir / f"{name}.json"))
        vocab = tok.get_vocab(with_added_tokens=True)
        cases = []
        for t in TOKENIZER_TEXTS:
            ids = tok.encode(t, add_special_tokens=False).ids
            case = {"text": t, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False)}
            if name == "char":
                case["unknown"] = sorted({c for c in t if c not in vocab})
            cases.append(case)
        assert name == "bpe" or all(c in vocab for c in LONG_UNIT), "the long unit is in vocab"
        ids = tok.encode(long_text, add_special_tokens=False).ids
        decoded = tok.decode(ids, skip_special_tokens=False)
        fixture["tokenizers"][name] = {
            "file": f"tokenizers/{name}.json", "vocab_size": tok.get_vocab_size(True),
            "cases": cases,
            "long": {"n_ids": len(ids), "ids_sha256": ids_digest(ids), "head": ids[:64],
                     "decoded_sha256": hashlib.sha256(decoded.encode()).hexdigest(),
                     "decodes_back": decoded == long_text}}
        print(f"tokenizer {name}: vocab {tok.get_vocab_size(True)}, {len(cases)} texts, "
              f"long text {len(long_text)} chars -> {len(ids)} ids")
    write_json(OUT / "tokenizers.json", fixture)
    return corpus


GPT_CONFIG = """[data]
corpus = {corpus}
{tokenizer}

[model]
n_layer = 2
n_head = 2
n_embd = {n_embd}
block_size = 32
bias = {bias}
activation = "{activation}"

[train]
batch_size = 8
max_iters = {iters}
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 10
beta1 = 0.9
beta2 = 0.99
weight_decay = 0.1
grad_clip = 1.0
eval_interval = 50
eval_iters = 2
seed = 29
"""

GPT_MODELS = {
    # name: (tokenizer lines, n_embd, bias, activation, iters)
    "char": ('tokenizer = "char"', 32, "false", "gelu_new", 200),
    "bpe": ('tokenizer = "bpe"\ntokenizer_file = {bpe}', 16, "true", "gelu", 150),
}


def gpt_fixtures(decodex, tmp, corpus, gen):
    fixture = {"generator": gen, "models": {}}
    tensors = {}
    torch.set_num_threads(2)
    for name, (tok_line, n_embd, bias, act, iters) in GPT_MODELS.items():
        cfg = tmp / f"gpt_{name}.toml"
        tok_line = tok_line.format(bpe=json.dumps(str(OUT / "tokenizers" / "bpe.json")))
        cfg.write_text(GPT_CONFIG.format(corpus=json.dumps(str(corpus)), tokenizer=tok_line,
                                         n_embd=n_embd, bias=bias, activation=act, iters=iters))
        run_dir = tmp / f"run_{name}"
        run(decodex, "train", "--config", cfg, "--out", run_dir, "--json")
        ckpt, hf = OUT / f"gpt_{name}", OUT / f"gpt_{name}_hf"
        for d in (ckpt, hf):
            shutil.rmtree(d, ignore_errors=True)
        ckpt.mkdir(parents=True)
        for f in ("config.json", "model.safetensors", "tokenizer.json"):
            shutil.copy(run_dir / f, ckpt / f)
        run(decodex, "export", "--model", ckpt, "--format", "hf", "--out", hf, "--json")

        model = GPT2LMHeadModel.from_pretrained(hf, torch_dtype=torch.float32,
                                                local_files_only=True).eval()
        tok = PreTrainedTokenizerFast(tokenizer_file=str(hf / "tokenizer.json"))
        cases = []
        for i, text in enumerate(GPT_TEXTS[name]):
            ids = tok.encode(text, add_special_tokens=False)
            assert 0 < len(ids) <= model.config.n_positions, (name, text, len(ids))
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0].float()  # (T, V)
            tensors[f"{name}.{i}"] = logits.contiguous()
            cases.append({"text": text, "ids": ids, "tensor": f"{name}.{i}"})
            # The hand-run check, on decodex's own logits of the same text.
            ref = tmp / f"decodex_{name}_{i}.safetensors"
            run(decodex, "logits", "--model", hf, "--text", text, "--out", ref, "--json")
            check_hf_export.compare(str(hf), str(ref), atol=1e-5)
        c = model.config
        fixture["models"][name] = {
            "checkpoint": f"gpt_{name}", "export": f"gpt_{name}_hf", "cases": cases,
            "config": {"n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd,
                       "n_positions": c.n_positions, "vocab_size": c.vocab_size,
                       "activation_function": c.activation_function},
            "params": sum(p.numel() for p in model.parameters())}
    save_file(tensors, str(OUT / "gpt_logits.safetensors"))
    write_json(OUT / "gpt_export.json", fixture)


def peft_fixtures(decodex, tmp, gen):
    base = tmp / "base"
    base.mkdir()
    src = ROOT / "tests" / "fixtures" / "llama_tiny"
    for f in ("config.json", "model.safetensors"):
        shutil.copy(src / f, base / f)
    chars = tmp / "chars.txt"
    chars.write_text(LLAMA_CHARS, encoding="utf-8")
    run(decodex, "tokenizer", "train", "--input", chars, "--kind", "char", "--out",
        base / "tokenizer.json")
    lines = []
    for i in range(24):
        w = ["red", "blue", "green", "black"][i % 4]
        lines.append(json.dumps({"prompt": f"say {w} {i}: ", "completion": f"{w} {w}"}))
    (tmp / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp / "eval.jsonl").write_text("\n".join(lines[:8]) + "\n")
    # Relative paths from tmp, so the adapter's base_model_name_or_path is "base".
    run(decodex, "finetune", "--base", "base", "--data", "train.jsonl", "--eval", "eval.jsonl",
        "--out", "lora", "--method", "lora", "--rank", 4, "--alpha", 8, "--warmup-steps", 2,
        "--batch-tokens", 64, "--eval-every", 0, "--lr", "1e-2", "--max-steps", 40, "--json",
        cwd=tmp)
    lora = OUT / "lora"
    shutil.rmtree(lora, ignore_errors=True)
    lora.mkdir(parents=True)
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(tmp / "lora" / f, lora / f)

    torch.set_num_threads(2)
    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    assert tok.get_vocab_size() == 96
    model = LlamaForCausalLM.from_pretrained(src, torch_dtype=torch.float32,
                                             local_files_only=True)
    model = PeftModel.from_pretrained(model, str(lora)).eval()
    tensors, cases, moved = {}, [], 0.0
    for i, text in enumerate(PEFT_TEXTS):
        ids = tok.encode(text, add_special_tokens=False).ids
        x = torch.tensor([ids])
        with torch.no_grad():
            with_adapter = model(input_ids=x).logits[0].float()
            with model.disable_adapter():
                plain = model(input_ids=x).logits[0].float()
        tensors[f"adapter.{i}"] = with_adapter.contiguous()
        tensors[f"base.{i}"] = plain.contiguous()
        moved = max(moved, (with_adapter - plain).abs().max().item())
        cases.append({"text": text, "ids": ids, "adapter": f"adapter.{i}", "base": f"base.{i}",
                      "merged": f"merged.{i}"})
    # decodex's --adapter adds (alpha/r) B A into the base weights in float32, as PEFT's
    # merge_and_unload does; that rounding moves a logit by up to ~1e-5 on this sharp model.
    merged = model.merge_and_unload().eval()
    for i, case in enumerate(cases):
        with torch.no_grad():
            tensors[f"merged.{i}"] = merged(input_ids=torch.tensor([case["ids"]])).logits[0].float()
    print(f"peft: adapter moves the logits by up to {moved:.3f}")
    save_file(tensors, str(OUT / "peft_logits.safetensors"))
    write_json(OUT / "peft.json", {"generator": gen, "base": "tests/fixtures/llama_tiny",
                                   "tokenizer_chars": LLAMA_CHARS, "adapter": "lora",
                                   "adapter_moves_logits_by": moved, "cases": cases})


def npy_header(path):
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:  # 3.0: the 2.0 layout with a utf-8 header
            f.seek(8)
            hlen = int.from_bytes(f.read(4), "little")
            d = eval(f.read(hlen).decode("utf-8"))  # noqa: S307 (our own file, numpy's format)
            shape, fortran, dtype = d["shape"], d["fortran_order"], np.dtype(d["descr"])
        else:
            shape, fortran, dtype = read(f)
        offset = f.tell()
    return {"version": list(version), "shape": list(shape), "fortran_order": fortran,
            "descr": dtype.str, "data_offset": offset}


def npy_fixtures(decodex, tmp, gen):
    ndir = OUT / "npy"
    shutil.rmtree(ndir, ignore_errors=True)
    ndir.mkdir(parents=True)
    rng = np.random.default_rng(29)
    a = rng.standard_normal((5, 3)).astype(np.float32)
    a[0] = [-0.0, np.inf, -np.inf]
    a[1] = [np.nan, np.float32(1e-45), np.finfo(np.float32).max]  # NaN, least subnormal, max
    files = {"numpy_c.npy": a, "numpy_fortran.npy": np.asfortranarray(a),
             "numpy_f64.npy": a.astype(np.float64), "numpy_be.npy": a.astype(">f4"),
             "numpy_3d.npy": a.reshape(5, 3, 1)}
    for name, arr in files.items():
        np.save(ndir / name, arr)
    for version in ((2, 0), (3, 0)):
        with open(ndir / f"numpy_v{version[0]}.npy", "wb") as f:
            np.lib.format.write_array(f, a, version=version)
    (ndir / "embed_texts.txt").write_text("\n".join(EMBED_TEXTS) + "\n", encoding="utf-8")
    run(decodex, "embed", "--model", OUT / "gpt_char", "--input", ndir / "embed_texts.txt",
        "--out", ndir / "decodex_embed.npy", "--json")
    read = {}
    for p in sorted(ndir.glob("*.npy")):
        arr = np.load(p)
        info = npy_header(p)
        info.update({"dtype": str(arr.dtype), "np_shape": list(arr.shape),
                     "bytes": p.stat().st_size})
        read[p.name] = info
    emb = np.load(ndir / "decodex_embed.npy")
    assert emb.dtype == np.float32 and emb.shape[0] == len(EMBED_TEXTS) and emb.flags.c_contiguous
    again = io.BytesIO()
    np.save(again, emb)
    write_json(OUT / "npy.json", {
        "generator": gen,
        "values": {"shape": list(a.shape), "f32_bits": a.view(np.uint32).ravel().tolist()},
        "decodex_embed": {"model": "gpt_char", "texts": "npy/embed_texts.txt",
                          "shape": list(emb.shape),
                          "numpy_save_is_byte_identical":
                              again.getvalue() == (ndir / "decodex_embed.npy").read_bytes(),
                          "f32_bits": emb.view(np.uint32).ravel().tolist()},
        "files": read})
    print(f"npy: {len(read)} files; decodex_embed {emb.shape} read by numpy")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decodex", default=str(ROOT / "target" / "release" / "decodex"))
    a = ap.parse_args()
    if not os.path.exists(a.decodex):
        raise SystemExit(f"{a.decodex} not found: cargo build --release first")
    gen = generator_info()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as t:
        tmp = pathlib.Path(t)
        os.environ["DECODEX_CACHE"] = str(tmp / "cache")
        corpus = tokenizer_fixtures(a.decodex, tmp, gen)
        gpt_fixtures(a.decodex, tmp, corpus, gen)
        peft_fixtures(a.decodex, tmp, gen)
        npy_fixtures(a.decodex, tmp, gen)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT.relative_to(ROOT)} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
