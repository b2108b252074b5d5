#!/usr/bin/env bash
# Does pretraining transfer? Pretrains the Gutenberg BPE GPT (configs/gutenberg-bpe.toml, unless
# runs/gutenberg-bpe already holds it), then trains the same architecture on DialogSum text
# (dialogue, then "Summary: ...") twice for the same steps and batches: from the pretrained
# weights (configs/dialogsum-from-gutenberg.toml) and from a random init
# (configs/dialogsum-scratch.toml). Prints each model's loss on the whole DialogSum validation
# text (decodex eval perplexity) as JSON lines.
#
# Usage: scripts/pretrain_transfer.sh   (env: DECODEX, DECODEX_DATA, THREADS; needs jq)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BIN=${DECODEX:-$ROOT/target/release/decodex}
DATA=${DECODEX_DATA:-$ROOT/../shared/data}
THREADS=${THREADS:-2}
T=runs/transfer
mkdir -p "$T"
to_text() { jq -r '"\(.document)\nSummary: \(.summary)\n"'; }
gzip -dc "$DATA/sum/dialogsum/train.jsonl.gz" | to_text > "$T/dialogsum-train.txt"
to_text < "$DATA/sum/dialogsum/valid.jsonl" > "$T/dialogsum-valid.txt"
if [ ! -f runs/gutenberg-bpe/model.safetensors ]; then
    "$BIN" --threads "$THREADS" train --config configs/gutenberg-bpe.toml --out runs/gutenberg-bpe --json > "$T/gutenberg-bpe.log"
fi
for run in dialogsum-from-gutenberg dialogsum-scratch; do
    rm -rf "${T:?}/$run"
    "$BIN" --threads "$THREADS" train --config "configs/$run.toml" --out "$T/$run" --json > "$T/$run.log"
done
for model in runs/gutenberg-bpe "$T/dialogsum-from-gutenberg" "$T/dialogsum-scratch"; do
    "$BIN" --threads "$THREADS" eval perplexity --model "$model" --input "$T/dialogsum-valid.txt" --json \
        | jq -c --arg model "$model" '{model: $model} + .'
done
