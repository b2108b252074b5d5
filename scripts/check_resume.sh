#!/usr/bin/env bash
# Checks that a run stopped at step 100 and resumed reproduces, bit for bit, the losses of steps
# 101-200 of an uninterrupted run with the same seed (char preset by default).
#   scripts/check_resume.sh [CONFIG]
set -euo pipefail
CONFIG=${1:-configs/shakespeare-char.toml}
BIN=${DECODEX_BIN:-target/release/decodex}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$BIN" train --config "$CONFIG" --out "$tmp/full" --max-steps 200 --json > "$tmp/full.jsonl"
"$BIN" train --config "$CONFIG" --out "$tmp/split" --max-steps 100 --json > /dev/null
"$BIN" train --config "$CONFIG" --out "$tmp/split" --max-steps 200 --resume --json > "$tmp/resumed.jsonl"
python3 - "$tmp/full.jsonl" "$tmp/resumed.jsonl" <<'PY'
import json, sys
def steps(path):
    return {d["step"]: (d["train_loss"], d.get("val_loss")) for d in map(json.loads, open(path)) if "step" in d}
full, resumed = steps(sys.argv[1]), steps(sys.argv[2])
diff = [s for s in resumed if full.get(s) != resumed[s]]
print(f"steps {min(resumed)}-{max(resumed)}: {len(resumed) - len(diff)} of {len(resumed)} losses bit-identical")
sys.exit(1 if diff or len(resumed) != 100 else 0)
PY
