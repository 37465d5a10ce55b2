-- OAuth 2.0 (authorization code with PKCE): the applications a workspace admin registered,
-- the one-time codes a user's approval produced, and the token family each approval started.

CREATE TABLE oauth_clients (
    -- the client_id applications send
    id              TEXT PRIMARY KEY,
    workspace_id    TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    -- JSON array of redirect URIs, each matched exactly
    redirect_uris   TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    revoked_at      BIGINT
);

CREATE INDEX oauth_clients_by_workspace ON oauth_clients (workspace_id);

CREATE TABLE oauth_codes (
    -- HMAC-SHA-256 of the code under the pepper; the code itself is never stored
    code_hash       TEXT PRIMARY KEY,
    client_id       TEXT NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    workspace_id    TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    redirect_uri    TEXT NOT NULL,
    -- JSON arrays: the permissions approved, and the base paths ({"provider", "basePath"})
    scopes          TEXT NOT NULL,
    providers       TEXT,
    code_challenge  TEXT NOT NULL,
    expires_at      BIGINT NOT NULL,
    used_at         BIGINT,
    -- the token family the code was exchanged for (revoked if the code comes back)
    family_id       TEXT,
    -- presented again while its first exchange was still running: that exchange fails too
    replayed_at     BIGINT
);

CREATE INDEX oauth_codes_by_user ON oauth_codes (user_id);

CREATE TABLE oauth_grants (
    -- a token family (auth_tokens.family_id) issued to a client
    family_id       TEXT PRIMARY KEY,
    client_id       TEXT NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at      BIGINT NOT NULL
);

CREATE INDEX oauth_grants_by_client ON oauth_grants (client_id);
