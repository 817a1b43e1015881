#!/usr/bin/env bash
# Runs built test binaries as if today were each of the given dates
# (libfaketime from Debian's packages), so a test that depends on the date it
# runs on fails here instead of on some day of the year in CI:
#   bash scripts/test-dates.sh [-p PACKAGE]... -- '2027-02-10 12:00:00' '2027-01-20 12:00:00'
# Without dates: a day in a 28-day month and one in a 31-day month.
# Needs BILLD_TEST_POSTGRES_URL like the suite (scripts/test.sh sets it and
# calls this). nextest itself is not run under faketime (it hangs there): the
# test binaries it lists are run directly, each from its package's directory.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/billd-target}"

log() { printf 'test-dates.sh: %s\n' "$*" >&2; }

scope=()
while [[ $# -gt 0 && "$1" != "--" ]]; do scope+=("$1"); shift; done
[[ "${1:-}" == "--" ]] && shift
dates=("$@")
[[ ${#dates[@]} -gt 0 ]] || dates=('2027-02-10 12:00:00' '2027-01-20 12:00:00')
[[ ${#scope[@]} -gt 0 ]] || scope=(--workspace)

command -v faketime >/dev/null 2>&1 || {
    log "installing faketime"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null
}

# One line per test binary: "<binary path>\t<package directory>".
binaries="$(cargo nextest list "${scope[@]}" --all-targets --message-format json 2>/dev/null \
    | python3 -c '
import json, sys
for suite in json.load(sys.stdin)["rust-suites"].values():
    if any(not t["ignored"] for t in suite["testcases"].values()):
        print(suite["binary-path"] + "\t" + suite["cwd"])
')"

failed=0
for date in "${dates[@]}"; do
    log "running every test as of $date"
    while IFS=$'\t' read -r binary cwd; do
        [[ -n "$binary" ]] || continue
        # Monotonic time stays real: timeouts and tokio's timers keep working.
        # A process the test starts (a billd serve) goes on from the test's
        # time instead of starting again at $date (libfaketime's default):
        # three instances started seconds apart would otherwise hold clocks
        # seconds apart, and one would take the others' leases as ended.
        started=$SECONDS
        if ! (cd "$cwd" && FAKETIME_DONT_FAKE_MONOTONIC=1 FAKETIME_DONT_RESET=1 faketime -f "@$date" "$binary" -q >"/tmp/test-dates.$$.log" 2>&1); then
            log "FAILED as of $date: $binary"
            # Each failure's output (its panic message first), at most 200 lines.
            sed -n '/^failures:$/,/^test result/p' "/tmp/test-dates.$$.log" | head -n 200 >&2 || true
            failed=$((failed + 1))
        fi
        log "  $(basename "$binary"): $((SECONDS - started)) s"

    done <<<"$binaries"
done
rm -f "/tmp/test-dates.$$.log"
if [[ $failed -gt 0 ]]; then
    log "$failed test binaries failed on a date other than today's"
    exit 1
fi
log "every test binary passed on ${#dates[@]} dates"
