#!/usr/bin/env bash
# Serving throughput of `decodex serve` against llama.cpp's llama-server on SmolLM2-135M (Q4_1
# GGUF), both driven by `decodex bench serve` (streamed /v1/completions, EOS ignored), same
# threads, same --parallel, interleaved round by round: at each concurrency, one server is
# started, loaded, stopped, then the other.
#   LLAMA_SERVER: a llama-server binary built from the llama.cpp vendored in the
#                 llama-cpp-python 0.3.36 sdist (docs/serving.md says how).
# Usage: LLAMA_SERVER=... scripts/compare_serve.sh [ROUNDS] [CONCURRENCIES]
#   e.g. scripts/compare_serve.sh 2 "1 4 16"; PARALLEL (16), PROMPT (128), NEW (128), THREADS (2).
set -euo pipefail
ROUNDS=${1:-2}
CONC=${2:-"1 4 16"}
PARALLEL=${PARALLEL:-16}
PROMPT=${PROMPT:-128}
NEW=${NEW:-128}
THREADS=${THREADS:-2}
M=${DECODEX_MODELS:-$HOME/.cache/decodex/models}/SmolLM2-135M-Instruct.Q4_1.gguf
BIN=${DECODEX_BIN:-target/release/decodex}
: "${LLAMA_SERVER:?set LLAMA_SERVER to a llama-server binary}"
PORT=${PORT:-8091}

wait_up() {
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && return 0
        sleep 0.2
    done
    echo "the server on port $PORT did not start" >&2
    return 1
}

load() { # $1: name, $2: concurrency
    local n=$(( $2 * 4 < 8 ? 8 : $2 * 4 ))
    echo "round $r $1 c$2 $("$BIN" --json bench serve --url "http://127.0.0.1:$PORT" --concurrency "$2" \
        --requests "$n" --prompt-tokens "$PROMPT" --max-tokens "$NEW")"
}

echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) | $("$BIN" --version)"
for ((r = 1; r <= ROUNDS; r++)); do
    for c in $CONC; do
        "$BIN" --threads "$THREADS" serve --model "$M" --port "$PORT" --parallel "$PARALLEL" 2> /dev/null &
        pid=$!
        wait_up && load decodex "$c"
        kill "$pid"; wait "$pid" 2> /dev/null || true
        "$LLAMA_SERVER" -m "$M" -t "$THREADS" --parallel "$PARALLEL" -c $(( PARALLEL * 512 )) \
            --host 127.0.0.1 --port "$PORT" > /dev/null 2>&1 &
        pid=$!
        wait_up && load llama-server "$c"
        kill "$pid"; wait "$pid" 2> /dev/null || true
    done
done
