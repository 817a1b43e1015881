-- Lean ingest: acknowledging a webhook writes only (id, received_at,
-- payload). A row whose `status` is NULL is "received": its derived columns
-- (type, api_version, created, object_id, stripe_customer) are still NULL
-- and the inbox worker fills them, making it `pending`, before it claims.
-- Every index but the id's unique one and the small queue of received rows
-- leaves received rows out, and the status counters skip them, so an
-- acknowledgement writes one table row and two index entries.
--
-- SQLite cannot drop NOT NULL or change a CHECK in place: the table is
-- rebuilt, every row kept as it is (rows stored before are all derived).
-- The payload moves to the last column, so reading the short columns of a
-- row never walks past a long body.
CREATE TABLE stripe_events_lean (
    seq             INTEGER PRIMARY KEY,
    id              TEXT    NOT NULL UNIQUE,
    received_at     INTEGER NOT NULL,
    status          TEXT
        CHECK (status IN ('pending', 'processing', 'processed', 'failed', 'dead', 'skipped', 'unlinked')),
    type            TEXT,
    api_version     TEXT,
    created         INTEGER,
    object_id       TEXT,
    stripe_customer TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    claim           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    last_error      TEXT,
    processed_at    INTEGER,
    payload         TEXT    NOT NULL,
    -- A derived row has its type and created.
    CHECK (status IS NULL OR (type IS NOT NULL AND created IS NOT NULL))
);

INSERT INTO stripe_events_lean
    (seq, id, received_at, status, type, api_version, created, object_id, stripe_customer,
     attempts, claim, next_attempt_at, last_error, processed_at, payload)
SELECT seq, id, received_at, status, type, api_version, created, object_id, stripe_customer,
       attempts, claim, next_attempt_at, last_error, processed_at, payload
FROM stripe_events;

-- Drops its indexes and triggers too; the counters keep their values (the
-- same rows are back in a moment).
DROP TABLE stripe_events;
ALTER TABLE stripe_events_lean RENAME TO stripe_events;

-- Received rows, oldest first: the worker's queue of rows to derive.
CREATE INDEX stripe_events_received ON stripe_events (seq) WHERE status IS NULL;

-- As before, for derived rows only. `x IS NOT NULL` lets every query with
-- `x = …` or `x IN (…)` use the index.
CREATE INDEX stripe_events_due ON stripe_events (created, seq)
    WHERE status IN ('pending', 'failed', 'processing');
CREATE INDEX stripe_events_status ON stripe_events (status, seq) WHERE status IS NOT NULL;
CREATE INDEX stripe_events_type ON stripe_events (type, seq) WHERE type IS NOT NULL;
CREATE INDEX stripe_events_leases ON stripe_events (stripe_customer, next_attempt_at)
    WHERE status = 'processing';
CREATE INDEX stripe_events_customer ON stripe_events (stripe_customer)
    WHERE stripe_customer IS NOT NULL;
CREATE INDEX stripe_events_customerless_object ON stripe_events (object_id)
    WHERE stripe_customer IS NULL AND object_id IS NOT NULL;
CREATE INDEX stripe_events_unlinked_customer ON stripe_events (stripe_customer)
    WHERE status = 'unlinked';
CREATE INDEX stripe_events_unlinked_object ON stripe_events (object_id)
    WHERE status = 'unlinked';

-- The status counters count derived rows; a received row is counted when
-- the worker derives it (its status goes from NULL to pending).
CREATE TRIGGER stripe_events_count_insert AFTER INSERT ON stripe_events
WHEN NEW.status IS NOT NULL
BEGIN
    UPDATE stripe_event_counts SET n = n + 1 WHERE status = NEW.status;
END;

CREATE TRIGGER stripe_events_count_update AFTER UPDATE OF status ON stripe_events
WHEN OLD.status IS NOT NEW.status
BEGIN
    UPDATE stripe_event_counts SET n = n - 1 WHERE status = OLD.status;
    UPDATE stripe_event_counts SET n = n + 1 WHERE status = NEW.status;
END;

CREATE TRIGGER stripe_events_count_delete AFTER DELETE ON stripe_events
WHEN OLD.status IS NOT NULL
BEGIN
    UPDATE stripe_event_counts SET n = n - 1 WHERE status = OLD.status;
END;
