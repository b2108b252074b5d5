#!/usr/bin/env bash
# Encoding speed of decodex against sentence-transformers (PyTorch) on all-MiniLM-L6-v2, both on
# 2 threads and the same texts (default: the 1,000 of tests/fixtures/minilm/sentences.jsonl),
# interleaved round by round:
#   decodex:               target/release/decodex --threads 2 bench embed --rounds 1 --json
#   sentence-transformers: scripts/bench_st.py --threads 2 --rounds 1 --batch 32
# Each process warms up once before its timed round. Prints every round and the medians.
# Usage: scripts/compare_embed.sh [ROUNDS] [TEXTS.jsonl]
set -euo pipefail
ROUNDS=${1:-5}
HERE=$(cd "$(dirname "$0")" && pwd)
TEXTS=${2:-$HERE/../tests/fixtures/minilm/sentences.jsonl}
M=${DECODEX_MODELS:-$HOME/.cache/decodex/models}/all-MiniLM-L6-v2
BIN=${DECODEX_BIN:-target/release/decodex}
[[ -n ${DECODEX_BIN:-} ]] || cargo build --release --quiet
LOG=$(mktemp)
for ((r = 1; r <= ROUNDS; r++)); do
    d=$("$BIN" --threads 2 bench embed --model "$M" --input "$TEXTS" --rounds 1 --json)
    s=$(python3 "$HERE/bench_st.py" --model "$M" --sentences "$TEXTS" --threads 2 --rounds 1 \
        --batch 32 | tail -n 1)
    echo "round $r decodex $d" | tee -a "$LOG"
    echo "round $r sentence-transformers $s" | tee -a "$LOG"
done
python3 - "$LOG" <<'PY'
import json, statistics, sys
rates = {}
for line in open(sys.argv[1]):
    _, r, who, js = line.split(" ", 3)
    rates.setdefault(who, []).append(json.loads(js)["sentences_per_s"])
d, s = rates["decodex"], rates["sentence-transformers"]
ratios = [a / b for a, b in zip(d, s)]
print(json.dumps({"decodex_median": statistics.median(d), "st_median": statistics.median(s),
                  "ratio_median": statistics.median(ratios), "ratios": ratios}))
PY
rm -f "$LOG"
