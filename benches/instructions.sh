#!/usr/bin/env bash
# Instruction counts of the hot path, held to the numbers stored in benches/instructions.json.
#
#   bash benches/instructions.sh            # count, compare, fail if a count grew by > 10 %
#   UPDATE=1 bash benches/instructions.sh   # count and store the counts as the new reference
#
# valgrind's callgrind counts the instructions of one call of each benchmark in
# benches/instructions.rs (iai-callgrind); the counts are the same for the same binary and
# input whatever else the machine is doing, so CI can run this on a busy, small machine.
# Update the stored numbers deliberately, in the commit whose change justifies them.
set -euo pipefail
cd "$(dirname "$0")/.."

source benches/prerequisites.sh
need valgrind:valgrind python3:python3 cmake:cmake

# The runner must be the version of the iai-callgrind library in Cargo.lock.
version=$(awk '/^name = "iai-callgrind"$/ { getline; gsub(/version = |"/, ""); print }' Cargo.lock)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/keygate-target}"
# The benchmark finds the runner on PATH, where `cargo install` puts it.
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo install --list | grep -x "iai-callgrind-runner v$version:" >/dev/null; then
    cargo install --quiet --locked --version "$version" iai-callgrind-runner \
        --target-dir "$CARGO_TARGET_DIR/iai-runner"
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo bench --quiet --bench instructions -- --output-format=json --nosummary >"$out"
python3 benches/instructions.py "$out" benches/instructions.json
