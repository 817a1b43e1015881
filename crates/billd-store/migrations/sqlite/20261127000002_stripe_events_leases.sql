-- Live leases by customer: the claim looks up "does this customer have an
-- event under a lease" for every candidate customer.
CREATE INDEX stripe_events_leases ON stripe_events (stripe_customer, next_attempt_at)
    WHERE status = 'processing';
