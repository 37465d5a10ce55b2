-- API keys and their daily usage. A key's secret is stored only as HMAC-SHA-256 under the
-- server's pepper (secret_hash, hex); the full key is shown once and never stored.

CREATE TABLE api_keys (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    owner_id        TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    workspace_id    TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    display_prefix  TEXT NOT NULL,
    secret_hash     TEXT NOT NULL UNIQUE,
    -- JSON array of scope names
    scopes          TEXT NOT NULL,
    -- JSON array of {"provider", "basePath"}; NULL means every provider, now and future
    providers       TEXT,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT,
    last_used_at    BIGINT,
    revoked_at      BIGINT,
    -- bumped by every change that must retire cached copies (revoke, scopes, grants, expiry,
    -- a change of the owner's membership)
    generation      BIGINT NOT NULL DEFAULT 0,
    updated_at      BIGINT NOT NULL,
    rotated_from    TEXT
);

CREATE INDEX api_keys_by_owner ON api_keys (owner_id);
CREATE INDEX api_keys_by_workspace ON api_keys (workspace_id);
CREATE INDEX api_keys_by_update ON api_keys (updated_at);

CREATE TABLE key_usage (
    key_id     TEXT NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    -- UTC day, YYYY-MM-DD
    day        TEXT NOT NULL,
    requests   BIGINT NOT NULL DEFAULT 0,
    denied     BIGINT NOT NULL DEFAULT 0,
    bytes_in   BIGINT NOT NULL DEFAULT 0,
    bytes_out  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day)
);
