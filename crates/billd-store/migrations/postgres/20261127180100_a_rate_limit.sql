-- Rate limits shared by every billd process on the database: one row per
-- (scope, subject) holding the current fixed window (it starts at the first
-- counted hit) and the hits counted in it. One upsert decides and counts;
-- rows whose window has ended are pruned by the same call.
CREATE TABLE rate_limits (
    scope        TEXT    NOT NULL,
    subject      TEXT    NOT NULL,
    window_start BIGINT  NOT NULL,
    expires_at   BIGINT  NOT NULL,
    hits         BIGINT  NOT NULL CHECK (hits > 0),
    PRIMARY KEY (scope, subject)
);
CREATE INDEX rate_limits_expires_at ON rate_limits (expires_at);
