-- Logins and the tokens they issue (mobile JWTs, access + refresh tokens, browser sessions,
-- scoped tokens, external issuers' tokens), and the keys keygate signs its JWTs with.

CREATE TABLE auth_tokens (
    id              TEXT PRIMARY KEY,
    -- 'mobile', 'access', 'refresh', 'session', 'scoped' or 'external'
    kind            TEXT NOT NULL CHECK (kind IN ('mobile', 'access', 'refresh', 'session', 'scoped', 'external')),
    -- the login a token belongs to; revoking one token revokes its whole family
    family_id       TEXT NOT NULL,
    user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    workspace_id    TEXT NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    -- what the client called itself at login (a device name), or a scoped token's name
    label           TEXT,
    -- keyed hash (HMAC-SHA-256 under the pepper) of an opaque secret: refresh tokens, session
    -- cookies; NULL for JWTs, whose signature is the proof
    secret_hash     TEXT UNIQUE,
    -- scoped tokens: JSON array of scopes and of {"provider", "basePath"} (NULL: every provider)
    scopes          TEXT,
    providers       TEXT,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    last_used_at    BIGINT,
    -- refresh tokens: when it was exchanged; presenting it again is reuse
    used_at         BIGINT,
    revoked_at      BIGINT,
    generation      BIGINT NOT NULL DEFAULT 0,
    updated_at      BIGINT NOT NULL
);

CREATE INDEX auth_tokens_by_user ON auth_tokens (user_id);
CREATE INDEX auth_tokens_by_family ON auth_tokens (family_id);
CREATE INDEX auth_tokens_by_update ON auth_tokens (updated_at);

CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY,
    alg          TEXT NOT NULL,
    -- the public key, base64url (the JWK's "x" for Ed25519)
    public_key   TEXT NOT NULL,
    -- the private key (PKCS#8 DER), sealed with ChaCha20-Poly1305 under a key derived from the
    -- server's pepper, base64url of nonce || ciphertext; a database dump alone cannot sign
    sealed_key   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    -- set when a newer key takes over signing; the key still verifies until retire_at
    rotated_at   BIGINT,
    retire_at    BIGINT
);
