//! OAuth 2.0: registered applications (clients), the one-time codes of an approval, and the
//! token families issued to each client (so that removing a client ends every grant).

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{json_text, new_id, NewToken, Store, StoreError, TokenRecord};
use crate::clock::now_millis;
use crate::model::Grant;

/// Most applications one workspace may register.
pub const MAX_CLIENTS_PER_WORKSPACE: i64 = 100;

/// Most codes one user's approvals may have waiting for their exchange (a code lives a
/// minute).
pub const MAX_PENDING_CODES: i64 = 20;

/// A registered application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthClient {
    pub id: String,
    pub workspace_id: String,
    pub workspace: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// What an approval produced, to be exchanged once for tokens.
#[derive(Debug, Clone)]
pub struct NewCode {
    pub code_hash: String,
    pub client_id: String,
    pub user_id: String,
    pub workspace_id: String,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub grants: Option<Vec<Grant>>,
    pub code_challenge: String,
    pub expires_at: i64,
}

/// The outcome of presenting a code.
#[derive(Debug)]
pub enum CodeUse {
    /// First use, within its life: the approval it stands for.
    Fresh(NewCode),
    /// Presented before: whoever holds it now is not (only) the application. The tokens it
    /// was exchanged for are revoked: (id, generation) of each.
    Replayed(Vec<(String, i64)>),
    /// Unknown or expired.
    Invalid,
}

const CLIENT_COLUMNS: &str = "c.id, c.workspace_id, w.name, c.name, c.redirect_uris, \
     c.created_at, c.revoked_at";

fn client_row(r: &AnyRow) -> Result<OAuthClient, StoreError> {
    let uris: String = r.get(4);
    Ok(OAuthClient {
        id: r.get(0),
        workspace_id: r.get(1),
        workspace: r.get(2),
        name: r.get(3),
        redirect_uris: serde_json::from_str(&uris)
            .map_err(|e| StoreError::Invalid(format!("stored redirect URIs are corrupt: {e}")))?,
        created_at: r.get(5),
        revoked_at: r.get(6),
    })
}

impl Store {
    /// Registers an application in a workspace, unless it has [`MAX_CLIENTS_PER_WORKSPACE`]
    /// already (count and insert in one transaction holding the workspace's row).
    pub async fn create_client(
        &self,
        workspace_id: &str,
        name: &str,
        redirect_uris: &[String],
    ) -> Result<OAuthClient, StoreError> {
        let now = now_millis();
        let id = format!("kgc_{}", uuid::Uuid::new_v4().simple());
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE workspaces SET name = name WHERE id = $1")
            .bind(workspace_id)
            .execute(&mut *tx)
            .await?;
        let live: i64 = sqlx::query(
            "SELECT COUNT(*) FROM oauth_clients WHERE workspace_id = $1 AND revoked_at IS NULL",
        )
        .bind(workspace_id)
        .fetch_one(&mut *tx)
        .await?
        .get(0);
        if live >= MAX_CLIENTS_PER_WORKSPACE {
            return Err(StoreError::Conflict(format!(
                "the workspace has {live} applications, the most allowed; remove one first"
            )));
        }
        sqlx::query(
            "INSERT INTO oauth_clients (id, workspace_id, name, redirect_uris, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(workspace_id)
        .bind(name)
        .bind(json_text(&redirect_uris))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.client(&id)
            .await?
            .ok_or_else(|| StoreError::NotFound("the new client".to_owned()))
    }

    /// A registered application (revoked ones too), by its client_id.
    pub async fn client(&self, id: &str) -> Result<Option<OAuthClient>, StoreError> {
        let sql = format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients c JOIN workspaces w \
             ON w.id = c.workspace_id WHERE c.id = $1"
        );
        self.fetch_row(&sql, id, client_row).await
    }

    /// A workspace's applications that are not removed, oldest first.
    pub async fn clients(&self, workspace_id: &str) -> Result<Vec<OAuthClient>, StoreError> {
        let sql = format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients c JOIN workspaces w \
             ON w.id = c.workspace_id WHERE c.workspace_id = $1 AND c.revoked_at IS NULL \
             ORDER BY c.created_at, c.id"
        );
        let rows = sqlx::query(&sql)
            .bind(workspace_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(client_row).collect()
    }

    /// Removes an application: no new approval, no code exchanged, and every token family
    /// issued to it revoked, in one transaction that first takes the client's row (an exchange
    /// or a refresh in flight either finishes first and is revoked here, or sees the removal).
    /// Returns (id, generation) of each token revoked, for the caches.
    pub async fn revoke_client(&self, id: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let now = now_millis();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE oauth_clients SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let revoked: Vec<(String, i64)> = sqlx::query(
            "SELECT id, generation + 1 FROM auth_tokens WHERE revoked_at IS NULL \
             AND family_id IN (SELECT family_id FROM oauth_grants WHERE client_id = $1)",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
        sqlx::query(
            "UPDATE auth_tokens SET revoked_at = $1, generation = generation + 1, updated_at = $1 \
             WHERE revoked_at IS NULL \
             AND family_id IN (SELECT family_id FROM oauth_grants WHERE client_id = $2)",
        )
        .bind(now)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(revoked)
    }

    /// The application a token family was issued to, if it was.
    pub async fn grant_client(&self, family_id: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query("SELECT client_id FROM oauth_grants WHERE family_id = $1")
                .bind(family_id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.get(0)),
        )
    }

    /// Records the code of an approval, unless the user has [`MAX_PENDING_CODES`] codes
    /// waiting for their exchange already.
    pub async fn insert_code(&self, c: &NewCode) -> Result<(), StoreError> {
        let pending: i64 = sqlx::query(
            "SELECT COUNT(*) FROM oauth_codes WHERE user_id = $1 AND used_at IS NULL \
             AND expires_at > $2",
        )
        .bind(&c.user_id)
        .bind(now_millis())
        .fetch_one(&self.pool)
        .await?
        .get(0);
        if pending >= MAX_PENDING_CODES {
            return Err(StoreError::Conflict(
                "too many approvals wait for their application; try again in a minute".into(),
            ));
        }
        sqlx::query(
            "INSERT INTO oauth_codes (code_hash, client_id, user_id, workspace_id, redirect_uri, \
             scopes, providers, code_challenge, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&c.code_hash)
        .bind(&c.client_id)
        .bind(&c.user_id)
        .bind(&c.workspace_id)
        .bind(&c.redirect_uri)
        .bind(json_text(&c.scopes))
        .bind(c.grants.as_ref().map(json_text))
        .bind(&c.code_challenge)
        .bind(c.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Spends the code whose keyed hash is `code_hash`: at most one caller ever gets
    /// [`CodeUse::Fresh`]; a second presentation revokes what the first was given.
    pub async fn use_code(&self, code_hash: &str) -> Result<CodeUse, StoreError> {
        let now = now_millis();
        let spent = sqlx::query(
            "UPDATE oauth_codes SET used_at = $1 WHERE code_hash = $2 AND used_at IS NULL \
             AND expires_at > $1",
        )
        .bind(now)
        .bind(code_hash)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(
            "SELECT client_id, user_id, workspace_id, redirect_uri, scopes, providers, \
             code_challenge, expires_at, family_id FROM oauth_codes WHERE code_hash = $1",
        )
        .bind(code_hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(CodeUse::Invalid);
        };
        if spent.rows_affected() == 1 {
            let scopes: String = r.get(4);
            let providers: Option<String> = r.get(5);
            return Ok(CodeUse::Fresh(NewCode {
                code_hash: code_hash.to_owned(),
                client_id: r.get(0),
                user_id: r.get(1),
                workspace_id: r.get(2),
                redirect_uri: r.get(3),
                scopes: serde_json::from_str(&scopes)
                    .map_err(|e| StoreError::Invalid(format!("stored scopes are corrupt: {e}")))?,
                grants: providers
                    .map(|p| serde_json::from_str(&p))
                    .transpose()
                    .map_err(|e| StoreError::Invalid(format!("stored grants are corrupt: {e}")))?,
                code_challenge: r.get(6),
                expires_at: r.get(7),
            }));
        }
        let expired = r.get::<i64, _>(7) <= now;
        let family: Option<String> = r.get(8);
        match family {
            Some(family) => Ok(CodeUse::Replayed(self.revoke_family(&family).await?)),
            None if expired => Ok(CodeUse::Invalid),
            // Spent, its exchange not finished (or failed): marked, so that an exchange still
            // running fails too.
            None => {
                let marked = sqlx::query(
                    "UPDATE oauth_codes SET replayed_at = $1 WHERE code_hash = $2 \
                     AND family_id IS NULL",
                )
                .bind(now)
                .bind(code_hash)
                .execute(&self.pool)
                .await?;
                if marked.rows_affected() == 1 {
                    return Ok(CodeUse::Replayed(Vec::new()));
                }
                // The exchange finished meanwhile: revoke what it issued.
                let family: Option<String> =
                    sqlx::query("SELECT family_id FROM oauth_codes WHERE code_hash = $1")
                        .bind(code_hash)
                        .fetch_optional(&self.pool)
                        .await?
                        .and_then(|r| r.get(0));
                match family {
                    Some(family) => Ok(CodeUse::Replayed(self.revoke_family(&family).await?)),
                    None => Ok(CodeUse::Replayed(Vec::new())),
                }
            }
        }
    }

    /// Issues the tokens of an exchanged code (a refresh token and its first access token,
    /// one family), records the family as the client's grant and on the code, in one
    /// transaction. Returns (access, refresh).
    pub async fn issue_grant(
        &self,
        code_hash: &str,
        client_id: &str,
        refresh: &NewToken,
        access: &NewToken,
    ) -> Result<(TokenRecord, TokenRecord), StoreError> {
        let now = now_millis();
        let family = new_id();
        let mut tx = self.pool.begin().await?;
        // The client still registered (its row taken, see `revoke_client`), and the code not
        // presented a second time meanwhile.
        let live = sqlx::query(
            "UPDATE oauth_clients SET name = name WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(client_id)
        .execute(&mut *tx)
        .await?;
        let claimed = sqlx::query(
            "UPDATE oauth_codes SET family_id = $1 WHERE code_hash = $2 AND replayed_at IS NULL",
        )
        .bind(&family)
        .bind(code_hash)
        .execute(&mut *tx)
        .await?;
        if live.rows_affected() == 0 || claimed.rows_affected() == 0 {
            return Err(StoreError::Conflict(
                "the application was removed, or the code was presented twice".into(),
            ));
        }
        let refresh = NewToken {
            id: Some(family.clone()),
            family_id: Some(family.clone()),
            ..refresh.clone()
        };
        let access = NewToken {
            family_id: Some(family.clone()),
            ..access.clone()
        };
        let r = super::tokens::insert_token_in(&mut tx, &refresh, now).await?;
        let a = super::tokens::insert_token_in(&mut tx, &access, now).await?;
        sqlx::query(
            "INSERT INTO oauth_grants (family_id, client_id, user_id, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&family)
        .bind(client_id)
        .bind(&refresh.user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((self.token(&a).await?, self.token(&r).await?))
    }
}
