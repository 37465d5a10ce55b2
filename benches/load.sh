#!/usr/bin/env bash
# The load harness, one command: bash benches/load.sh
#
# Installs what it needs from Debian (wrk, nginx, python3, curl), builds keygate, the
# storage-backend, the plain pingora pass-through and the open-loop load generator in release,
# then runs benches/load.py, which measures keygate, the pass-through, nginx and the backend
# directly side by side, and writes docs/benchmarks.md.
#
# Settings (environment): ROUNDS (3), SECONDS_PER_RUN (8), CONNECTIONS (32), SERVER_CPU (0),
# LOAD_CPU (1), QUICK=1 (one round of 3 s per run, for trying the harness), OUT
# (docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keygate-target}"
cargo build --release --quiet -p keygate -p storage-backend --bins --examples

exec python3 benches/load.py --bin "$CARGO_TARGET_DIR/release" "$@"
