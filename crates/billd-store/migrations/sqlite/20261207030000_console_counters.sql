-- The overview's counts without counting rows per request: the inbox's
-- derived events per minute of arrival (its 24-hour chart and the last
-- hour's webhooks) and the outbox's rows per status (sent emails are kept,
-- so a count grows with every email ever sent). Triggers keep them in the
-- same transaction as the change, as `stripe_event_counts` is kept. The
-- columns and reads are PostgreSQL's, whose tables hold appended deltas:
-- here a key has one row, and its sum is that row.

-- Derived events per minute of `received_at` (received rows count once the
-- worker derives them, as in `stripe_event_counts`).
CREATE TABLE stripe_event_minutes (
    minute             INTEGER PRIMARY KEY,
    events             INTEGER NOT NULL,
    webhooks           INTEGER NOT NULL,
    payments_failed    INTEGER NOT NULL,
    payments_succeeded INTEGER NOT NULL,
    dead               INTEGER NOT NULL
);

INSERT INTO stripe_event_minutes
    (minute, events, webhooks, payments_failed, payments_succeeded, dead)
SELECT received_at - received_at % 60, COUNT(*),
       SUM(substr(id, 1, 10) <> 'evt_billd_'),
       SUM(type IS 'invoice.payment_failed'), SUM(type IS 'invoice.paid'),
       SUM(status IS 'dead')
FROM stripe_events WHERE status IS NOT NULL
GROUP BY received_at - received_at % 60;

CREATE TRIGGER stripe_events_minute_insert AFTER INSERT ON stripe_events
WHEN NEW.status IS NOT NULL
BEGIN
    INSERT INTO stripe_event_minutes
        (minute, events, webhooks, payments_failed, payments_succeeded, dead)
    VALUES (NEW.received_at - NEW.received_at % 60, 1,
            substr(NEW.id, 1, 10) <> 'evt_billd_',
            NEW.type IS 'invoice.payment_failed', NEW.type IS 'invoice.paid',
            NEW.status IS 'dead')
    ON CONFLICT (minute) DO UPDATE SET
        events = events + excluded.events, webhooks = webhooks + excluded.webhooks,
        payments_failed = payments_failed + excluded.payments_failed,
        payments_succeeded = payments_succeeded + excluded.payments_succeeded,
        dead = dead + excluded.dead;
END;

-- A row's contribution changes when it is derived (status from NULL), when
-- it becomes or stops being dead, or if its type changes; the old one is
-- taken away and the new one added, in one step (id and received_at are
-- never updated, so both are the same minute's).
CREATE TRIGGER stripe_events_minute_update AFTER UPDATE OF status, type ON stripe_events
WHEN (OLD.status IS NULL) <> (NEW.status IS NULL)
  OR (OLD.status IS 'dead') <> (NEW.status IS 'dead')
  OR OLD.type IS NOT NEW.type
BEGIN
    INSERT INTO stripe_event_minutes
        (minute, events, webhooks, payments_failed, payments_succeeded, dead)
    VALUES (NEW.received_at - NEW.received_at % 60,
            (NEW.status IS NOT NULL) - (OLD.status IS NOT NULL),
            ((NEW.status IS NOT NULL) - (OLD.status IS NOT NULL))
                * (substr(NEW.id, 1, 10) <> 'evt_billd_'),
            (NEW.status IS NOT NULL AND NEW.type IS 'invoice.payment_failed')
                - (OLD.status IS NOT NULL AND OLD.type IS 'invoice.payment_failed'),
            (NEW.status IS NOT NULL AND NEW.type IS 'invoice.paid')
                - (OLD.status IS NOT NULL AND OLD.type IS 'invoice.paid'),
            (NEW.status IS 'dead') - (OLD.status IS 'dead'))
    ON CONFLICT (minute) DO UPDATE SET
        events = events + excluded.events, webhooks = webhooks + excluded.webhooks,
        payments_failed = payments_failed + excluded.payments_failed,
        payments_succeeded = payments_succeeded + excluded.payments_succeeded,
        dead = dead + excluded.dead;
END;

CREATE TRIGGER stripe_events_minute_delete AFTER DELETE ON stripe_events
WHEN OLD.status IS NOT NULL
BEGIN
    UPDATE stripe_event_minutes SET
        events = events - 1,
        webhooks = webhooks - (substr(OLD.id, 1, 10) <> 'evt_billd_'),
        payments_failed = payments_failed - (OLD.type IS 'invoice.payment_failed'),
        payments_succeeded = payments_succeeded - (OLD.type IS 'invoice.paid'),
        dead = dead - (OLD.status IS 'dead')
    WHERE minute = OLD.received_at - OLD.received_at % 60;
END;

-- Outbox rows per status.
CREATE TABLE outbox_counts (
    status TEXT    PRIMARY KEY,
    n      INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO outbox_counts (status, n) SELECT status, COUNT(*) FROM outbox GROUP BY status;

CREATE TRIGGER outbox_count_insert AFTER INSERT ON outbox
BEGIN
    INSERT INTO outbox_counts (status, n) VALUES (NEW.status, 1)
    ON CONFLICT (status) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER outbox_count_update AFTER UPDATE OF status ON outbox
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE outbox_counts SET n = n - 1 WHERE status = OLD.status;
    INSERT INTO outbox_counts (status, n) VALUES (NEW.status, 1)
    ON CONFLICT (status) DO UPDATE SET n = n + 1;
END;

CREATE TRIGGER outbox_count_delete AFTER DELETE ON outbox
BEGIN
    UPDATE outbox_counts SET n = n - 1 WHERE status = OLD.status;
END;
