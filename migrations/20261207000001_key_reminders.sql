-- Key expiry reminders, one row per key, threshold and channel (email, webhook): claimed by the
-- instance that sends it (claimed_at) and marked when it went out (sent_at), so that neither a
-- restart nor a second instance sends one twice. A claim never marked (the instance died while
-- sending) may be taken again after ten minutes; a send that failed releases its claim.
CREATE TABLE key_reminders (
    key_id          TEXT NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    threshold_secs  BIGINT NOT NULL,
    channel         TEXT NOT NULL,
    claimed_at      BIGINT NOT NULL,
    sent_at         BIGINT,
    PRIMARY KEY (key_id, threshold_secs, channel)
);
