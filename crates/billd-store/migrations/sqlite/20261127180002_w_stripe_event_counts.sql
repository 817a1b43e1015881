-- Inbox depth per status, kept up to date by triggers, so that /metrics and
-- /readyz read 7 rows instead of counting every event ever received. SQLite
-- has a single writer, so the counters are plain rows updated in the same
-- transaction as the change (nobody waits on them).
CREATE TABLE stripe_event_counts (
    status TEXT    PRIMARY KEY,
    n      INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO stripe_event_counts (status, n)
SELECT s.status, (SELECT COUNT(*) FROM stripe_events e WHERE e.status = s.status)
FROM (SELECT 'pending' AS status UNION ALL SELECT 'processing' UNION ALL SELECT 'processed'
      UNION ALL SELECT 'failed' UNION ALL SELECT 'dead' UNION ALL SELECT 'skipped'
      UNION ALL SELECT 'unlinked') AS s;

CREATE TRIGGER stripe_events_count_insert AFTER INSERT ON stripe_events
BEGIN
    UPDATE stripe_event_counts SET n = n + 1 WHERE status = NEW.status;
END;

CREATE TRIGGER stripe_events_count_update AFTER UPDATE OF status ON stripe_events
WHEN OLD.status <> NEW.status
BEGIN
    UPDATE stripe_event_counts SET n = n - 1 WHERE status = OLD.status;
    UPDATE stripe_event_counts SET n = n + 1 WHERE status = NEW.status;
END;

CREATE TRIGGER stripe_events_count_delete AFTER DELETE ON stripe_events
BEGIN
    UPDATE stripe_event_counts SET n = n - 1 WHERE status = OLD.status;
END;
