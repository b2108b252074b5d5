#!/usr/bin/env bash
# Decoding speed of decodex against llama.cpp and Hugging Face transformers on SmolLM2-135M
# (Q4_1 GGUF), interleaved round by round, 2 threads:
#   decodex:       target/release/decodex bench decode --model M --num-beams 4 --json
#                  (pp128 + tg64, medians of 3; beam search 4 beams x 32 tokens)
#   llama.cpp:     scripts/compare_llamacpp.py speed    (llama-cpp-python 0.3.36, same GGUF)
#   transformers:  scripts/bench_hf_beam.py             (beam search, the GGUF dequantized to f32)
#   llama-bench:   $LLAMA_BENCH -p 128,512 -n 64 -r 3 -o json, when LLAMA_BENCH names a llama-bench
#                  binary (build it from the same sdist: docs/decoding.md), with decodex's pp512
#                  beside it; llama-bench's tg64 starts from an empty context, decodex's after
#                  the 128-token prompt (more attention per token)
# Usage: scripts/compare_decode.sh [ROUNDS]   (LLAMA_PYTHON: the Python with llama-cpp-python;
#        SKIP_HF=1 leaves transformers out)
set -euo pipefail
ROUNDS=${1:-3}
M=${DECODEX_MODELS:-$HOME/.cache/decodex/models}/SmolLM2-135M-Instruct.Q4_1.gguf
LLAMA_PYTHON=${LLAMA_PYTHON:-python3}
BIN=${DECODEX_BIN:-target/release/decodex}
HERE=$(cd "$(dirname "$0")" && pwd)
for ((r = 1; r <= ROUNDS; r++)); do
    echo "round $r decodex $("$BIN" --threads 2 bench decode --model "$M" --num-beams 4 --json)"
    echo "round $r decodex-f32 $("$BIN" --threads 2 bench decode --model "$M" --num-beams 4 --dequantize --json)"
    echo "round $r llama.cpp $("$LLAMA_PYTHON" "$HERE/compare_llamacpp.py" speed --threads 2)"
    if [[ -n ${LLAMA_BENCH:-} ]]; then
        echo "round $r decodex-pp512 $("$BIN" --threads 2 bench decode --model "$M" --prompt-tokens 512 --new-tokens 16 --json)"
        echo "round $r llama-bench $("$LLAMA_BENCH" -m "$M" -t 2 -p 128,512 -n 64 -r 3 -o jsonl 2>/dev/null | tr '\n' ' ')"
    fi
    if [[ ${SKIP_HF:-0} != 1 ]]; then
        echo "round $r transformers $(python3 "$HERE/bench_hf_beam.py" --threads 2 2>/dev/null | tail -n 1)"
    fi
done
