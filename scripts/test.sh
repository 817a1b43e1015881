#!/usr/bin/env bash
# Runs billd's whole test suite on a fresh machine of this kind (Debian,
# root, Rust toolchain with cargo-nextest):
#   - installs PostgreSQL from Debian's packages when it is missing, creates a
#     throwaway cluster under /tmp/billd-pg.XXXXXX owned by `postgres` (initdb
#     refuses root) on a free loopback port, exports BILLD_TEST_POSTGRES_URL,
#     and always stops and removes it on exit;
#   - installs the Python packages the emulator's tests drive (stripe,
#     aiosmtpd), the openssl command, and Chromium with its chromedriver (the
#     console's browser test) when missing, and the official Node
#     SDK (npm `stripe`) into $BILLD_NODE_SDK (default /var/cache/billd-node-sdk);
#   - installs what the typed clients' tests use (clients/, examples/):
#     typescript and Node's types into $BILLD_CLIENT_TOOLS, httpx, pytest,
#     mypy and FastAPI;
#   - installs mdbook (a pinned release, from crates.io) when missing and
#     builds the book in docs/ (its pages are checked by crates/billd's
#     tests/billd/docs.rs);
#   - runs every test of the workspace (cargo nextest when installed, else
#     cargo test). Extra arguments are passed on: `bash scripts/test.sh -p billd-store`;
#   - then runs the same test binaries as of two other dates (scripts/test-dates.sh,
#     libfaketime), unless arguments other than packages were given.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Builds land outside the clone, so a fresh clone reuses compiled deps.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/billd-target}"

log() { printf 'test.sh: %s\n' "$*" >&2; }

# ------------------------------------------------------------- PostgreSQL
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

PG_BIN="$(pg_bin)"
if [[ -z "$PG_BIN" || ! -x "$PG_BIN/initdb" ]]; then
    log "installing PostgreSQL from Debian's packages"
    # Debian would create and start a default cluster on 5432; we only want
    # the binaries.
    conf=/etc/postgresql-common/createcluster.conf
    mkdir -p "$(dirname "$conf")"
    if [[ -f "$conf" ]] && grep -Eq '^[#[:space:]]*create_main_cluster' "$conf"; then
        sed -Ei 's/^[#[:space:]]*create_main_cluster.*/create_main_cluster = false/' "$conf"
    else
        echo "create_main_cluster = false" >> "$conf"
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq -o Dpkg::Options::=--force-confold postgresql >/dev/null
    PG_BIN="$(pg_bin)"
fi
[[ -x "$PG_BIN/initdb" ]] || { log "initdb not found after installing postgresql"; exit 1; }

# initdb refuses to run as root: as root, run the server as `postgres`.
if [[ "$(id -u)" -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

PG_DIR="$(mktemp -d /tmp/billd-pg.XXXXXX)"
chmod 700 "$PG_DIR"
[[ "$(id -u)" -eq 0 ]] && chown postgres:postgres "$PG_DIR"

cleanup() {
    local status=$?
    if [[ -f "$PG_DIR/data/postmaster.pid" ]]; then
        as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 \
            || as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 \
            || true
    fi
    rm -rf "$PG_DIR"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null

# Tests create a database each and run in parallel: allow many connections.
# fsync and synchronous_commit stay on: the durability tests rely on them.
PG_PORT=""
for _ in 1 2 3 4 5; do
    PG_PORT="$(free_port)"
    if as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -c unix_socket_directories=$PG_DIR \
            -c max_connections=300 -c shared_buffers=64MB -c max_wal_size=1GB \
            -c log_min_messages=warning" \
        start >/dev/null; then
        break
    fi
    # Someone took the port between our probe and the bind: try another.
    PG_PORT=""
done
if [[ -z "$PG_PORT" ]]; then
    log "PostgreSQL did not start; its log:"
    cat "$PG_DIR/server.log" >&2 || true
    exit 1
fi
export BILLD_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PG_PORT/postgres"
log "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT ($PG_DIR)"

# ----------------------------------------------------------------- Python
pip_install() {
    python3 -m pip --version >/dev/null 2>&1 || {
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
    }
    # Debian's own python3 refuses system-wide installs (PEP 668) unless told.
    python3 -m pip install --quiet "$@" 2>/dev/null \
        || python3 -m pip install --quiet --break-system-packages "$@"
}
# The release whose API version is billd's pinned one (billd_stripe::API_VERSION).
STRIPE_PY=16.0.1
python3 -c "import stripe, sys; sys.exit(stripe.VERSION != '$STRIPE_PY')" 2>/dev/null \
    || { log "installing the stripe Python SDK $STRIPE_PY"; pip_install "stripe==$STRIPE_PY"; }
python3 -c "import aiosmtpd" 2>/dev/null || { log "installing aiosmtpd"; pip_install aiosmtpd; }
# The SMTP TLS tests make a private CA with the openssl command.
command -v openssl >/dev/null 2>&1 || {
    log "installing openssl"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
}

# --------------------------------------------------------------- Chromium
# The console's browser test (billd-server's tests/lifecycle/browser.rs)
# drives Debian's headless Chromium through its chromedriver; it fails, never
# skips, when they are missing. Screenshots of every console page land in
# $BILLD_TEST_ARTIFACTS/console/<database>/ (default: $CARGO_TARGET_DIR/tmp/test-artifacts).
[[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] || {
    log "installing chromium and chromium-driver"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
}

# stripe-sim's table of Stripe's definitions must match the official SDK
# release it names (npm `stripe`, fetched once into a cache).
python3 scripts/stripe-defs.py --check

# ------------------------------------------------------------------- Node
# The official Node SDK drives stripe-sim in tests/sim/node.rs: the same
# release as the definitions (scripts/stripe-defs.py's SDK_VERSION), installed
# into a cache outside the repository ($BILLD_NODE_SDK), never node_modules
# in the tree.
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || {
    log "installing Node.js and npm"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
}
STRIPE_NODE="$(sed -n 's/^SDK_VERSION = "\(.*\)"$/\1/p' scripts/stripe-defs.py)"
[[ -n "$STRIPE_NODE" ]] || { log "no SDK_VERSION in scripts/stripe-defs.py"; exit 1; }
export BILLD_NODE_SDK="${BILLD_NODE_SDK:-/var/cache/billd-node-sdk}"
installed="$(node -p "require('$BILLD_NODE_SDK/node_modules/stripe/package.json').version" 2>/dev/null || true)"
if [[ "$installed" != "$STRIPE_NODE" ]]; then
    log "installing the stripe Node SDK $STRIPE_NODE into $BILLD_NODE_SDK"
    mkdir -p "$BILLD_NODE_SDK"
    npm install --prefix "$BILLD_NODE_SDK" --no-audit --no-fund --silent "stripe@$STRIPE_NODE"
fi

# --------------------------------------------------------- typed clients
# crates/billd/tests/billd/clients.rs type-checks and runs the clients in
# clients/ and the example app built on the Python one (examples/) against a
# dev-mode billd: tsc and Node's types from npm into $BILLD_CLIENT_TOOLS
# (outside the repository), httpx, pytest, mypy and FastAPI from PyPI, each at
# a pinned release.
TYPESCRIPT=5.9.3
NODE_TYPES=20.19.9
export BILLD_CLIENT_TOOLS="${BILLD_CLIENT_TOOLS:-/var/cache/billd-client-tools}"
npm_version() { node -p "require('$BILLD_CLIENT_TOOLS/node_modules/$1/package.json').version" 2>/dev/null || true; }
if [[ "$(npm_version typescript)" != "$TYPESCRIPT" || "$(npm_version @types/node)" != "$NODE_TYPES" ]]; then
    log "installing typescript $TYPESCRIPT and @types/node $NODE_TYPES into $BILLD_CLIENT_TOOLS"
    mkdir -p "$BILLD_CLIENT_TOOLS"
    npm install --prefix "$BILLD_CLIENT_TOOLS" --no-audit --no-fund --silent \
        "typescript@$TYPESCRIPT" "@types/node@$NODE_TYPES"
fi
CLIENT_PY=(httpx==0.28.1 pytest==8.3.5 mypy==1.15.0 fastapi==0.115.12)
if ! python3 -c 'import sys
from importlib.metadata import version
sys.exit(any(version(n) != v for n, v in (a.split("==") for a in sys.argv[1:])))' "${CLIENT_PY[@]}" 2>/dev/null; then
    log "installing ${CLIENT_PY[*]}"
    pip_install "${CLIENT_PY[@]}"
fi

# ------------------------------------------------------------------ book
# The book must build. mdbook is installed once into ~/.cargo/bin: about 4
# minutes of CPU (18 minutes on a 2-core machine busy with other builds);
# building the book then takes under a second.
MDBOOK_VERSION=0.5.4
if [[ "$(mdbook --version 2>/dev/null)" != "mdbook v$MDBOOK_VERSION" ]]; then
    log "installing mdbook $MDBOOK_VERSION"
    cargo install mdbook --locked --version "$MDBOOK_VERSION" --quiet
fi
if ! out="$(mdbook build docs --dest-dir "$CARGO_TARGET_DIR/book" 2>&1)"; then
    printf '%s\n' "$out" >&2
    log "mdbook build docs failed"
    exit 1
fi
log "book built into $CARGO_TARGET_DIR/book"

# ------------------------------------------------------------------ tests
# Test the whole workspace unless the caller picked packages.
scope=(--workspace)
for arg in "$@"; do
    case "$arg" in
        -p | -p* | --package | --package=*) scope=() ;;
    esac
done

# nextest ends with one summary line over every test binary
# ("Summary [...] N tests run: N passed, ..."); cargo test prints one per binary.
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run "${scope[@]}" --all-targets --no-fail-fast "$@"
else
    cargo test "${scope[@]}" --all-targets --no-fail-fast "$@"
fi

# The same tests again as if today were a day of a 28-day and of a 31-day
# month (under libfaketime): a test that depends on the date it runs on fails
# here rather than on some day of the year. Only on runs of whole packages;
# BILLD_TEST_DATES=0 skips it.
packages=("${scope[@]}")
filtered=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        -p | --package) packages+=("$1" "$2"); shift 2 ;;
        -p* | --package=*) packages+=("$1"); shift ;;
        *) filtered=1; shift ;;
    esac
done
if [[ "${BILLD_TEST_DATES:-1}" != 0 && $filtered -eq 0 ]] && cargo nextest --version >/dev/null 2>&1; then
    bash scripts/test-dates.sh "${packages[@]}"
fi
