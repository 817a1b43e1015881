-- The console's event list, newest first: derived rows in insertion order
-- (`seq`; the primary key is the event id, so without this the newest
-- fifty were a sort of the whole table). Like every index but the id's it
-- leaves out received rows, which `stripe_events_received` holds in the
-- same order; the list reads both and merges them.
CREATE INDEX stripe_events_order ON stripe_events (seq) WHERE status IS NOT NULL;
