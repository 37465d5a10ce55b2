-- Key expiry reminders, one row per key, threshold, channel (email, webhook) and the expiry it
-- is about (a key whose expiry changes is reminded again). The instance sending one holds a
-- claim (a random id, and since when) and marks it sent, so that neither a restart nor a
-- second instance sends it twice. A failed delivery gives up its claim and waits longer
-- before each new try (attempts, next_try_at); a claim never marked (the instance died while
-- sending) may be taken again after ten minutes.
CREATE TABLE key_reminders (
    key_id          TEXT NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    threshold_secs  BIGINT NOT NULL,
    channel         TEXT NOT NULL,
    expires_at      BIGINT NOT NULL,
    claim           TEXT,
    claimed_at      BIGINT,
    sent_at         BIGINT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_try_at     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, threshold_secs, channel, expires_at)
);
