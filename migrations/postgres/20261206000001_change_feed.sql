-- PostgreSQL only (SQLite serves one instance and follows changes by polling): the change feed
-- that several keygate instances on one database follow (docs/operating.md, "Running several
-- instances").
--
-- Every change that must retire cached credentials bumps a row's generation. A trigger stamps
-- the row with the id of the transaction that made the change and announces it on the channel
-- keygate_changes, delivered when (and only if) the transaction commits. An instance that lost
-- its connection catches up by reading the rows stamped by any transaction it may not have seen:
-- those at or above the oldest transaction still running when it last read. Transaction ids,
-- unlike timestamps, do not depend on any clock, and the horizon covers transactions that
-- commit in any order.

ALTER TABLE api_keys ADD COLUMN changed_xid xid8;
ALTER TABLE auth_tokens ADD COLUMN changed_xid xid8;
CREATE INDEX api_keys_by_change ON api_keys (changed_xid);
CREATE INDEX auth_tokens_by_change ON auth_tokens (changed_xid);

-- 'credential <id> <generation> <updated_at ms>'
CREATE FUNCTION keygate_credential_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.changed_xid := pg_current_xact_id();
    PERFORM pg_notify('keygate_changes',
        'credential ' || NEW.id || ' ' || NEW.generation || ' ' || NEW.updated_at);
    RETURN NEW;
END
$$;

CREATE TRIGGER api_keys_changed BEFORE UPDATE ON api_keys FOR EACH ROW
    WHEN (OLD.generation IS DISTINCT FROM NEW.generation)
    EXECUTE FUNCTION keygate_credential_changed();
CREATE TRIGGER auth_tokens_changed BEFORE UPDATE ON auth_tokens FOR EACH ROW
    WHEN (OLD.generation IS DISTINCT FROM NEW.generation)
    EXECUTE FUNCTION keygate_credential_changed();

-- Small tables every instance reads whole: the notice names the table ('providers',
-- 'signing-keys').
CREATE FUNCTION keygate_table_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keygate_changes', TG_ARGV[0]);
    RETURN NULL;
END
$$;

CREATE TRIGGER providers_changed AFTER INSERT OR UPDATE OR DELETE ON providers
    FOR EACH STATEMENT EXECUTE FUNCTION keygate_table_changed('providers');
CREATE TRIGGER signing_keys_changed AFTER INSERT OR UPDATE OR DELETE ON signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION keygate_table_changed('signing-keys');
