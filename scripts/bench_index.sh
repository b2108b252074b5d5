#!/usr/bin/env bash
# The vector index at scale: N sentences of the Gutenberg training text (default 200,000; see
# examples/gutenberg_sentences.rs) embedded with all-MiniLM-L6-v2 into an HNSW index, then 1,000
# held-out sentences (Gutenberg valid) as queries. Reports, one JSON line each:
#   embed:  `decodex embed` of N/100 and N/10 of the sentences (streamed: flat peak RSS)
#   build:  `decodex index build` (embedding + graph time, disk size, peak RSS)
#   bench:  `decodex index bench` in a fresh process that reopens the index from disk:
#           recall@10 against exact search, queries/s of both, peak RSS
# Usage: scripts/bench_index.sh [N] [WORKDIR]   (2 threads; DECODEX_DATA, DECODEX_MODELS honoured)
set -euo pipefail
N=${1:-200000}
W=${2:-/tmp/decodex-bench-index}
DATA=${DECODEX_DATA:-$(cd "$(dirname "$0")/../../shared/data" && pwd)}
M=${DECODEX_MODELS:-$HOME/.cache/decodex/models}/all-MiniLM-L6-v2
BIN=${DECODEX_BIN:-target/release/decodex}
SPLIT=target/release/examples/gutenberg_sentences
cargo build --release --quiet --bin decodex --example gutenberg_sentences
mkdir -p "$W"
rm -rf "$W/index"
"$SPLIT" "$DATA/lm/gutenberg/train.txt.gz" "$W/corpus.jsonl" "$N" g
"$SPLIT" "$DATA/lm/gutenberg/valid.txt" "$W/queries.jsonl" 1000 q
rss() { grep "Maximum resident" "$1" | awk '{print $NF / 1024}'; }
# Streaming: `decodex embed` reads and writes 8,192 texts at a time, so its peak RSS stays flat
# as the input grows (N/100 and N/10 sentences here).
for n in $((N / 100)) $((N / 10)); do
    head -n "$n" "$W/corpus.jsonl" > "$W/part.jsonl"
    /usr/bin/time -v -o "$W/embed.time" "$BIN" --threads 2 embed --model "$M" \
        --input "$W/part.jsonl" --out "$W/part.npy" --json > /dev/null
    echo "{\"step\":\"embed\",\"texts\":$n,\"npy_bytes\":$(stat -c %s "$W/part.npy"),\"peak_rss_mib\":$(rss "$W/embed.time")}"
done
rm -f "$W/part.jsonl" "$W/part.npy"
/usr/bin/time -v -o "$W/build.time" "$BIN" --threads 2 index build --model "$M" \
    --input "$W/corpus.jsonl" --out "$W/index" --json
echo "{\"step\":\"build\",\"disk_bytes\":$(du -sb "$W/index" | cut -f1),\"peak_rss_mib\":$(rss "$W/build.time")}"
/usr/bin/time -v -o "$W/bench.time" "$BIN" --threads 2 index bench "$W/index" \
    --queries "$W/queries.jsonl" -k 10 --json
echo "{\"step\":\"bench\",\"peak_rss_mib\":$(rss "$W/bench.time")}"
