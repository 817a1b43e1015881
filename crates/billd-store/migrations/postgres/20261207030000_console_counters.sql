-- The overview's counts without counting rows per request: the inbox's
-- derived events per minute of arrival (its 24-hour chart and the last
-- hour's webhooks) and the outbox's rows per status (sent emails are kept,
-- so a count grows with every email ever sent). As with
-- `stripe_event_count_deltas`, each statement appends its net change, so
-- no two transactions wait on a shared counter row; the reads sum a key's
-- rows and the store folds them now and then.

-- Derived events per minute of `received_at`. Like the status counters,
-- no insert trigger (it would copy every acknowledged body into a
-- transition table): `insert_events` appends its own delta, and a received
-- row is counted when the worker derives it.
CREATE TABLE stripe_event_minutes (
    minute             BIGINT NOT NULL,
    events             BIGINT NOT NULL,
    webhooks           BIGINT NOT NULL,
    payments_failed    BIGINT NOT NULL,
    payments_succeeded BIGINT NOT NULL,
    dead               BIGINT NOT NULL
);
CREATE INDEX stripe_event_minutes_minute ON stripe_event_minutes (minute);

INSERT INTO stripe_event_minutes
    (minute, events, webhooks, payments_failed, payments_succeeded, dead)
SELECT received_at - received_at % 60, COUNT(*),
       COUNT(*) FILTER (WHERE substr(id, 1, 10) <> 'evt_billd_'),
       COUNT(*) FILTER (WHERE type = 'invoice.payment_failed'),
       COUNT(*) FILTER (WHERE type = 'invoice.paid'),
       COUNT(*) FILTER (WHERE status = 'dead')
FROM stripe_events WHERE status IS NOT NULL
GROUP BY received_at - received_at % 60;

-- The update trigger appends each statement's net change per minute: +1
-- for each row's new version, -1 for its old one; minutes without a change
-- (a claim, a retry) append nothing.
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
    INSERT INTO stripe_event_minutes
        (minute, events, webhooks, payments_failed, payments_succeeded, dead)
    SELECT minute, SUM(n), SUM(n * webhook), SUM(n * failed), SUM(n * paid), SUM(n * dead)
    FROM (
        SELECT received_at - received_at % 60 AS minute, s.n,
               CASE WHEN substr(id, 1, 10) <> 'evt_billd_' THEN 1 ELSE 0 END AS webhook,
               CASE WHEN type = 'invoice.payment_failed' THEN 1 ELSE 0 END AS failed,
               CASE WHEN type = 'invoice.paid' THEN 1 ELSE 0 END AS paid,
               CASE WHEN status = 'dead' THEN 1 ELSE 0 END AS dead
        FROM (SELECT *, 1 AS n FROM new_rows WHERE status IS NOT NULL
              UNION ALL
              SELECT *, -1 AS n FROM old_rows WHERE status IS NOT NULL) AS s
    ) AS changes
    GROUP BY minute
    HAVING SUM(n) <> 0 OR SUM(n * webhook) <> 0 OR SUM(n * failed) <> 0
        OR SUM(n * paid) <> 0 OR SUM(n * dead) <> 0;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION stripe_events_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO stripe_event_count_deltas (status, n)
    SELECT status, -COUNT(*) FROM old_rows WHERE status IS NOT NULL GROUP BY status;
    INSERT INTO stripe_event_minutes
        (minute, events, webhooks, payments_failed, payments_succeeded, dead)
    SELECT received_at - received_at % 60, -COUNT(*),
           -COUNT(*) FILTER (WHERE substr(id, 1, 10) <> 'evt_billd_'),
           -COUNT(*) FILTER (WHERE type = 'invoice.payment_failed'),
           -COUNT(*) FILTER (WHERE type = 'invoice.paid'),
           -COUNT(*) FILTER (WHERE status = 'dead')
    FROM old_rows WHERE status IS NOT NULL
    GROUP BY received_at - received_at % 60;
    RETURN NULL;
END $$;

-- Outbox rows per status.
CREATE TABLE outbox_counts (
    status TEXT   NOT NULL,
    n      BIGINT NOT NULL
);

INSERT INTO outbox_counts (status, n) SELECT status, COUNT(*) FROM outbox GROUP BY status;

CREATE FUNCTION outbox_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_counts (status, n) SELECT status, COUNT(*) FROM new_rows GROUP BY status;
    RETURN NULL;
END $$;

CREATE FUNCTION outbox_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_counts (status, n)
    SELECT status, SUM(n) FROM (
        SELECT status, 1 AS n FROM new_rows
        UNION ALL
        SELECT status, -1 AS n FROM old_rows
    ) AS changes
    GROUP BY status
    HAVING SUM(n) <> 0;
    RETURN NULL;
END $$;

CREATE FUNCTION outbox_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox_counts (status, n) SELECT status, -COUNT(*) FROM old_rows GROUP BY status;
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_count_insert AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_count_insert();

CREATE TRIGGER outbox_count_update AFTER UPDATE ON outbox
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_count_update();

CREATE TRIGGER outbox_count_delete AFTER DELETE ON outbox
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_count_delete();
