-- Live leases by customer: the claim looks up "does this customer have an
-- event under a lease" for every candidate customer.
CREATE INDEX stripe_events_leases ON stripe_events (stripe_customer, next_attempt_at)
    WHERE status = 'processing';

-- Every event is updated twice (claimed, finished) and no update can be HOT
-- (status is indexed), so dead index entries pile up in front of the claim
-- scan. Vacuum this table after a small fraction of churn rather than the
-- default 20 %.
ALTER TABLE stripe_events SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02
);
