//! Key expiry reminders: which keys are due one, and the claim that makes each go out once
//! (per key, threshold, channel and expiry) whatever restarts or other instances do.

use sqlx::Row;

use super::{Store, StoreError};

/// A claim not marked after this long is taken to be from an instance that died while
/// sending, and may be taken again.
const STALE_CLAIM_MS: i64 = 10 * 60 * 1000;

/// Deliveries of one reminder tried before it is given up.
pub const MAX_REMINDER_ATTEMPTS: i64 = 12;

/// A key due a reminder: what the owner is told (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueReminder {
    pub key_id: String,
    pub name: String,
    pub display_prefix: String,
    pub owner_email: String,
    pub workspace: String,
    pub expires_at: i64,
}

/// Which reminder: a key's, `threshold_ms` before its expiry `expires_at`, on `channel`.
#[derive(Debug, Clone, Copy)]
pub struct ReminderId<'a> {
    pub key_id: &'a str,
    pub threshold_ms: i64,
    pub channel: &'a str,
    pub expires_at: i64,
}

impl Store {
    /// Active keys that expire after `now + after_ms` and within `now + threshold_ms`, whose
    /// reminder for this threshold and channel is neither sent, nor being sent, nor waiting to
    /// be tried again, nor given up: soonest first, at most `limit`. A key whose whole life is
    /// shorter than the threshold is never reminded (its owner chose that expiry a moment
    /// ago). `after_ms` is the next smaller threshold: a key already within it gets that one
    /// only, not both at once.
    pub async fn keys_due_reminder(
        &self,
        now: i64,
        (after_ms, threshold_ms): (i64, i64),
        channel: &str,
        limit: i64,
    ) -> Result<Vec<DueReminder>, StoreError> {
        let rows = sqlx::query(
            "SELECT k.id, k.name, k.display_prefix, u.email, w.name, k.expires_at \
             FROM api_keys k JOIN users u ON u.id = k.owner_id \
             JOIN workspaces w ON w.id = k.workspace_id \
             WHERE k.revoked_at IS NULL AND k.expires_at IS NOT NULL \
             AND k.expires_at > $1 + $2 AND k.expires_at <= $1 + $3 \
             AND k.created_at <= k.expires_at - $3 \
             AND NOT EXISTS (SELECT 1 FROM key_reminders r WHERE r.key_id = k.id \
                 AND r.threshold_secs = $4 AND r.channel = $5 AND r.expires_at = k.expires_at \
                 AND (r.sent_at IS NOT NULL OR r.attempts >= $6 OR r.next_try_at > $1 \
                      OR (r.claim IS NOT NULL AND r.claimed_at > $1 - $7))) \
             ORDER BY k.expires_at LIMIT $8",
        )
        .bind(now)
        .bind(after_ms)
        .bind(threshold_ms)
        .bind(threshold_ms / 1000)
        .bind(channel)
        .bind(MAX_REMINDER_ATTEMPTS)
        .bind(STALE_CLAIM_MS)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| DueReminder {
                key_id: r.get(0),
                name: r.get(1),
                display_prefix: r.get(2),
                owner_email: r.get(3),
                workspace: r.get(4),
                expires_at: r.get(5),
            })
            .collect())
    }

    /// Claims the reminder `id` for this instance under `claim` (a random id) at `now`: true
    /// when it is this instance's to send; false when it went out, is being sent elsewhere,
    /// waits for its next try, or was given up.
    pub async fn claim_reminder(
        &self,
        id: ReminderId<'_>,
        claim: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO key_reminders \
             (key_id, threshold_secs, channel, expires_at, claim, claimed_at) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (key_id, threshold_secs, channel, expires_at) DO UPDATE \
             SET claim = excluded.claim, claimed_at = excluded.claimed_at \
             WHERE key_reminders.sent_at IS NULL AND key_reminders.attempts < $7 \
             AND key_reminders.next_try_at <= $6 \
             AND (key_reminders.claim IS NULL OR key_reminders.claimed_at <= $6 - $8)",
        )
        .bind(id.key_id)
        .bind(id.threshold_ms / 1000)
        .bind(id.channel)
        .bind(id.expires_at)
        .bind(claim)
        .bind(now)
        .bind(MAX_REMINDER_ATTEMPTS)
        .bind(STALE_CLAIM_MS)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records that the reminder went out, if `claim` still holds it.
    pub async fn reminder_sent(
        &self,
        id: ReminderId<'_>,
        claim: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE key_reminders SET sent_at = $6, claim = NULL \
             WHERE key_id = $1 AND threshold_secs = $2 AND channel = $3 AND expires_at = $4 \
             AND claim = $5",
        )
        .bind(id.key_id)
        .bind(id.threshold_ms / 1000)
        .bind(id.channel)
        .bind(id.expires_at)
        .bind(claim)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives up `claim` on a reminder whose delivery failed: the next try waits
    /// `backoff_ms` times the square of the attempts made, and after
    /// [`MAX_REMINDER_ATTEMPTS`] there is none.
    pub async fn reminder_failed(
        &self,
        id: ReminderId<'_>,
        claim: &str,
        now: i64,
        backoff_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE key_reminders SET claim = NULL, attempts = attempts + 1, \
             next_try_at = $6 + $7 * (attempts + 1) * (attempts + 1) \
             WHERE key_id = $1 AND threshold_secs = $2 AND channel = $3 AND expires_at = $4 \
             AND claim = $5",
        )
        .bind(id.key_id)
        .bind(id.threshold_ms / 1000)
        .bind(id.channel)
        .bind(id.expires_at)
        .bind(claim)
        .bind(now)
        .bind(backoff_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with one key of `expires_at`, created long before.
    async fn store_with_key(expires_at: i64) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("k.db").display());
        let store = Store::open(&url, 2).await.unwrap();
        for sql in [
            "INSERT INTO workspaces (id, name, created_at) VALUES ('w', 'acme', 0)",
            "INSERT INTO users (id, email, password_hash, created_at) VALUES ('u', 'ada@example.com', 'x', 0)",
            "INSERT INTO api_keys (id, name, owner_id, workspace_id, display_prefix, secret_hash, \
             scopes, created_at, expires_at, updated_at) \
             VALUES ('k', 'backup', 'u', 'w', 'kg_abcdefghi', 'h', '[\"read\"]', 0, $1, 0)",
        ] {
            sqlx::query(sql)
                .bind(expires_at)
                .execute(&store.pool)
                .await
                .unwrap();
        }
        (dir, store)
    }

    #[tokio::test]
    async fn one_claim_wins_a_failure_waits_and_a_stale_claim_is_retaken() {
        const DAY: i64 = 86_400_000;
        let now = 100 * DAY;
        let (_dir, store) = store_with_key(now + 3 * DAY).await;
        let range = (0, 7 * DAY);
        let due = store
            .keys_due_reminder(now, range, "email", 10)
            .await
            .unwrap();
        assert_eq!(due.len(), 1);
        let id = ReminderId {
            key_id: "k",
            threshold_ms: 7 * DAY,
            channel: "email",
            expires_at: now + 3 * DAY,
        };
        // Two instances claim at once: one wins; the claimed reminder is not due meanwhile.
        assert!(store.claim_reminder(id, "a", now).await.unwrap());
        assert!(!store.claim_reminder(id, "b", now + 1).await.unwrap());
        assert!(store
            .keys_due_reminder(now + 1, range, "email", 10)
            .await
            .unwrap()
            .is_empty());
        // A failure recorded under someone else's claim changes nothing.
        store.reminder_failed(id, "b", now + 2, 1000).await.unwrap();
        assert!(!store.claim_reminder(id, "c", now + 3).await.unwrap());
        // The holder's failure: due again only after the backoff.
        store.reminder_failed(id, "a", now + 4, 1000).await.unwrap();
        assert!(!store.claim_reminder(id, "c", now + 5).await.unwrap());
        assert!(store.claim_reminder(id, "c", now + 4 + 1000).await.unwrap());
        // Claim "c" dies with its instance: retaken once it is stale, then sent, then never
        // due again, on this or another channel's claim.
        assert!(!store.claim_reminder(id, "d", now + 5000).await.unwrap());
        let later = now + 4 + 1000 + STALE_CLAIM_MS;
        assert!(store.claim_reminder(id, "d", later).await.unwrap());
        // "c" comes back and says it sent: it no longer holds the claim, nothing is recorded.
        store.reminder_sent(id, "c", later).await.unwrap();
        assert!(!store.claim_reminder(id, "e", later + 1).await.unwrap());
        store.reminder_sent(id, "d", later + 1).await.unwrap();
        assert!(store
            .keys_due_reminder(later + 2 * STALE_CLAIM_MS, range, "email", 10)
            .await
            .unwrap()
            .is_empty());
        assert!(!store
            .claim_reminder(id, "f", later + 3 * STALE_CLAIM_MS)
            .await
            .unwrap());
        // A key already within a smaller threshold is not due for this one.
        assert!(store
            .keys_due_reminder(now, (4 * DAY, 7 * DAY), "webhook", 10)
            .await
            .unwrap()
            .is_empty());
    }
}
