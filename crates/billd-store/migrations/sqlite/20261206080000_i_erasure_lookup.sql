-- Erasing a deleted customer rewrites the stored payloads of its events:
-- those naming one of its Stripe customers, and those naming none whose
-- object is linked to it (a dispute names only its charge). These indexes
-- make that O(the customer's events) instead of a scan of the inbox; the
-- second one only holds the rare events that name no customer.
CREATE INDEX stripe_events_customer ON stripe_events (stripe_customer);
CREATE INDEX stripe_events_customerless_object ON stripe_events (object_id)
    WHERE stripe_customer IS NULL;
-- Every billd process reloads the Stripe customers of deleted accounts
-- every few seconds (arriving events of theirs are scrubbed before they are
-- stored); this keeps that a read of the deleted rows only.
CREATE INDEX customers_deleted ON customers (customer_id) WHERE deleted_at IS NOT NULL;
