#!/usr/bin/env bash
# Two decodex builds side by side on this CPU (e.g. before and after a refactor), interleaved
# round by round so that drift in machine load hits both alike, 2 threads:
#   bench train --config configs/shakespeare-char.toml --max-steps 50   (ROUNDS rounds)
#   bench decode --model SmolLM2-135M Q4_1 --num-beams 4                (ROUNDS rounds)
# Prints the CPU's vector features, one JSON line per run, then the medians and new/old ratios.
# Usage: scripts/compare_builds.sh OLD_BINARY NEW_BINARY [ROUNDS]   (old builds may need the
# flag spellings they had: both --iters and --beam are still accepted as aliases)
set -euo pipefail
if [[ $# -lt 2 ]]; then
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
OLD=$1 NEW=$2 ROUNDS=${3:-3}
M=${DECODEX_MODELS:-$HOME/.cache/decodex/models}/SmolLM2-135M-Instruct.Q4_1.gguf
LOG=$(mktemp)
grep -o -w 'avx512[a-z_0-9]*\|avx2\|fma\|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '
echo
for ((r = 1; r <= ROUNDS; r++)); do
    for side in old new; do
        b=$OLD; [[ $side == new ]] && b=$NEW
        echo "train $side $("$b" --threads 2 bench train --config configs/shakespeare-char.toml --iters 50 --json 2>/dev/null | grep tokens_per_sec | tail -1)" | tee -a "$LOG"
    done
done
for ((r = 1; r <= ROUNDS; r++)); do
    for side in old new; do
        b=$OLD; [[ $side == new ]] && b=$NEW
        echo "decode $side $("$b" --threads 2 bench decode --model "$M" --beam --json 2>/dev/null | tail -1)" | tee -a "$LOG"
    done
done
python3 - "$LOG" <<'PY'
import json, statistics as st, sys
runs = {}
for line in open(sys.argv[1]):
    kind, side, js = line.split(" ", 2)
    d = json.loads(js)
    keys = ["tokens_per_sec"] if kind == "train" else ["prompt_tokens_per_sec", "decode_tokens_per_sec", "beam4_tokens_per_sec"]
    for k in keys:
        if d.get(k) is not None:
            runs.setdefault((kind, k), {}).setdefault(side, []).append(d[k])
for (kind, k), v in runs.items():
    o, n = st.median(v["old"]), st.median(v["new"])
    print(f"{kind} {k}: old {o:.2f}  new {n:.2f}  new/old {n / o:.3f}")
PY
