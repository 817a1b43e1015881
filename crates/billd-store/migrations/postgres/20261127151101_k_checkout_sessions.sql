-- Single-flight Checkout: the latest Checkout session billd created for a
-- customer. Concurrent or repeated identical checkout requests answer this
-- session while it is open; a different request closes it first. The row
-- is replaced only by a writer that read `generation` (compare-and-set),
-- so two billd processes converge on one session.
CREATE TABLE checkout_sessions (
    customer_id TEXT    PRIMARY KEY REFERENCES customers (customer_id),
    generation  BIGINT  NOT NULL CHECK (generation > 0),
    session_id  TEXT    NOT NULL,
    url         TEXT    NOT NULL,
    plan        TEXT    NOT NULL,
    currency    TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    expires_at  BIGINT  NOT NULL,
    closed_at   BIGINT,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);
