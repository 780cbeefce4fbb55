#!/usr/bin/env bash
# The test command (README "Run the tests"): every unit test, every lab integration test and
# the fuzz targets.
# Lab tests need root (network namespaces, sshd, etcd) and the packages install-deps.sh brings.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-deps.sh
cargo build --workspace --all-targets --locked
cargo test --workspace --locked --no-fail-fast -- --test-threads=2
# The fuzz targets (fuzz/, README "Fuzzing"), each for a bounded time; needs nightly.
bash tests/fuzz.sh
