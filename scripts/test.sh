#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh Debian machine and runs it:
# formatting and lint checks, unit tests, the store suite on SQLite and
# PostgreSQL, multi-instance and fault tests with real Redis and PostgreSQL,
# loopback integration tests, and the
# end-to-end tests with real registries (Verdaccio, pypiserver, nginx WebDAV)
# and real clients (npm, twine, pip, mvn, curl); then the micro-benchmarks, the
# soak, the load and streaming benchmarks and the fuzz targets, each briefly,
# so they keep running. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
  rustup component add clippy rustfmt
fi

step "PostgreSQL and Redis"
bash scripts/services.sh

step "registries and clients for the end-to-end tests"
bash tests/e2e/install.sh

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test (unit, loopback integration, end-to-end)"
cargo test -- --test-threads=2

step "micro-benchmarks, each once (criterion's test mode; measured runs: BENCHMARKS.md)"
cargo test --bench hot_path

step "soak under faults, briefly (the 10-minute run: BENCHMARKS.md)"
python3 bench/soak.py --seconds 30 --bin target/debug/tokengate

step "load and streaming benchmarks, briefly on the debug build (measured runs: BENCHMARKS.md)"
# They keep running as the code changes; their figures here mean nothing.
TOKENGATE_BIN=target/debug/tokengate bash bench/load.sh 1 1 8 > /dev/null
TOKENGATE_BIN=target/debug/tokengate bash bench/stream.sh 8 100 1 > /dev/null

step "fuzz targets, briefly (long runs: BENCHMARKS.md)"
cargo fmt --manifest-path fuzz/Cargo.toml --check
# Unoptimized: the instrumented build is most of this step (11 min optimized, under 5
# unoptimized on a slow 2-core VM); 10 s per target still replays the corpus and mutates.
FUZZ_PROFILE=--dev bash fuzz/run.sh 10
