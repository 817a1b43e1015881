-- Billing state: one row per app customer. `state` is the JSON document of
-- billd_core::CustomerState (NULL until the first commit); `version` is
-- the optimistic concurrency counter every commit checks and bumps.
CREATE TABLE customers (
    customer_id        TEXT    PRIMARY KEY,
    stripe_customer_id TEXT    UNIQUE,
    email              TEXT,
    name               TEXT,
    preferred_currency TEXT,
    state              JSONB,
    version            BIGINT  NOT NULL DEFAULT 0 CHECK (version >= 0),
    deleted_at         BIGINT,
    created_at         BIGINT  NOT NULL,
    updated_at         BIGINT  NOT NULL
);

-- Stripe object id (sub_, in_, ch_, pi_, cs_, cus_ …) → customer, for
-- events whose payload names no customer (a dispute names only a charge)
-- and for Stripe customers no longer linked.
CREATE TABLE object_links (
    object_id   TEXT    PRIMARY KEY,
    customer_id TEXT    NOT NULL REFERENCES customers (customer_id),
    created_at  BIGINT  NOT NULL
);
CREATE INDEX object_links_customer ON object_links (customer_id);

-- Every change to a customer's billing state, written in the same
-- transaction as the state.
CREATE TABLE audit_log (
    id           BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id  TEXT    NOT NULL REFERENCES customers (customer_id),
    at           BIGINT  NOT NULL,
    field        TEXT    NOT NULL,
    before_value TEXT,
    after_value  TEXT,
    reason       TEXT    NOT NULL,
    event_type   TEXT    NOT NULL
);
CREATE INDEX audit_log_customer ON audit_log (customer_id, id);

-- Side effects (emails, alerts, Stripe calls), delivered by the outbox
-- worker. `dedupe_key` makes an effect decided twice a single row.
CREATE TABLE outbox (
    id              BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    dedupe_key      TEXT    NOT NULL UNIQUE,
    customer_id     TEXT    REFERENCES customers (customer_id),
    kind            TEXT    NOT NULL,
    payload         JSONB   NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processing', 'sent', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at BIGINT,
    last_error      TEXT,
    created_at      BIGINT  NOT NULL,
    done_at         BIGINT
);
-- Claim scan: only rows a worker may still have to touch, oldest first.
CREATE INDEX outbox_due ON outbox (id) WHERE status IN ('pending', 'processing');
CREATE INDEX outbox_status ON outbox (status, id);
CREATE INDEX outbox_customer ON outbox (customer_id, id);

-- Usage per counter: metered features per billing period (`period_start`),
-- capacity features with `period_start` 0.
CREATE TABLE usage_counters (
    customer_id  TEXT    NOT NULL REFERENCES customers (customer_id),
    feature      TEXT    NOT NULL,
    period_start BIGINT  NOT NULL,
    used         BIGINT  NOT NULL DEFAULT 0 CHECK (used >= 0),
    PRIMARY KEY (customer_id, feature, period_start)
);

-- The answer to each consume/release, by the caller's idempotency key.
CREATE TABLE usage_requests (
    customer_id     TEXT    NOT NULL REFERENCES customers (customer_id),
    idempotency_key TEXT    NOT NULL,
    direction       TEXT    NOT NULL CHECK (direction IN ('consume', 'release')),
    feature         TEXT    NOT NULL,
    period_start    BIGINT  NOT NULL,
    amount          BIGINT  NOT NULL CHECK (amount > 0),
    used            BIGINT  NOT NULL,
    quota           BIGINT  NOT NULL,
    created_at      BIGINT  NOT NULL,
    PRIMARY KEY (customer_id, idempotency_key)
);

-- Re-queueing parked events when a link appears.
CREATE INDEX stripe_events_unlinked_customer ON stripe_events (stripe_customer)
    WHERE status = 'unlinked';
CREATE INDEX stripe_events_unlinked_object ON stripe_events (object_id)
    WHERE status = 'unlinked';
