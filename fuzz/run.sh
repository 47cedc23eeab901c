#!/usr/bin/env bash
# Builds and runs every fuzz target, each for SECONDS (default 30) or RUNS
# executions, whichever comes first, on its seed corpus; fails on a crash.
#
#   fuzz/run.sh [SECONDS] [RUNS]
#
# FUZZ_PROFILE picks the build: -O (the default, for the long runs) or
# --dev (unoptimized: builds in less than half the time, runs ~15 times
# slower; CI's brief runs use it).
#
# cargo fuzz needs nightly features; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain (the only one here) provide them. Installs cargo-fuzz if missing.
set -euo pipefail
SECS=${1:-30}
RUNS=${2:--1}
PROFILE=${FUZZ_PROFILE:--O}
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cargo fuzz build "$PROFILE"
for target in $(cargo fuzz list); do
  mkdir -p "fuzz/corpus/$target"
  # A scratch copy: the committed seed corpus stays small.
  work=$(mktemp -d)
  cp -r "fuzz/corpus/$target/." "$work/"
  line=$(cargo fuzz run "$PROFILE" "$target" "$work" -- -max_total_time="$SECS" -runs="$RUNS" 2>&1 | tee "$work.log" | grep -E '^Done [0-9]+ runs' || true)
  if [ -z "$line" ]; then
    grep -E 'panicked|ERROR|SUMMARY' "$work.log" | head -5 >&2
    echo "[fuzz] $target: CRASHED (artifacts in fuzz/artifacts/$target)" >&2
    exit 1
  fi
  echo "[fuzz] $target: $line"
  rm -rf "$work" "$work.log"
done
