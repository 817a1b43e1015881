#!/usr/bin/env bash
# Long fuzzing runs of billd's way in (signature check, envelope parser,
# event parsers, apply): the suite CI runs with 100,000 cases, here in a
# release build with many more and a fresh seed each run.
#   bash scripts/fuzz.sh                 # 1,000,000 cases, random seed
#   bash scripts/fuzz.sh 10000000        # ten million
#   BILLD_FUZZ_SEED=42 bash scripts/fuzz.sh 200000   # replay a seed
# A failure prints the case, its seed and the payload.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/billd-target}"
export BILLD_FUZZ_CASES="${1:-1000000}"
export BILLD_FUZZ_SEED="${BILLD_FUZZ_SEED:-$(od -An -N6 -tu8 /dev/urandom | tr -d ' ')}"

exec cargo test --release -p billd-server --test lifecycle -- \
    fuzz::arbitrary_and_mutated_payloads_never_panic_and_every_rejection_has_a_code --exact --nocapture
