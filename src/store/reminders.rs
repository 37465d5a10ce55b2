//! Key expiry reminders: which keys are due one, and the claim that makes each go out once
//! (per key, threshold and channel) whatever restarts or other instances do.

use sqlx::Row;

use super::{Store, StoreError};

/// A claim not marked sent after this long is taken to be from an instance that died while
/// sending, and may be taken again.
const STALE_CLAIM_MS: i64 = 10 * 60 * 1000;

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

impl Store {
    /// Active keys that expire within `threshold_ms` of `now` and have not had this
    /// threshold's reminder on `channel`, soonest first, at most `limit`. A key whose whole
    /// life is shorter than the threshold is never reminded: its owner chose that expiry a
    /// moment ago.
    pub async fn keys_due_reminder(
        &self,
        now: i64,
        threshold_ms: i64,
        channel: &str,
        limit: i64,
    ) -> Result<Vec<DueReminder>, StoreError> {
        let rows = sqlx::query(
            "SELECT k.id, k.name, k.display_prefix, u.email, w.name, k.expires_at \
             FROM api_keys k JOIN users u ON u.id = k.owner_id \
             JOIN workspaces w ON w.id = k.workspace_id \
             WHERE k.revoked_at IS NULL AND k.expires_at IS NOT NULL \
             AND k.expires_at > $1 AND k.expires_at <= $1 + $2 \
             AND k.created_at <= k.expires_at - $2 \
             AND NOT EXISTS (SELECT 1 FROM key_reminders r WHERE r.key_id = k.id \
                 AND r.threshold_secs = $3 AND r.channel = $4 \
                 AND (r.sent_at IS NOT NULL OR r.claimed_at > $1 - $5)) \
             ORDER BY k.expires_at LIMIT $6",
        )
        .bind(now)
        .bind(threshold_ms)
        .bind(threshold_ms / 1000)
        .bind(channel)
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

    /// Claims the reminder (key, threshold, channel) for this instance: true when it is this
    /// instance's to send, false when it went out already or another instance is sending it.
    pub async fn claim_reminder(
        &self,
        key_id: &str,
        threshold_ms: i64,
        channel: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO key_reminders (key_id, threshold_secs, channel, claimed_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (key_id, threshold_secs, channel) DO UPDATE \
             SET claimed_at = excluded.claimed_at \
             WHERE key_reminders.sent_at IS NULL AND key_reminders.claimed_at <= $4 - $5",
        )
        .bind(key_id)
        .bind(threshold_ms / 1000)
        .bind(channel)
        .bind(now)
        .bind(STALE_CLAIM_MS)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records that the claimed reminder went out.
    pub async fn reminder_sent(
        &self,
        key_id: &str,
        threshold_ms: i64,
        channel: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE key_reminders SET sent_at = $4 \
             WHERE key_id = $1 AND threshold_secs = $2 AND channel = $3",
        )
        .bind(key_id)
        .bind(threshold_ms / 1000)
        .bind(channel)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives up a claim whose sending failed, so that the next check tries again.
    pub async fn release_reminder(
        &self,
        key_id: &str,
        threshold_ms: i64,
        channel: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM key_reminders \
             WHERE key_id = $1 AND threshold_secs = $2 AND channel = $3 AND sent_at IS NULL",
        )
        .bind(key_id)
        .bind(threshold_ms / 1000)
        .bind(channel)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
