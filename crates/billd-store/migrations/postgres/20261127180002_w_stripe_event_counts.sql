-- Inbox depth per status without counting every event ever received:
-- statement-level triggers append the net change of each statement to
-- stripe_event_count_deltas, and inbox_stats sums (and folds) those rows.
-- Appending instead of updating one counter row per status means that no
-- two transactions (several billd processes, claims beside inserts) ever
-- wait on, or deadlock over, a shared counter row.
CREATE TABLE stripe_event_count_deltas (
    status TEXT   NOT NULL,
    n      BIGINT NOT NULL
);

INSERT INTO stripe_event_count_deltas (status, n)
SELECT status, COUNT(*) FROM stripe_events GROUP BY status;

CREATE FUNCTION stripe_events_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stripe_event_count_deltas (status, n)
    SELECT status, COUNT(*) FROM new_rows GROUP BY status;
    RETURN NULL;
END $$;

CREATE FUNCTION stripe_events_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stripe_event_count_deltas (status, n)
    SELECT status, SUM(n) FROM (
        SELECT status, 1 AS n FROM new_rows
        UNION ALL
        SELECT status, -1 AS n FROM old_rows
    ) AS changes
    GROUP BY status
    HAVING SUM(n) <> 0;
    RETURN NULL;
END $$;

CREATE FUNCTION stripe_events_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stripe_event_count_deltas (status, n)
    SELECT status, -COUNT(*) FROM old_rows GROUP BY status;
    RETURN NULL;
END $$;

CREATE TRIGGER stripe_events_count_insert AFTER INSERT ON stripe_events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stripe_events_count_insert();

CREATE TRIGGER stripe_events_count_update AFTER UPDATE ON stripe_events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stripe_events_count_update();

CREATE TRIGGER stripe_events_count_delete AFTER DELETE ON stripe_events
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stripe_events_count_delete();
