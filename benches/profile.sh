#!/usr/bin/env bash
# Where keygate's CPU goes against the plain pingora pass-through, one command:
# bash benches/profile.sh
#
# Installs perf (linux-perf), wrk and curl from Debian when missing, builds the same release
# binaries as benches/load.sh, then runs benches/profile.py, which samples keygate and the
# pass-through under the same small-GET load and the same upload and prints, per request and
# per MiB, what each kind of code costs each of them (docs/benchmarks.md, "Where the time goes").
# Settings (environment): SECONDS_PER_RUN (8), CONNECTIONS (32), SERVER_CPU (0), LOAD_CPU (1),
# UPLOAD_MIB (512).
set -euo pipefail
cd "$(dirname "$0")/.."

source benches/prerequisites.sh
need perf:linux-perf wrk:wrk python3:python3 curl:curl taskset:util-linux cmake:cmake

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keygate-target}"
cargo build --release --quiet -p keygate -p storage-backend --bins --examples

exec python3 benches/profile.py --bin "$CARGO_TARGET_DIR/release" "$@"
