#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets, cargo-fuzz on nightly) for
# SECONDS each (default 600), JOBS at a time (default 2, one per core), and
# prints each one's executions and findings (crash inputs left in
# fuzz/artifacts/TARGET). What the fuzzer found interesting is added to
# fuzz/corpus/TARGET; minimise it before committing:
#   cargo +nightly fuzz cmin TARGET
# tests/fuzz_corpora.rs replays the committed corpora on stable.
#
#   benches/fuzz.sh [SECONDS]
#
# Needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-600}
jobs=${JOBS:-2}
cd "$top"
command -v cargo-fuzz >/dev/null || { echo "fuzz.sh: cargo-fuzz is missing (cargo install cargo-fuzz)" >&2; exit 2; }
mapfile -t targets < <(cargo +nightly fuzz list)
cargo +nightly fuzz build
logs=$(mktemp -d)
run() {
  # A finding stops the target early, with a non-zero status.
  cargo +nightly fuzz run "$1" -- -max_total_time="$secs" -print_final_stats=1 >"$logs/$1.log" 2>&1 || true
}
export -f run
export secs logs
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run {}'
printf '%-20s %14s %9s %s\n' target executions findings log
for t in "${targets[@]}"; do
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$t.log" | awk '{print $2}' | tail -1)
  found=$(find "fuzz/artifacts/$t" -type f 2>/dev/null | wc -l)
  printf '%-20s %14s %9s %s\n' "$t" "${execs:-?}" "$found" "$logs/$t.log"
done
