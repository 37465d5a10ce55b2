#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: `bash fuzz/run.sh [SECONDS_EACH]` (default 60).
# Needs the nightly toolchain and cargo-fuzz (installed here if missing). The seeds in
# fuzz/corpus/<target>/ are read, never written: what the fuzzer learns goes to a working
# corpus beside the build (kept between runs). A crash stops the run with the input under
# fuzz/artifacts/<target>/: copy it to fuzz/regressions/, add a unit test that reads it, then
# fix it (src/route/canonical.rs shows how).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
targets=(canonicalize route credentials key_format jwt_preparse config graphql)
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
# One build for all targets (sanitizer off: keygate is safe Rust; coverage guides the search).
cargo +nightly fuzz build -O -s none --target-dir "$target_dir"
for t in "${targets[@]}"; do
    work="$target_dir/corpus/$t"
    mkdir -p "$work"
    echo "fuzz: $t for ${seconds}s"
    cargo +nightly fuzz run -O -s none --target-dir "$target_dir" "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$target_dir/$t.log" 2>&1 || {
        grep -v '^ *[0-9]*: \|^ *at ' "$target_dir/$t.log" | tail -n 30
        echo "fuzz: $t crashed; the input is in fuzz/artifacts/$t/"
        exit 1
    }
    grep -E '^stat::number_of_executed_units|Done [0-9]+ runs' "$target_dir/$t.log" | tail -n 2
done
echo "fuzz: every target ran ${seconds}s without a crash"
