#!/usr/bin/env bash
# Soak of several billd instances on one PostgreSQL database: the test
# `many_instances` of crates/billd/tests/billd (three `billd serve` processes
# behind a round-robin proxy, stripe-sim delivering webhooks with duplicates
# and reorders, two kill -9 of seeded random instances per round, each
# restarted) run in rounds of fresh customers until the time is up, every
# round checked in full:
#   - every event the emulator made is in the inbox, processed (or skipped
#     for a type billd keeps without acting on), none dead or waiting;
#   - every email queued is sent and arrived exactly once at a real SMTP
#     server (aiosmtpd), no dedupe key twice;
#   - every scheduler job ran, at most once per period (its interval);
#   - every customer's entitlements equal those of one `billd serve` given
#     the same events once each, in order.
#
#   bash scripts/soak.sh              # 10 minutes (600 s), random seed
#   bash scripts/soak.sh 120          # 2 minutes
#   BILLD_MANY_SEED=7 bash scripts/soak.sh   # replay a seed's kills
#   BILLD_MANY_CUSTOMERS=500 BILLD_MANY_EVENTS=20000 bash scripts/soak.sh
# Each round: 200 fresh customers and 5,000 events unless told otherwise.
#
# Output: one line per round, "many instances: round N: E events (C
# customers) stored and processed, kill -9 of instances [a, b], M emails
# once each, jobs name=runs …, entitlements equal to a single-process
# replay, at T s", then "many instances: R round(s) in T s, every check
# held" and the test's PASS. A failed check stops the run with the check's
# message (which events, emails, job or customer differ) and FAIL.
# PostgreSQL comes from scripts/test.sh (a throwaway cluster).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export BILLD_MANY_SOAK_SECS="${1:-600}"
export BILLD_MANY_CUSTOMERS="${BILLD_MANY_CUSTOMERS:-200}"
export BILLD_MANY_EVENTS="${BILLD_MANY_EVENTS:-5000}"
export BILLD_MANY_SEED="${BILLD_MANY_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
printf 'soak.sh: %s s, seed %s\n' "$BILLD_MANY_SOAK_SECS" "$BILLD_MANY_SEED" >&2
exec bash scripts/test.sh -p billd --test billd --no-capture \
    many_instances::three_instances_on_postgres
