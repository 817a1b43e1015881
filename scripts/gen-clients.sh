#!/usr/bin/env bash
# Regenerates the typed clients in clients/ from the OpenAPI document of the
# billd built from this checkout (`billd reference openapi`, the document
# GET /openapi.json serves):
#   bash scripts/gen-clients.sh
# Run it after changing a route or a schema, and commit the result: the test
# `clients::the_checked_in_clients_are_the_ones_the_openapi_document_generates`
# (crates/billd/tests/billd/clients.rs) fails while they differ.
# BILLD_BIN=path/to/billd uses that binary instead of `cargo run`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/billd-target}"

doc="$(mktemp)"
trap 'rm -f "$doc"' EXIT
if [[ -n "${BILLD_BIN:-}" ]]; then
    "$BILLD_BIN" reference openapi > "$doc"
else
    cargo run --quiet -p billd -- reference openapi > "$doc"
fi
python3 scripts/gen-clients.py "$doc" clients
echo "gen-clients.sh: clients/typescript and clients/python regenerated" >&2
