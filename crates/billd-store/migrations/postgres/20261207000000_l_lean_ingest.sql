-- Lean ingest: acknowledging a webhook writes only (id, received_at,
-- payload). A row whose `status` is NULL is "received": its derived columns
-- (type, api_version, created, object_id, stripe_customer) are still NULL
-- and the inbox worker fills them, making it `pending`, before it claims.
-- Every index but the primary key and the small queue of received rows
-- leaves received rows out, and no trigger runs on insert, so an
-- acknowledgement writes one heap tuple and two index entries. Rows stored
-- before are all derived and stay as they are.
ALTER TABLE stripe_events
    ALTER COLUMN status DROP NOT NULL,
    ALTER COLUMN status DROP DEFAULT,
    ALTER COLUMN type DROP NOT NULL,
    ALTER COLUMN created DROP NOT NULL,
    ADD CONSTRAINT stripe_events_derived
        CHECK (status IS NULL OR (type IS NOT NULL AND created IS NOT NULL));

-- Received rows, oldest first: the worker's queue of rows to derive.
CREATE INDEX stripe_events_received ON stripe_events (seq) WHERE status IS NULL;

-- As before, for derived rows only (`x = …` implies `x IS NOT NULL`, so
-- the planner still uses them).
DROP INDEX stripe_events_status;
CREATE INDEX stripe_events_status ON stripe_events (status, seq) WHERE status IS NOT NULL;
DROP INDEX stripe_events_type;
CREATE INDEX stripe_events_type ON stripe_events (type, seq) WHERE type IS NOT NULL;
DROP INDEX stripe_events_customer;
CREATE INDEX stripe_events_customer ON stripe_events (stripe_customer)
    WHERE stripe_customer IS NOT NULL;
DROP INDEX stripe_events_customerless_object;
CREATE INDEX stripe_events_customerless_object ON stripe_events (object_id)
    WHERE stripe_customer IS NULL AND object_id IS NOT NULL;

-- The status counters count derived rows. An insert trigger with a
-- transition table would copy every acknowledged body into a tuplestore;
-- instead, `insert_events` (rows inserted already derived) appends its own
-- delta, and a received row is counted when the worker derives it (an
-- UPDATE from NULL to pending).
DROP TRIGGER stripe_events_count_insert ON stripe_events;
DROP FUNCTION stripe_events_count_insert();

CREATE OR REPLACE FUNCTION stripe_events_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stripe_event_count_deltas (status, n)
    SELECT status, SUM(n) FROM (
        SELECT status, 1 AS n FROM new_rows WHERE status IS NOT NULL
        UNION ALL
        SELECT status, -1 AS n FROM old_rows WHERE status IS NOT NULL
    ) AS changes
    GROUP BY status
    HAVING SUM(n) <> 0;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION stripe_events_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stripe_event_count_deltas (status, n)
    SELECT status, -COUNT(*) FROM old_rows WHERE status IS NOT NULL GROUP BY status;
    RETURN NULL;
END $$;
