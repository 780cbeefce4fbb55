#!/usr/bin/env bash
# Fuzzing (README "Fuzzing"): builds the cargo-fuzz targets under fuzz/ once and runs each for
# a bounded time over its committed corpus (real fixtures plus every input that once crashed
# it). Any panic, crash, timeout or out-of-memory fails the run, with the input kept under
# fuzz/artifacts/<target>/. Needs the nightly toolchain: without it this fails, it never skips.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
# Seconds of fuzzing per target after its corpus has run; FUZZ_SECONDS=120 for a longer look.
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
# A dev build without sanitizer: CI starts with no fuzz/target, and a cold optimised build
# (cargo-fuzz's default, one codegen unit per crate) took 19 minutes here, dev 5 to 9.
# The code under test is safe Rust (the C in aws-lc is not instrumented either way). Dev
# keeps overflow checks and debug assertions on: an overflow on hostile input is a finding.
FLAGS=(--dev --sanitizer none)

if ! rustup toolchain list | grep -q '^nightly-'; then
  echo "tests/fuzz.sh: the nightly toolchain is not installed; cargo-fuzz needs it." >&2
  echo "  install it with: rustup toolchain install nightly --profile minimal" >&2
  exit 1
fi
if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

start=$SECONDS
# Refuses a fuzz/Cargo.lock that no longer matches fuzz/Cargo.toml (cargo fuzz has no --locked).
cargo +nightly fetch --locked --manifest-path fuzz/Cargo.toml
cargo +nightly fuzz build "${FLAGS[@]}"
echo "fuzz: built the targets in $((SECONDS - start)) s"

mapfile -t targets < <(cargo +nightly fuzz list)
if [ "${#targets[@]}" -eq 0 ]; then
  echo "tests/fuzz.sh: cargo fuzz list names no target" >&2
  exit 1
fi
for t in "${targets[@]}"; do
  if [ ! -d "fuzz/corpus/$t" ]; then
    echo "tests/fuzz.sh: target $t has no seed corpus fuzz/corpus/$t" >&2
    exit 1
  fi
  # New inputs go to a scratch directory first in the list: the committed corpus is only read.
  scratch=$(mktemp -d)
  # The words of the target's input format, when it has a dictionary.
  dict=()
  if [ -f "fuzz/dict/$t.dict" ]; then dict=(-dict="fuzz/dict/$t.dict"); fi
  t0=$SECONDS
  if ! cargo +nightly fuzz run "${FLAGS[@]}" "$t" "$scratch" "fuzz/corpus/$t" -- "${dict[@]}" \
      -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$scratch.log" 2>&1; then
    tail -n 60 "$scratch.log" | cut -c1-300 >&2
    echo "tests/fuzz.sh: fuzz target $t FAILED (log above); a crashing input is kept under fuzz/artifacts/$t/ (reproduce: cargo +nightly fuzz run ${FLAGS[*]} $t fuzz/artifacts/$t/<file>)" >&2
    rm -rf "$scratch"
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$scratch.log" | grep -o '[0-9]*$' || echo '?')
  echo "fuzz: $t: $runs runs, no crash ($((SECONDS - t0)) s)"
  rm -rf "$scratch" "$scratch.log"
done
echo "fuzz: all ${#targets[@]} targets passed in $((SECONDS - start)) s"
