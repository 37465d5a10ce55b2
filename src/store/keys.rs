//! API keys as stored (never their secrets) and their usage counts.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{json_text, new_id, Store, StoreError};
use crate::clock::now_millis;
use crate::model::{Grant, Role};

use super::directory::role as role_of;

/// An API key as stored (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    pub owner_id: String,
    pub owner_email: String,
    pub workspace_id: String,
    pub workspace: String,
    pub display_prefix: String,
    pub scopes: Vec<String>,
    /// `None`: every provider.
    pub grants: Option<Vec<Grant>>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Set when keygate revoked the key itself, and why.
    pub revoked_reason: Option<String>,
    pub generation: i64,
    /// The owner's role in the key's workspace, if still a member.
    pub role: Option<Role>,
}

/// What a new key is made of.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub owner_id: String,
    pub workspace_id: String,
    pub display_prefix: String,
    pub secret_hash: String,
    pub scopes: Vec<String>,
    pub grants: Option<Vec<Grant>>,
    pub expires_at: Option<i64>,
    pub rotated_from: Option<String>,
}

/// Changes to a key; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct KeyChanges {
    pub name: Option<String>,
    pub scopes: Option<Vec<String>>,
    /// `Some(None)`: every provider.
    pub grants: Option<Option<Vec<Grant>>>,
    /// `Some(None)`: never expires.
    pub expires_at: Option<Option<i64>>,
}

/// One day of a key's usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageDay {
    pub day: String,
    pub requests: i64,
    pub denied: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
}

const KEY_COLUMNS: &str = "k.id, k.name, k.owner_id, u.email, k.workspace_id, w.name, \
     k.display_prefix, k.scopes, k.providers, k.created_at, k.expires_at, k.last_used_at, \
     k.revoked_at, k.generation, m.role, k.revoked_reason";

const KEY_FROM: &str = "api_keys k JOIN users u ON u.id = k.owner_id \
     JOIN workspaces w ON w.id = k.workspace_id \
     LEFT JOIN memberships m ON m.workspace_id = k.workspace_id AND m.user_id = k.owner_id";

fn key_row(r: &AnyRow) -> Result<KeyRecord, StoreError> {
    let scopes: String = r.get(7);
    let providers: Option<String> = r.get(8);
    let role: Option<String> = r.get(14);
    Ok(KeyRecord {
        id: r.get(0),
        name: r.get(1),
        owner_id: r.get(2),
        owner_email: r.get(3),
        workspace_id: r.get(4),
        workspace: r.get(5),
        display_prefix: r.get(6),
        scopes: serde_json::from_str(&scopes)
            .map_err(|e| StoreError::Invalid(format!("stored scopes are corrupt: {e}")))?,
        grants: providers
            .map(|p| serde_json::from_str(&p))
            .transpose()
            .map_err(|e| StoreError::Invalid(format!("stored grants are corrupt: {e}")))?,
        created_at: r.get(9),
        expires_at: r.get(10),
        last_used_at: r.get(11),
        revoked_at: r.get(12),
        revoked_reason: r.get(15),
        generation: r.get(13),
        role: role.as_deref().map(role_of).transpose()?,
    })
}

impl Store {
    /// Inserts a key unless its owner already has `limit` active keys; the count and the
    /// insert are one transaction holding the owner's row, so concurrent creates cannot pass
    /// the limit together. With `revoke` set (rotation), that key is revoked in the same
    /// transaction (or the call fails with a conflict, when another rotation or revoke came
    /// first) and the new key copies its settings as they are inside the transaction.
    pub async fn insert_key(
        &self,
        key: &NewKey,
        limit: u32,
        revoke: Option<&str>,
    ) -> Result<KeyRecord, StoreError> {
        let now = now_millis();
        let id = new_id();
        let mut tx = self.pool.begin().await?;
        // Takes the write lock on SQLite and the row lock on PostgreSQL.
        sqlx::query("UPDATE users SET generation = generation WHERE id = $1")
            .bind(&key.owner_id)
            .execute(&mut *tx)
            .await?;
        if let Some(old) = revoke {
            // Exactly one rotation wins: the one whose update finds the key still live.
            let revoked = sqlx::query(
                "UPDATE api_keys SET revoked_at = $1, generation = generation + 1, updated_at = $1 \
                 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(old)
            .execute(&mut *tx)
            .await?;
            if revoked.rows_affected() != 1 {
                return Err(StoreError::Conflict(format!(
                    "key '{old}' was revoked or rotated meanwhile"
                )));
            }
        }
        let active: i64 = sqlx::query(
            "SELECT COUNT(*) FROM api_keys WHERE owner_id = $1 AND revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(&key.owner_id)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        if active >= i64::from(limit) {
            return Err(StoreError::Conflict(format!(
                "the owner already has {active} active keys, the most allowed; revoke one first"
            )));
        }
        if let Some(old) = revoke {
            // The successor takes the settings the old key has now, read in this transaction:
            // a change made while the rotation was asked for is not lost.
            sqlx::query(
                "INSERT INTO api_keys (id, name, owner_id, workspace_id, display_prefix, \
                 secret_hash, scopes, providers, created_at, expires_at, updated_at, rotated_from) \
                 SELECT $1, name, owner_id, workspace_id, $2, $3, scopes, providers, $4, \
                 expires_at, $4, id FROM api_keys WHERE id = $5",
            )
            .bind(&id)
            .bind(&key.display_prefix)
            .bind(&key.secret_hash)
            .bind(now)
            .bind(old)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return self.key(&id).await;
        }
        sqlx::query(
            "INSERT INTO api_keys (id, name, owner_id, workspace_id, display_prefix, secret_hash, \
             scopes, providers, created_at, expires_at, updated_at, rotated_from) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $9, $11)",
        )
        .bind(&id)
        .bind(&key.name)
        .bind(&key.owner_id)
        .bind(&key.workspace_id)
        .bind(&key.display_prefix)
        .bind(&key.secret_hash)
        .bind(json_text(&key.scopes))
        .bind(key.grants.as_ref().map(json_text))
        .bind(now)
        .bind(key.expires_at)
        .bind(&key.rotated_from)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.key(&id).await
    }

    pub async fn key(&self, id: &str) -> Result<KeyRecord, StoreError> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM {KEY_FROM} WHERE k.id = $1");
        self.fetch_row(&sql, id, key_row)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no key with id '{id}'")))
    }

    /// The key whose keyed hash is `secret_hash`, with its stored hash for a constant-time
    /// comparison. One indexed lookup.
    pub async fn key_by_hash(
        &self,
        secret_hash: &str,
    ) -> Result<Option<(KeyRecord, String)>, StoreError> {
        let sql =
            format!("SELECT {KEY_COLUMNS}, k.secret_hash FROM {KEY_FROM} WHERE k.secret_hash = $1");
        self.fetch_row(&sql, secret_hash, |r| {
            Ok((key_row(r)?, r.get("secret_hash")))
        })
        .await
    }

    /// Keys, newest first, optionally of one owner and/or one workspace.
    /// Live API keys and scoped tokens (neither revoked nor expired at `now_ms`) holding a
    /// scope not in `known`: (`key` or `token`, id, those scopes), in id order.
    pub async fn credentials_with_scopes_outside(
        &self,
        known: &[String],
        now_ms: i64,
    ) -> Result<Vec<(&'static str, String, Vec<String>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT 'key', id, scopes FROM api_keys WHERE revoked_at IS NULL \
             AND (expires_at IS NULL OR expires_at > $1) \
             UNION ALL SELECT 'token', id, scopes FROM auth_tokens WHERE kind = 'scoped' \
             AND revoked_at IS NULL AND expires_at > $1 AND scopes IS NOT NULL \
             ORDER BY 2",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let kind: String = r.get(0);
            let scopes: String = r.get(2);
            let scopes: Vec<String> = serde_json::from_str(&scopes)
                .map_err(|e| StoreError::Invalid(format!("stored scopes are corrupt: {e}")))?;
            let outside: Vec<String> = scopes.into_iter().filter(|s| !known.contains(s)).collect();
            if !outside.is_empty() {
                out.push((
                    if kind == "key" { "key" } else { "token" },
                    r.get(1),
                    outside,
                ));
            }
        }
        Ok(out)
    }

    pub async fn list_keys(
        &self,
        owner_id: Option<&str>,
        workspace_id: Option<&str>,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM {KEY_FROM} WHERE ($1 = '' OR k.owner_id = $1) \
             AND ($2 = '' OR k.workspace_id = $2) ORDER BY k.created_at DESC, k.id DESC"
        );
        let rows = sqlx::query(&sql)
            .bind(owner_id.unwrap_or(""))
            .bind(workspace_id.unwrap_or(""))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(key_row).collect()
    }

    /// Applies `changes` and bumps the key's generation. Revoked keys cannot change.
    pub async fn update_key(
        &self,
        id: &str,
        changes: &KeyChanges,
    ) -> Result<KeyRecord, StoreError> {
        let current = self.key(id).await?;
        if current.revoked_at.is_some() {
            return Err(StoreError::Conflict(format!(
                "key '{id}' is revoked and cannot change"
            )));
        }
        let name = changes.name.clone().unwrap_or(current.name);
        let scopes = changes.scopes.clone().unwrap_or(current.scopes);
        let grants = changes.grants.clone().unwrap_or(current.grants);
        let expires_at = changes.expires_at.unwrap_or(current.expires_at);
        sqlx::query(
            "UPDATE api_keys SET name = $1, scopes = $2, providers = $3, expires_at = $4, \
             generation = generation + 1, updated_at = $5 WHERE id = $6 AND revoked_at IS NULL",
        )
        .bind(&name)
        .bind(json_text(&scopes))
        .bind(grants.as_ref().map(json_text))
        .bind(expires_at)
        .bind(now_millis())
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.key(id).await
    }

    /// Revokes a key for good (idempotent) and bumps its generation.
    pub async fn revoke_key(&self, id: &str) -> Result<KeyRecord, StoreError> {
        self.revoke_key_because(id, None).await
    }

    /// Revokes a key and records why (shown to its owner), when keygate revokes it itself.
    pub async fn revoke_key_because(
        &self,
        id: &str,
        reason: Option<&str>,
    ) -> Result<KeyRecord, StoreError> {
        let now = now_millis();
        sqlx::query(
            "UPDATE api_keys SET revoked_at = $1, revoked_reason = $2, \
             generation = generation + 1, updated_at = $1 \
             WHERE id = $3 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(reason)
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.key(id).await
    }

    /// Active keys that expire between now and `until_ms`.
    pub async fn count_keys_expiring(&self, until_ms: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query(
            "SELECT COUNT(*) FROM api_keys WHERE revoked_at IS NULL AND expires_at IS NOT NULL \
             AND expires_at > $1 AND expires_at <= $2",
        )
        .bind(now_millis())
        .bind(until_ms)
        .fetch_one(&self.pool)
        .await?
        .get(0))
    }

    /// Adds batched usage: one upsert per (key, day) and the newest last-used time per key.
    pub async fn add_usage(&self, batch: &[(String, UsageDay, i64)]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (key_id, u, last_used) in batch {
            sqlx::query(
                "INSERT INTO key_usage (key_id, day, requests, denied, bytes_in, bytes_out) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (key_id, day) DO UPDATE SET \
                 requests = key_usage.requests + excluded.requests, \
                 denied = key_usage.denied + excluded.denied, \
                 bytes_in = key_usage.bytes_in + excluded.bytes_in, \
                 bytes_out = key_usage.bytes_out + excluded.bytes_out",
            )
            .bind(key_id)
            .bind(&u.day)
            .bind(u.requests)
            .bind(u.denied)
            .bind(u.bytes_in)
            .bind(u.bytes_out)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $1 WHERE id = $2 \
                 AND (last_used_at IS NULL OR last_used_at < $1)",
            )
            .bind(last_used)
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn usage(&self, key_id: &str) -> Result<Vec<UsageDay>, StoreError> {
        let rows = sqlx::query(
            "SELECT day, requests, denied, bytes_in, bytes_out FROM key_usage WHERE key_id = $1 ORDER BY day",
        )
        .bind(key_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| UsageDay {
                day: r.get(0),
                requests: r.get(1),
                denied: r.get(2),
                bytes_in: r.get(3),
                bytes_out: r.get(4),
            })
            .collect())
    }
}
