#!/usr/bin/env bash
# Runs the kernel tests and the llama.cpp bit-exact tests once per instruction-set tier below the
# one this CPU picks by itself (which `cargo test --release` already covers), each forced with
# DECODEX_ISA: on an AVX-512 CPU, avx2 and portable; on an AVX2 CPU, portable.
# Usage (from the repository root, after scripts/fetch_models.sh): scripts/test_tiers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
best=$(target/release/decodex --version | sed -n 's/.*(isa \([a-z0-9]*\);.*/\1/p')
case "$best" in
    avx512) tiers="avx2 portable" ;;
    avx2) tiers="portable" ;;
    *) tiers="" ;;
esac
echo "this CPU's tier: ${best:-unknown}; forcing: ${tiers:-none}"
for t in $tiers; do
    echo "== DECODEX_ISA=$t"
    DECODEX_ISA=$t cargo test --release --quiet --lib kernels::
    DECODEX_ISA=$t cargo test --release --quiet --test llama
done
