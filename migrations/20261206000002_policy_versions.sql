-- Policy sets published to the database (`keygate policy publish`, `rollback`): with
-- [policies] source = "database" every instance runs the newest version. Versions are never
-- changed or deleted; a rollback publishes an older version's files again as a new version.

CREATE TABLE policy_versions (
    version       BIGINT PRIMARY KEY,
    -- the set's hash, as GET /v1/admin/policy and the audit log show it
    hash          TEXT NOT NULL,
    -- JSON array of [file name, contents] (shadow/ files as "shadow/NAME")
    files         TEXT NOT NULL,
    published_at  BIGINT NOT NULL,
    -- who published it, as they said (--by) or the CLI's user
    published_by  TEXT NOT NULL,
    note          TEXT,
    -- the version a rollback published again
    rollback_of   BIGINT
);
