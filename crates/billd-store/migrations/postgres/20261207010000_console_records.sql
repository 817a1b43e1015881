-- What operators did through the console or the admin API: who (the
-- console session, or the admin API), what, to what, and how it ended.
-- Kept apart from audit_log, which records state changes of one customer:
-- an operator action may concern no customer (a bulk replay, an outbox row).
CREATE TABLE operator_actions (
    id          BIGSERIAL PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor       TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    target      TEXT   NOT NULL,
    customer_id TEXT,
    outcome     TEXT   NOT NULL
);
CREATE INDEX operator_actions_customer ON operator_actions (customer_id, id);

-- Every finished reconciliation run (not dry runs): what it checked and
-- found, for the console and the admin API. Small: one row per run.
CREATE TABLE reconcile_runs (
    id          BIGSERIAL PRIMARY KEY,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT NOT NULL,
    checked     BIGINT NOT NULL,
    drift       BIGINT NOT NULL,
    unlinked    BIGINT NOT NULL,
    ingested    BIGINT NOT NULL,
    report      TEXT NOT NULL
);

-- The console's charts count events by arrival time, type and status (the
-- index holds all it reads), and its filters read a type's events by day.
-- Like every index but the id's, they leave out received rows (not derived
-- yet), so that acknowledging a webhook does not write them.
CREATE INDEX stripe_events_arrival ON stripe_events (received_at, type, status, id)
    WHERE status IS NOT NULL;
CREATE INDEX stripe_events_type_arrival ON stripe_events (type, received_at)
    WHERE status IS NOT NULL;

-- Customer search by the start of an email, in any case.
CREATE INDEX customers_email_lower ON customers ((lower(email) COLLATE "C"));

-- The alerts page and the overview read the outbox's alerts, newest first.
CREATE INDEX outbox_kind ON outbox (kind, id);
