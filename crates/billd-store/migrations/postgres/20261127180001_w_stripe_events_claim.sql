-- Fencing for the inbox lease: every claim bumps `claim` (never reset, not
-- even by a requeue), and a worker's finish only lands while the row still
-- carries the number its claim returned. A worker that outlived its lease
-- (and whose event another worker reclaimed) thus cannot overwrite the newer
-- claim's outcome.
ALTER TABLE stripe_events ADD COLUMN claim BIGINT NOT NULL DEFAULT 0;
