-- PostgreSQL only: a published policy version is announced on the change channel as it commits
-- ('policy <version>'), so every instance loads it at once (docs/policies.md, "Publishing to
-- the database").

CREATE FUNCTION keygate_policy_published() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keygate_changes', 'policy ' || NEW.version);
    RETURN NULL;
END
$$;

CREATE TRIGGER policy_versions_published AFTER INSERT ON policy_versions
    FOR EACH ROW EXECUTE FUNCTION keygate_policy_published();
