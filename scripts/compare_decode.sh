#!/usr/bin/env bash
# Decoding speed of decodex against llama.cpp and Hugging Face transformers on SmolLM2-135M
# (Q4_1 GGUF), interleaved round by round, 2 threads:
#   decodex:       target/release/decodex bench decode --model M --num-beams 4 --json
#                  (pp128 + tg64, medians of 3; beam search 4 beams x 32 tokens)
#   llama.cpp:     scripts/compare_llamacpp.py speed    (llama-cpp-python 0.3.36, same GGUF)
#   transformers:  scripts/bench_hf_beam.py             (beam search, the GGUF dequantized to f32)
# Usage: scripts/compare_decode.sh [ROUNDS]   (LLAMA_PYTHON: the Python with llama-cpp-python)
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
    echo "round $r transformers $(python3 "$HERE/bench_hf_beam.py" --threads 2 2>/dev/null | tail -n 1)"
done
