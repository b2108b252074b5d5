#!/usr/bin/env bash
# Compare decodex's training throughput with the PyTorch eager baseline on one config.
#
# Runs ROUNDS (default 5) interleaved pairs, so that drift in machine load hits both sides alike:
#   target/release/decodex bench train --config CONFIG --max-steps 50 --threads 2 --json
#   python3 scripts/bench_torch.py     --config CONFIG --iters 50 --threads 2 --json
# and prints a table per round, the median tokens/s of each, the ratio decodex/pytorch and the
# peak RSS of each. From decodex's output it takes the last line holding "tokens_per_sec".
#
# Usage (from the repository root, after `cargo build --release`):
#   scripts/compare_speed.sh configs/char.toml [ROUNDS]
# Environment: DECODEX_BIN (default target/release/decodex), PYTHON (default python3),
#   ITERS (default 50), THREADS (default 2), SKIP_DECODEX=1 to run only the PyTorch side,
#   TORCH_DTYPE=bf16 to run PyTorch under CPU bf16 autocast (decodex takes `precision` from CONFIG).
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
CONFIG=$1
ROUNDS=${2:-5}
BIN=${DECODEX_BIN:-target/release/decodex}
PYTHON=${PYTHON:-python3}
ITERS=${ITERS:-50}
THREADS=${THREADS:-2}
SKIP_DECODEX=${SKIP_DECODEX:-0}
TORCH_DTYPE=${TORCH_DTYPE:-fp32}
HERE=$(cd "$(dirname "$0")" && pwd)

[[ -f "$CONFIG" ]] || { echo "error: config $CONFIG not found" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "error: ROUNDS must be a positive integer, got $ROUNDS" >&2; exit 2; }
if [[ "$SKIP_DECODEX" != 1 && ! -x "$BIN" ]]; then
    echo "error: $BIN not found; run 'cargo build --release' first (or set DECODEX_BIN)" >&2
    exit 2
fi

# field JSON_LINE KEY: print one numeric field of a JSON object.
if command -v jq >/dev/null 2>&1; then
    field() { jq -r ".$2" <<<"$1"; }
else
    field() { "$PYTHON" -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
fi

# last_result OUTPUT: the last line of OUTPUT that carries "tokens_per_sec".
last_result() { { grep '"tokens_per_sec"' <<<"$1" || true; } | tail -n 1; }

dx_tps=() dx_rss=() pt_tps=() pt_rss=()
printf '%-6s %-8s %14s %12s %12s\n' round impl tokens/s step_ms peak_rss_mb
for ((r = 1; r <= ROUNDS; r++)); do
    if [[ "$SKIP_DECODEX" != 1 ]]; then
        out=$("$BIN" bench train --config "$CONFIG" --max-steps "$ITERS" --threads "$THREADS" --json) \
            || { echo "error: decodex bench failed in round $r" >&2; exit 1; }
        line=$(last_result "$out")
        [[ -n "$line" ]] || { echo "error: no tokens_per_sec in decodex output:" >&2; echo "$out" >&2; exit 1; }
        dx_tps+=("$(field "$line" tokens_per_sec)")
        dx_rss+=("$(field "$line" peak_rss_mb)")
        step=$(field "$line" step_ms_median 2>/dev/null || echo null)
        printf '%-6s %-8s %14.1f %12s %12.1f\n' "$r" decodex "${dx_tps[-1]}" "$step" "${dx_rss[-1]}"
    fi
    out=$("$PYTHON" "$HERE/bench_torch.py" --config "$CONFIG" --iters "$ITERS" --threads "$THREADS" \
        --dtype "$TORCH_DTYPE" --json) || { echo "error: bench_torch.py failed in round $r" >&2; exit 1; }
    line=$(last_result "$out")
    [[ -n "$line" ]] || { echo "error: no tokens_per_sec in bench_torch.py output:" >&2; echo "$out" >&2; exit 1; }
    pt_tps+=("$(field "$line" tokens_per_sec)")
    pt_rss+=("$(field "$line" peak_rss_mb)")
    printf '%-6s %-8s %14.1f %12.1f %12.1f\n' "$r" pytorch "${pt_tps[-1]}" \
        "$(field "$line" step_ms_median)" "${pt_rss[-1]}"
done

# Medians, ratio and peak RSS (the largest over the rounds) in one small Python step.
"$PYTHON" - "${dx_tps[*]:-}" "${dx_rss[*]:-}" "${pt_tps[*]}" "${pt_rss[*]}" <<'EOF'
import statistics, sys
dx_tps, dx_rss, pt_tps, pt_rss = ([float(x) for x in a.split()] for a in sys.argv[1:5])
print()
pt = statistics.median(pt_tps)
print(f"pytorch  median tokens/s {pt:12.1f}   peak RSS {max(pt_rss):8.1f} MB")
if dx_tps:
    dx = statistics.median(dx_tps)
    print(f"decodex  median tokens/s {dx:12.1f}   peak RSS {max(dx_rss):8.1f} MB")
    print(f"ratio decodex/pytorch    {dx / pt:12.3f}")
EOF
