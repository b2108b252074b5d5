#!/usr/bin/env bash
# Builds decodex for aarch64-unknown-linux-gnu on an x86-64 Debian 12 machine and runs the kernel
# layer's tests (and the ISA tests) under qemu-aarch64. Not in CI (a cold cross build takes tens
# of minutes on 2 cores, and the tests run several times slower under qemu than natively).
#
# rustup's download servers may be out of reach, so the aarch64 standard library comes from
# Debian bookworm-security's rustc-web packages (Rust 1.96, amd64 compiler and its libLLVM + arm64
# std), fetched
# with `apt-get download` into a cache folder and unpacked there with `dpkg -x` (nothing is
# installed system-wide but the cross linker and qemu, from Debian):
#   apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static
# Usage: scripts/cross_aarch64.sh [build|test]   (default: test, which builds first)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-test}
CACHE=${DECODEX_CROSS_CACHE:-$HOME/.cache/decodex/aarch64}
ROOT=$CACHE/root
for tool in aarch64-linux-gnu-gcc qemu-aarch64-static; do
    command -v "$tool" >/dev/null || {
        echo "error: $tool not found: apt-get install gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static" >&2
        exit 2
    }
done
if [[ ! -x $ROOT/usr/bin/rustc ]]; then
    mkdir -p "$CACHE/lists/partial" "$CACHE/debs"
    cat >"$CACHE/sources.list" <<'LIST'
deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [arch=amd64,arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
LIST
    apt_opts=(-o "Dir::State::Lists=$CACHE/lists" -o "Dir::Etc::SourceList=$CACHE/sources.list"
        -o "Dir::Etc::SourceParts=/dev/null" -o "APT::Architectures::=amd64"
        -o "APT::Architectures::=arm64" -o "Dir::Cache=$CACHE/apt-cache")
    mkdir -p "$CACHE/apt-cache/archives/partial"
    apt-get "${apt_opts[@]}" update -q 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
    ver=$(apt-cache "${apt_opts[@]}" show rustc-web:amd64 | sed -n 's/^Version: //p' | head -n 1)
    short=$(sed -n 's/^\([0-9]*\.[0-9]*\).*/\1/p' <<<"$ver")
    echo "rustc-web $ver (std $short)"
    (cd "$CACHE/debs" && apt-get "${apt_opts[@]}" download \
        "rustc-web:amd64=$ver" "libstd-rust-web-$short:amd64=$ver" "libstd-rust-web-dev:amd64=$ver" \
        "libstd-rust-web-$short:arm64=$ver" "libstd-rust-web-dev:arm64=$ver" \
        "$(apt-cache "${apt_opts[@]}" depends "libstd-rust-web-$short:amd64" | sed -n 's/.*Depends: \(libllvm[0-9]*\)$/\1/p' | head -n 1):amd64")
    for deb in "$CACHE"/debs/*.deb; do dpkg -x "$deb" "$ROOT"; done
fi
export RUSTC=$ROOT/usr/bin/rustc
export LD_LIBRARY_PATH=$ROOT/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cross}
"$RUSTC" --version
cargo build --release --target aarch64-unknown-linux-gnu
echo "built $CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/release/decodex"
if [[ $what == test ]]; then
    qemu-aarch64-static -L /usr/aarch64-linux-gnu \
        "$CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/release/decodex" --version
    cargo test --release --target aarch64-unknown-linux-gnu --lib kernels::
fi
