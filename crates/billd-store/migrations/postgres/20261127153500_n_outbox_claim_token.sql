-- Fences outbox leases: every claim bumps the row's claim token, and a
-- worker may renew or finish a row only while the token it was handed is
-- still the row's, so a delivery that outlived its lease cannot overwrite
-- the outcome of the worker that claimed the row after it.
ALTER TABLE outbox ADD COLUMN claim_token BIGINT NOT NULL DEFAULT 0;
