//! Logins' tokens and the JWT signing keys: every query about them.

use std::str::FromStr;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::directory::role as role_of;
use super::{json_text, new_id, Store, StoreError};
use crate::clock::now_millis;
use crate::model::{Grant, Role};

/// What a token row stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// A 30-day JWT for a mobile client.
    Mobile,
    /// A 10-minute JWT issued with a refresh token.
    Access,
    /// An opaque refresh token; each is exchanged once.
    Refresh,
    /// A browser session behind a cookie.
    Session,
    /// A JWT minted by a signed-in user with a permission list.
    Scoped,
    /// A JWT of a configured external issuer, recorded when first seen.
    External,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Mobile => "mobile",
            TokenKind::Access => "access",
            TokenKind::Refresh => "refresh",
            TokenKind::Session => "session",
            TokenKind::Scoped => "scoped",
            TokenKind::External => "external",
        }
    }
}

impl FromStr for TokenKind {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<TokenKind, StoreError> {
        Ok(match s {
            "mobile" => TokenKind::Mobile,
            "access" => TokenKind::Access,
            "refresh" => TokenKind::Refresh,
            "session" => TokenKind::Session,
            "scoped" => TokenKind::Scoped,
            "external" => TokenKind::External,
            other => {
                return Err(StoreError::Invalid(format!(
                    "stored token kind '{other}' is unknown"
                )))
            }
        })
    }
}

/// A token as stored (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub id: String,
    pub kind: TokenKind,
    pub family_id: String,
    pub user_id: String,
    pub user_email: String,
    pub workspace_id: String,
    pub workspace: String,
    pub label: Option<String>,
    /// Scoped tokens only.
    pub scopes: Option<Vec<String>>,
    /// Scoped tokens only; `None`: every provider.
    pub grants: Option<Vec<Grant>>,
    pub created_at: i64,
    pub expires_at: i64,
    pub last_used_at: Option<i64>,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub generation: i64,
    /// The user's role in the token's workspace, if still a member.
    pub role: Option<Role>,
}

impl TokenRecord {
    /// Usable now: not revoked, not expired, and (for a refresh token) not exchanged yet.
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at > now_ms && self.used_at.is_none()
    }
}

/// What a new token row is made of.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// A fixed id (external tokens, recorded idempotently); otherwise a new one.
    pub id: Option<String>,
    pub kind: TokenKind,
    /// The family to join; `None` starts a new one named after the token.
    pub family_id: Option<String>,
    pub user_id: String,
    pub workspace_id: String,
    pub label: Option<String>,
    pub secret_hash: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub grants: Option<Vec<Grant>>,
    pub expires_at: i64,
}

/// A signing key as stored: its private half sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyRow {
    pub kid: String,
    pub alg: String,
    pub public_key: String,
    pub sealed_key: String,
    pub created_at: i64,
    pub rotated_at: Option<i64>,
    pub retire_at: Option<i64>,
}

/// What exchanging a refresh token came to.
#[derive(Debug)]
pub enum Exchange {
    /// The old token is spent; here are the new access and refresh rows.
    Rotated {
        access: Box<TokenRecord>,
        refresh: Box<TokenRecord>,
    },
    /// The token was already exchanged: its family has been revoked.
    Reused { revoked: Vec<(String, i64)> },
    /// Expired, revoked, or its owner left the workspace.
    Refused,
}

const TOKEN_COLUMNS: &str = "t.id, t.kind, t.family_id, t.user_id, u.email, t.workspace_id, \
     w.name, t.label, t.scopes, t.providers, t.created_at, t.expires_at, t.last_used_at, \
     t.used_at, t.revoked_at, t.generation, m.role";

const TOKEN_FROM: &str = "auth_tokens t JOIN users u ON u.id = t.user_id \
     JOIN workspaces w ON w.id = t.workspace_id \
     LEFT JOIN memberships m ON m.workspace_id = t.workspace_id AND m.user_id = t.user_id";

fn token_row(r: &AnyRow) -> Result<TokenRecord, StoreError> {
    let kind: String = r.get(1);
    let scopes: Option<String> = r.get(8);
    let providers: Option<String> = r.get(9);
    let role: Option<String> = r.get(16);
    Ok(TokenRecord {
        id: r.get(0),
        kind: kind.parse()?,
        family_id: r.get(2),
        user_id: r.get(3),
        user_email: r.get(4),
        workspace_id: r.get(5),
        workspace: r.get(6),
        label: r.get(7),
        scopes: scopes
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| StoreError::Invalid(format!("stored scopes are corrupt: {e}")))?,
        grants: providers
            .map(|p| serde_json::from_str(&p))
            .transpose()
            .map_err(|e| StoreError::Invalid(format!("stored grants are corrupt: {e}")))?,
        created_at: r.get(10),
        expires_at: r.get(11),
        last_used_at: r.get(12),
        used_at: r.get(13),
        revoked_at: r.get(14),
        generation: r.get(15),
        role: role.as_deref().map(role_of).transpose()?,
    })
}

fn signing_key_row(r: &AnyRow) -> SigningKeyRow {
    SigningKeyRow {
        kid: r.get(0),
        alg: r.get(1),
        public_key: r.get(2),
        sealed_key: r.get(3),
        created_at: r.get(4),
        rotated_at: r.get(5),
        retire_at: r.get(6),
    }
}

pub(super) async fn insert_token_in(
    tx: &mut sqlx::AnyConnection,
    t: &NewToken,
    now: i64,
) -> Result<String, StoreError> {
    let id = t.id.clone().unwrap_or_else(new_id);
    let family = t.family_id.clone().unwrap_or_else(|| id.clone());
    sqlx::query(
        "INSERT INTO auth_tokens (id, kind, family_id, user_id, workspace_id, label, secret_hash, \
         scopes, providers, created_at, expires_at, last_used_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $10, $10) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&id)
    .bind(t.kind.as_str())
    .bind(&family)
    .bind(&t.user_id)
    .bind(&t.workspace_id)
    .bind(&t.label)
    .bind(&t.secret_hash)
    .bind(t.scopes.as_ref().map(json_text))
    .bind(t.grants.as_ref().map(json_text))
    .bind(now)
    .bind(t.expires_at)
    .execute(&mut *tx)
    .await?;
    Ok(id)
}

impl Store {
    /// Records a token (idempotent for a fixed id) and returns its row.
    /// Inserts a scoped token unless its user already holds `limit` live ones: the count and
    /// the insert are one transaction holding the user's row, like keys.
    pub async fn insert_scoped_token(
        &self,
        t: &NewToken,
        limit: u32,
    ) -> Result<TokenRecord, StoreError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE users SET generation = generation WHERE id = $1")
            .bind(&t.user_id)
            .execute(&mut *tx)
            .await?;
        let live: i64 = sqlx::query(
            "SELECT COUNT(*) FROM auth_tokens WHERE user_id = $1 AND kind = 'scoped' \
             AND family_id = id AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(&t.user_id)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        if live >= i64::from(limit) {
            return Err(StoreError::Conflict(format!(
                "you already hold {live} scoped tokens, the most allowed; revoke one first"
            )));
        }
        let id = insert_token_in(&mut tx, t, now).await?;
        tx.commit().await?;
        self.token(&id).await
    }

    pub async fn insert_token(&self, t: &NewToken) -> Result<TokenRecord, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let id = insert_token_in(&mut conn, t, now_millis()).await?;
        drop(conn);
        self.token(&id).await
    }

    pub async fn token(&self, id: &str) -> Result<TokenRecord, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM {TOKEN_FROM} WHERE t.id = $1");
        self.fetch_row(&sql, id, token_row)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no token with id '{id}'")))
    }

    /// The token whose secret's keyed hash is `secret_hash`, with the stored hash for a
    /// constant-time comparison.
    pub async fn token_by_secret(
        &self,
        secret_hash: &str,
    ) -> Result<Option<(TokenRecord, String)>, StoreError> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS}, t.secret_hash FROM {TOKEN_FROM} WHERE t.secret_hash = $1"
        );
        self.fetch_row(&sql, secret_hash, |r| {
            Ok((token_row(r)?, r.get("secret_hash")))
        })
        .await
    }

    /// A user's tokens, newest first.
    pub async fn user_tokens(&self, user_id: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM {TOKEN_FROM} WHERE t.user_id = $1 \
             ORDER BY t.created_at DESC, t.id DESC"
        );
        let rows = sqlx::query(&sql)
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(token_row).collect()
    }

    /// Exchanges the refresh token `id` for `access` and `refresh` (joining its family), in
    /// one transaction. A token already exchanged is reuse: its family is revoked.
    pub async fn exchange_refresh(
        &self,
        id: &str,
        access: &NewToken,
        refresh: &NewToken,
    ) -> Result<Exchange, StoreError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        let spent = sqlx::query(
            "UPDATE auth_tokens SET used_at = $1, updated_at = $1 WHERE id = $2 \
             AND kind = 'refresh' AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if spent.rows_affected() == 1 {
            let member: Option<AnyRow> = sqlx::query(
                "SELECT m.role FROM auth_tokens t JOIN memberships m \
                 ON m.workspace_id = t.workspace_id AND m.user_id = t.user_id WHERE t.id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            if member.is_none() {
                tx.commit().await?;
                return Ok(Exchange::Refused);
            }
            // An application's grant goes on only while the application is registered. The
            // guard takes the client's row, so a removal waits for this exchange (and then
            // revokes what it issued) or this exchange sees the removal.
            let client: Option<String> = sqlx::query(
                "SELECT g.client_id FROM oauth_grants g JOIN auth_tokens t \
                 ON t.family_id = g.family_id WHERE t.id = $1",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.get(0));
            if let Some(client) = client {
                let live = sqlx::query(
                    "UPDATE oauth_clients SET name = name WHERE id = $1 AND revoked_at IS NULL",
                )
                .bind(&client)
                .execute(&mut *tx)
                .await?;
                if live.rows_affected() == 0 {
                    tx.commit().await?;
                    return Ok(Exchange::Refused);
                }
            }
            let a = insert_token_in(&mut tx, access, now).await?;
            let r = insert_token_in(&mut tx, refresh, now).await?;
            tx.commit().await?;
            return Ok(Exchange::Rotated {
                access: Box::new(self.token(&a).await?),
                refresh: Box::new(self.token(&r).await?),
            });
        }
        let row =
            sqlx::query("SELECT used_at, revoked_at, family_id FROM auth_tokens WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        tx.commit().await?;
        match row {
            // Spent already: whoever presents it now holds a copy. A token that was revoked
            // without being spent is merely refused.
            Some(r) if r.get::<Option<i64>, _>(0).is_some() => {
                let family: String = r.get(2);
                Ok(Exchange::Reused {
                    revoked: self.revoke_family(&family).await?,
                })
            }
            _ => Ok(Exchange::Refused),
        }
    }

    /// Revokes every token of a family; returns (id, generation) of each, for the caches.
    pub async fn revoke_family(&self, family_id: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let now = now_millis();
        sqlx::query(
            "UPDATE auth_tokens SET revoked_at = $1, generation = generation + 1, updated_at = $1 \
             WHERE family_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(family_id)
        .execute(&self.pool)
        .await?;
        let rows = sqlx::query("SELECT id, generation FROM auth_tokens WHERE family_id = $1")
            .bind(family_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Notes that a token was used (at most once per cache fill, not per request).
    pub async fn touch_token(&self, id: &str, at_ms: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE auth_tokens SET last_used_at = $1 WHERE id = $2 \
             AND (last_used_at IS NULL OR last_used_at < $1)",
        )
        .bind(at_ms)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes tokens that expired more than `grace_ms` ago (the table does not grow forever).
    pub async fn purge_expired_tokens(&self, grace_ms: i64) -> Result<u64, StoreError> {
        let before = now_millis() - grace_ms;
        let purged = sqlx::query("DELETE FROM auth_tokens WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        // What OAuth leaves behind: codes long expired, grants whose tokens are all gone.
        sqlx::query("DELETE FROM oauth_codes WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "DELETE FROM oauth_grants WHERE NOT EXISTS \
             (SELECT 1 FROM auth_tokens t WHERE t.family_id = oauth_grants.family_id)",
        )
        .execute(&self.pool)
        .await?;
        Ok(purged)
    }

    /// Every signing key that still verifies, newest first.
    pub async fn signing_keys(&self) -> Result<Vec<SigningKeyRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, alg, public_key, sealed_key, created_at, rotated_at, retire_at \
             FROM signing_keys WHERE retire_at IS NULL OR retire_at > $1 \
             ORDER BY created_at DESC, kid DESC",
        )
        .bind(now_millis())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(signing_key_row).collect())
    }

    /// Adds a signing key that takes over signing; the keys it replaces keep verifying until
    /// `retire_after_ms` from now (the longest a token they signed can live).
    pub async fn add_signing_key(
        &self,
        key: &SigningKeyRow,
        retire_after_ms: i64,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE signing_keys SET rotated_at = $1, retire_at = $2 WHERE rotated_at IS NULL",
        )
        .bind(now)
        .bind(now + retire_after_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, public_key, sealed_key, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(&key.public_key)
        .bind(&key.sealed_key)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
