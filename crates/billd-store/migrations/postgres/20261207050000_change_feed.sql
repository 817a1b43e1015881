-- Every change to what an entitlements read reads (a customers row and its
-- usage_counters rows) is announced on the channel `billd_changes` with the
-- customer's id, whichever process or statement makes it: a `billd serve`
-- that follows the channel answers entitlement reads from memory while no
-- announcement for that customer has arrived since its last read. An empty
-- payload means every customer changed (TRUNCATE). PostgreSQL delivers the
-- announcements at commit, in commit order, and only when the transaction
-- commits.
CREATE FUNCTION billd_announce_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('billd_changes', '');
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('billd_changes', OLD.customer_id);
    ELSE
        PERFORM pg_notify('billd_changes', NEW.customer_id);
        IF TG_OP = 'UPDATE' AND OLD.customer_id IS DISTINCT FROM NEW.customer_id THEN
            PERFORM pg_notify('billd_changes', OLD.customer_id);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER customers_announce AFTER INSERT OR UPDATE OR DELETE ON customers
    FOR EACH ROW EXECUTE PROCEDURE billd_announce_change();
CREATE TRIGGER customers_announce_truncate AFTER TRUNCATE ON customers
    FOR EACH STATEMENT EXECUTE PROCEDURE billd_announce_change();
CREATE TRIGGER usage_counters_announce AFTER INSERT OR UPDATE OR DELETE ON usage_counters
    FOR EACH ROW EXECUTE PROCEDURE billd_announce_change();
CREATE TRIGGER usage_counters_announce_truncate AFTER TRUNCATE ON usage_counters
    FOR EACH STATEMENT EXECUTE PROCEDURE billd_announce_change();
