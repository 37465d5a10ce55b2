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
# (docs/benchmarks.md), ONLY=shadow (only the cold decisions with and without shadow policies,
# printed rather than written to OUT), ONLY=redis (limits shared through Redis against limits
# kept in the instance, printed; REDIS_URL, default redis://127.0.0.1:6379), ONLY=compare
# BASELINE=path/to/keygate (this build against another build of keygate, with the pass-through
# beside them: small GET, 1 MiB GET, upload; printed: how a change is judged).
set -euo pipefail
cd "$(dirname "$0")/.."

source benches/prerequisites.sh
need wrk:wrk nginx:nginx-light python3:python3 curl:curl taskset:util-linux cmake:cmake

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keygate-target}"
cargo build --release --quiet -p keygate -p storage-backend --bins --examples

exec python3 benches/load.py --bin "$CARGO_TARGET_DIR/release" "$@"
