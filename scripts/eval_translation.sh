#!/usr/bin/env bash
# Translates a test set with a trained seq2seq model, greedy and with beam 5, and scores each
# with sacreBLEU-exact BLEU (cased, and lowercased as the published Multi30k figures are) and
# chrF. Prints one JSON line per search; the translations stay in RUN_DIR.
#
#   scripts/eval_translation.sh RUN_DIR [SOURCE REFERENCE]
#
# SOURCE and REFERENCE default to RUN_DIR/test.src and RUN_DIR/test.ref, which training writes
# for configs with a test set. DECODEX overrides the binary (default: decodex on the PATH, else
# target/release/decodex).
set -euo pipefail
run=${1:?usage: scripts/eval_translation.sh RUN_DIR [SOURCE REFERENCE]}
src=${2:-$run/test.src}
ref=${3:-$run/test.ref}
bin=${DECODEX:-$(command -v decodex || echo target/release/decodex)}
for beam in 1 5; do
  hyp="$run/test.beam$beam.hyp"
  start=$(date +%s.%N)
  "$bin" --threads 2 translate --model "$run" --input "$src" --num-beams "$beam" > "$hyp"
  secs=$(echo "$(date +%s.%N) - $start" | bc)
  cased=$("$bin" eval bleu --hyp "$hyp" --ref "$ref" --json)
  lower=$("$bin" eval bleu --hyp "$hyp" --ref "$ref" --lowercase --json)
  echo "{\"run\": \"$run\", \"beam\": $beam, \"seconds\": $secs, \"cased\": $cased, \"lowercased\": $lower}"
done
