#!/usr/bin/env bash
# The main job on a fresh machine (README "Set-up"): installs what is needed, builds
# certrotate, and runs it on the bundled example cluster definition (3 masters, 2 agents,
# Azure Stack Hub). Plan and apply on a live lab cluster join here when they are built.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-deps.sh
cargo build --release --locked --bin certrotate
bin=target/release/certrotate
example=tests/fixtures/azurestack-3m2a/apimodel.json

echo "== certrotate validate --api-model $example --profile rotate-all"
"$bin" validate --api-model "$example" --profile rotate-all
echo
echo "== certrotate status --offline --api-model $example"
"$bin" status --offline --api-model "$example"
