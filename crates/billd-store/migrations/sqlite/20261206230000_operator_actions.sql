-- What operators did through the console or the admin API: who (the
-- console session, or the admin API), what, to what, and how it ended.
-- Kept apart from audit_log, which records state changes of one customer:
-- an operator action may concern no customer (a bulk replay, an outbox row).
CREATE TABLE operator_actions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    target      TEXT    NOT NULL,
    customer_id TEXT,
    outcome     TEXT    NOT NULL
);
CREATE INDEX operator_actions_customer ON operator_actions (customer_id, id);
