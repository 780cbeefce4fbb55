#!/usr/bin/env bash
# The test command (README "Run the tests"): every unit test and every lab integration test.
# Lab tests need root (network namespaces, sshd, etcd) and the packages install-deps.sh brings.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-deps.sh
cargo build --workspace --all-targets --locked
cargo test --workspace --locked -- --test-threads=2
