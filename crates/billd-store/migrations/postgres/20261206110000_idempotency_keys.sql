-- Answers to app API requests sent with an Idempotency-Key header, by
-- (customer, key class, key). A row is taken (INSERT … ON CONFLICT DO
-- NOTHING) before the request runs, under a lease held by `token`; the
-- answer (status and body) is filled in when it ends, or the row deleted
-- when the answer is a 5xx (a retry may run again). No foreign key: the
-- row is taken before the handler learns whether the customer exists.
-- Rows live 24 hours (`expires_at`); expired rows are ignored on read and
-- deleted by the idempotency_sweep job.
CREATE TABLE idempotency_keys (
    customer_id     TEXT    NOT NULL,
    key_class       TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    fingerprint     TEXT    NOT NULL,
    token           TEXT    NOT NULL,
    locked_until    BIGINT,
    status          BIGINT CHECK (status BETWEEN 100 AND 499),
    body            TEXT,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    PRIMARY KEY (customer_id, key_class, idempotency_key),
    CHECK ((status IS NULL) = (body IS NULL)),
    CHECK ((status IS NULL) = (locked_until IS NOT NULL))
);
CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);
