-- One row per scheduler job. A scheduler runs a job only after claiming
-- its lease with a conditional write (due, and no live lease), so with
-- several billd processes on one database exactly one runs each due run;
-- next_run_at survives restarts, so a restart does not run a job early.
CREATE TABLE scheduler_jobs (
    name        TEXT    PRIMARY KEY,
    lease_owner TEXT,
    lease_until INTEGER,
    next_run_at INTEGER  NOT NULL,
    last_run_at INTEGER,
    last_error  TEXT,
    runs        INTEGER  NOT NULL DEFAULT 0,
    failures    INTEGER  NOT NULL DEFAULT 0
);
