#!/usr/bin/env bash
# LoRA against full fine-tuning of SmolLM2-135M on the same batches: tokens/s, peak RSS, and
# whether the frozen base stayed bit-identical (LoRA). Runs each method STEPS optimizer steps
# of BATCH_TOKENS packed DialogSum tokens (same seed, so the same batches), interleaved ROUNDS
# times, and prints one JSON line per run.
#
# Usage: scripts/bench_finetune.sh [STEPS] [ROUNDS]   (env: BATCH_TOKENS, DECODEX, DECODEX_DATA)
set -euo pipefail
STEPS=${1:-4}
ROUNDS=${2:-1}
BATCH_TOKENS=${BATCH_TOKENS:-2048}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${DECODEX:-$ROOT/target/release/decodex}
DATA=${DECODEX_DATA:-$ROOT/../shared/data}
MODEL=${DECODEX_MODELS:-$HOME/.cache/decodex/models}/SmolLM2-135M-Instruct.Q4_1.gguf
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for r in $(seq "$ROUNDS"); do
    for method in lora full; do
        "$BIN" --threads 2 finetune --model "$MODEL" --input "$DATA/sum/dialogsum/train.jsonl.gz" \
            --task summarize --method "$method" --out "$TMP/$method" --max-steps "$STEPS" \
            --train-examples 256 --eval-examples 0 --batch-tokens "$BATCH_TOKENS" --save-every 0 \
            --warmup-steps 1 --seed 7 --json \
            | grep '"event":"done"' \
            | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(json.dumps({'round': $r, 'method': '$method', 'tokens_per_sec': round(d['tokens_per_sec'],1), 'peak_rss_mb': round(d['peak_rss_mb']), 'tokens': d['tokens'], 'base_unchanged': d['base_unchanged']}))"
        rm -rf "${TMP:?}/$method"
    done
done
