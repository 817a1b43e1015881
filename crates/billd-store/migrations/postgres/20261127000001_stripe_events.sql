-- The webhook inbox. `seq` is the insertion order, a stable tie-break for
-- events with the same `created`.
CREATE TABLE stripe_events (
    id              TEXT    PRIMARY KEY,
    seq             BIGINT  GENERATED ALWAYS AS IDENTITY,
    type            TEXT    NOT NULL,
    api_version     TEXT,
    created         BIGINT  NOT NULL,
    object_id       TEXT,
    stripe_customer TEXT,
    payload         TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processing', 'processed', 'failed', 'dead', 'skipped', 'unlinked')),
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at BIGINT,
    last_error      TEXT,
    received_at     BIGINT  NOT NULL,
    processed_at    BIGINT
);

-- Claim scan: only rows a worker may still have to touch, in claim order.
CREATE INDEX stripe_events_due ON stripe_events (created, seq)
    WHERE status IN ('pending', 'failed', 'processing');

-- Listing by status (newest first), depth per status, live leases.
CREATE INDEX stripe_events_status ON stripe_events (status, seq);

-- Listing by type (newest first).
CREATE INDEX stripe_events_type ON stripe_events (type, seq);
