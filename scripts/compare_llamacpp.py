#!/usr/bin/env python3
"""llama.cpp (through llama-cpp-python, built from source) on the same GGUF as decodex: speed
and greedy continuations.

  python3 scripts/compare_llamacpp.py speed [--threads 2] [--prompt-tokens 128] [--new-tokens 64]
      prompt-processing and generation tokens/s, measured like `decodex bench decode`: the first
      tokens of Tiny Shakespeare in one batch, then greedy tokens one at a time (median of 3).
  python3 scripts/compare_llamacpp.py greedy
      writes tests/fixtures/smollm2_llamacpp.json: the greedy (top-k 1) 32-token continuation of
      each prompt of tests/fixtures/smollm2_generate.json, from the same input ids.

  python3 scripts/compare_llamacpp.py logits
      writes tests/fixtures/smollm2_llamacpp_logits.json: along llama.cpp's greedy continuation
      of each prompt (the fixture above), its 8 largest logits at every step, ids and values
      (f32, exact), for the bit-for-bit check in tests/llama.rs.

  python3 scripts/compare_llamacpp.py teacher --decodex DIR
      along llama.cpp's own greedy continuations (the fixture above), compares its logits with
      decodex's (from `cargo run --release --example teacher_forced_logits -- DIR`) and with
      llama.cpp's own under the other KV cache type: mean |Δlogit| and how many steps pick the
      same top token. This measures the numeric gap without the compounding of free decoding.

  python3 scripts/compare_llamacpp.py agree
      how many of the greedy continuations equal tests/fixtures/smollm2_llamacpp.json (this
      build and settings against the committed fixture), and where each first departs.

KV_TYPE=0 runs llama.cpp with an f32 KV cache instead of its default f16 (1). FLASH_ATTN=1 runs
it with flash attention (`-fa on`; llama-cpp-python's default, used for the fixtures, is off).

Needs: pip install llama-cpp-python==0.3.36 (compiles llama.cpp; set
CMAKE_ARGS="-DGGML_NATIVE=ON"), and scripts/fetch_models.sh for the model.
"""
import argparse
import json
import os
import pathlib
import statistics
import time

import numpy as np
from llama_cpp import Llama

ROOT = pathlib.Path(__file__).resolve().parent.parent
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load(threads):
    models = os.environ.get("DECODEX_MODELS", os.path.expanduser("~/.cache/decodex/models"))
    kv = int(os.environ.get("KV_TYPE", "1"))
    fa = os.environ.get("FLASH_ATTN", "0") == "1"
    return Llama(model_path=os.path.join(models, GGUF), n_threads=threads, n_threads_batch=threads,
                 n_ctx=1024, n_batch=512, verbose=False, type_k=kv, type_v=kv, flash_attn=fa)


def last_logits(llm):
    """The logits of the last evaluated token (llama-cpp-python keeps `scores` only with
    logits_all, so read the context's buffer)."""
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))


def greedy(llm, ids, n, eos):
    llm.reset()
    llm.eval(ids)
    out = []
    for _ in range(n):
        tok = int(np.argmax(last_logits(llm)))
        out.append(tok)
        if tok == eos:
            break
        llm.eval([tok])
    return out


def forced_logits(llm, fx, cpp):
    """Per prompt, (steps, vocab) logits along llama.cpp's greedy tokens."""
    out = []
    for case, want in zip(fx["cases"], cpp["cases"]):
        llm.reset()
        llm.eval(case["input_ids"])
        rows = [last_logits(llm).copy()]
        for tok in want["greedy"][:-1]:
            llm.eval([tok])
            rows.append(last_logits(llm).copy())
        out.append(np.stack(rows))
    return out


def teacher(args):
    fx = json.loads((ROOT / "tests/fixtures/smollm2_generate.json").read_text())
    cpp = json.loads((ROOT / "tests/fixtures/smollm2_llamacpp.json").read_text())
    kv = int(os.environ.get("KV_TYPE", "1"))
    ref = forced_logits(load(args.threads), fx, cpp)
    os.environ["KV_TYPE"] = str(1 - kv)
    other = forced_logits(load(args.threads), fx, cpp)
    ours = [np.fromfile(os.path.join(args.decodex, f"{i}.f32"), dtype=np.float32).reshape(r.shape)
            for i, r in enumerate(ref)]
    names = {1: "f16", 0: "f32"}
    for name, got in [("decodex", ours), (f"llama.cpp, {names[1 - kv]} KV", other)]:
        diff = np.mean([np.abs(g - r).mean() for g, r in zip(got, ref)])
        same = sum(int((g.argmax(1) == r.argmax(1)).sum()) for g, r in zip(got, ref))
        steps = sum(len(r) for r in ref)
        print(json.dumps({"against": f"llama.cpp, {names[kv]} KV", "impl": name,
                          "mean_abs_logit_diff": round(float(diff), 4),
                          "same_top_token": same, "steps": steps}))


def top_logits(args):
    fx = json.loads((ROOT / "tests/fixtures/smollm2_generate.json").read_text())
    cpp = json.loads((ROOT / "tests/fixtures/smollm2_llamacpp.json").read_text())
    cases = []
    for case, rows in zip(fx["cases"], forced_logits(load(args.threads), fx, cpp)):
        top = [np.argsort(-r, kind="stable")[:8] for r in rows]
        cases.append({"prompt": case["prompt"],
                      "ids": [[int(i) for i in t] for t in top],
                      "logits": [[float(r[i]) for i in t] for r, t in zip(rows, top)]})
    out = ROOT / "tests/fixtures/smollm2_llamacpp_logits.json"
    out.write_text(json.dumps({"k": 8, "cases": cases}))
    print(f"wrote {out}: {sum(len(c['ids']) for c in cases)} steps")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["speed", "greedy", "agree", "logits", "teacher"])
    ap.add_argument("--decodex", help="teacher: the folder of decodex's logits")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if args.what == "teacher":
        return teacher(args)
    if args.what == "logits":
        return top_logits(args)
    llm = load(args.threads)
    if args.what == "agree":
        fx = json.loads((ROOT / "tests/fixtures/smollm2_generate.json").read_text())
        cpp = json.loads((ROOT / "tests/fixtures/smollm2_llamacpp.json").read_text())
        same = 0
        for c, want in zip(fx["cases"], cpp["cases"]):
            got = greedy(llm, c["input_ids"], 32, fx["eos_token_id"])
            first = next((i for i, (a, b) in enumerate(zip(got, want["greedy"])) if a != b), None)
            same += got == want["greedy"]
            print(repr(c["prompt"]), "identical" if got == want["greedy"] else f"departs at token {first}")
        print(f"{same} of {len(fx['cases'])} identical")
        return
    if args.what == "greedy":
        fx = json.loads((ROOT / "tests/fixtures/smollm2_generate.json").read_text())
        eos = fx["eos_token_id"]
        cases = [{"prompt": c["prompt"], "greedy": greedy(llm, c["input_ids"], 32, eos)} for c in fx["cases"]]
        (ROOT / "tests/fixtures/smollm2_llamacpp.json").write_text(json.dumps({"eos_token_id": eos, "cases": cases}, indent=1))
        for c in cases:
            print(repr(c["prompt"]), "->", repr(llm.detokenize(c["greedy"]).decode(errors="replace")))
        return
    data = os.environ.get("DECODEX_DATA", str(ROOT.parent / "shared" / "data"))
    text = open(os.path.join(data, "lm/tinyshakespeare/input.txt"), encoding="utf-8").read()[:20000]
    ids = llm.tokenize(text.encode(), add_bos=False, special=False)[: args.prompt_tokens]
    pp, tg = [], []
    for rep in range(args.reps + 1):
        llm.reset()
        t = time.perf_counter()
        llm.eval(ids)
        t_pp = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(args.new_tokens):
            tok = int(np.argmax(last_logits(llm)))
            llm.eval([tok])
        t_tg = time.perf_counter() - t
        if rep > 0:
            pp.append(len(ids) / t_pp)
            tg.append(args.new_tokens / t_tg)
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": "llama.cpp (llama-cpp-python 0.3.36)", "threads": args.threads,
                      "prompt_tokens": len(ids), "new_tokens": args.new_tokens,
                      "prompt_tokens_per_sec": statistics.median(pp),
                      "decode_tokens_per_sec": statistics.median(tg), "peak_rss_mb": rss}))


if __name__ == "__main__":
    main()
