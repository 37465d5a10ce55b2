//! The database: a sqlx pool over SQLite (default) or PostgreSQL, the migrations, and every
//! query. The only module that touches the database.

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

mod tokens;

pub use tokens::{Exchange, NewToken, SigningKeyRow, TokenKind, TokenRecord};

/// A workspace member's role; it caps what the member's credentials may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Editor => "editor",
            Role::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Role, StoreError> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "editor" => Ok(Role::Editor),
            "admin" => Ok(Role::Admin),
            _ => Err(StoreError::Invalid(format!(
                "'{s}' is not a role (viewer, editor or admin)"
            ))),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workspace {
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: String,
    pub email: String,
    pub display_name: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub workspace: String,
    pub email: String,
    pub role: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Provider {
    pub id: String,
    pub name: String,
    pub workspace: String,
    pub created_at: i64,
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Maps a unique-constraint violation to a conflict naming `what`.
fn conflict(e: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what()),
        _ => StoreError::Database(e),
    }
}

impl Store {
    /// Connects (creating a SQLite file on first start, in WAL mode). Does not migrate.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::Invalid(
                "the database url must start with sqlite: or postgres://".to_owned(),
            ));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 5000")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        Ok(Store { pool, backend })
    }

    /// Connects and brings the schema up to date.
    pub async fn open(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        let store = Store::connect(url, max_connections).await?;
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Migrations applied, as (version, description).
    pub async fn applied_migrations(&self) -> Result<Vec<(i64, String)>, StoreError> {
        let rows =
            sqlx::query("SELECT version, description FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<i64, _>(0), r.get::<String, _>(1)))
            .collect())
    }

    /// A cheap round trip, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub async fn add_workspace(&self, name: &str) -> Result<Workspace, StoreError> {
        check_name("workspace", name)?;
        let ws = Workspace {
            id: new_id(),
            name: name.to_owned(),
            created_at: now_millis(),
        };
        sqlx::query("INSERT INTO workspaces (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&ws.id)
            .bind(&ws.name)
            .bind(ws.created_at)
            .execute(&self.pool)
            .await
            .map_err(|e| conflict(e, || format!("a workspace named '{name}' already exists")))?;
        Ok(ws)
    }

    pub async fn list_workspaces(&self) -> Result<Vec<Workspace>, StoreError> {
        let rows = sqlx::query("SELECT id, name, created_at FROM workspaces ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(workspace_row).collect())
    }

    pub async fn workspace_by_name(&self, name: &str) -> Result<Workspace, StoreError> {
        sqlx::query("SELECT id, name, created_at FROM workspaces WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(workspace_row)
            .ok_or_else(|| StoreError::NotFound(format!("no workspace named '{name}'")))
    }

    /// Adds a user; `password_hash` is a PHC string (argon2id).
    pub async fn add_user(
        &self,
        email: &str,
        display_name: Option<&str>,
        password_hash: &str,
    ) -> Result<User, StoreError> {
        let email = normalize_email(email)?;
        let user = User {
            id: new_id(),
            email: email.clone(),
            display_name: display_name.map(str::to_owned),
            created_at: now_millis(),
        };
        sqlx::query(
            "INSERT INTO users (id, email, display_name, password_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(&user.display_name)
        .bind(password_hash)
        .bind(user.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| conflict(e, || format!("a user with email '{email}' already exists")))?;
        Ok(user)
    }

    pub async fn user_by_email(&self, email: &str) -> Result<User, StoreError> {
        let email = normalize_email(email)?;
        sqlx::query("SELECT id, email, display_name, created_at FROM users WHERE email = $1")
            .bind(&email)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user_row)
            .ok_or_else(|| StoreError::NotFound(format!("no user with email '{email}'")))
    }

    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let rows =
            sqlx::query("SELECT id, email, display_name, created_at FROM users ORDER BY email")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(user_row).collect())
    }

    /// The stored password hash of a user, for verification.
    pub async fn password_hash(&self, user_id: &str) -> Result<String, StoreError> {
        sqlx::query("SELECT password_hash FROM users WHERE id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.get(0))
            .ok_or_else(|| StoreError::NotFound("no such user".to_owned()))
    }

    /// Adds a member or changes the role of an existing one; bumps the user's generation either
    /// way, so that a downgrade retires the user's cached principals.
    pub async fn set_member(
        &self,
        workspace: &str,
        email: &str,
        role: Role,
    ) -> Result<Member, StoreError> {
        let ws = self.workspace_by_name(workspace).await?;
        let user = self.user_by_email(email).await?;
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE memberships SET role = $1 WHERE workspace_id = $2 AND user_id = $3",
        )
        .bind(role.as_str())
        .bind(&ws.id)
        .bind(&user.id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            sqlx::query(
                "INSERT INTO memberships (workspace_id, user_id, role, created_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&ws.id)
            .bind(&user.id)
            .bind(role.as_str())
            .bind(now_millis())
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE users SET generation = generation + 1 WHERE id = $1")
            .bind(&user.id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE api_keys SET generation = generation + 1, updated_at = $1 WHERE owner_id = $2",
        )
        .bind(now_millis())
        .bind(&user.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE auth_tokens SET generation = generation + 1, updated_at = $1 WHERE user_id = $2",
        )
        .bind(now_millis())
        .bind(&user.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Member {
            workspace: ws.name,
            email: user.email,
            role: role.as_str().to_owned(),
        })
    }

    pub async fn list_members(&self, workspace: &str) -> Result<Vec<Member>, StoreError> {
        let ws = self.workspace_by_name(workspace).await?;
        let rows = sqlx::query(
            "SELECT u.email, m.role FROM memberships m JOIN users u ON u.id = m.user_id \
             WHERE m.workspace_id = $1 ORDER BY u.email",
        )
        .bind(&ws.id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Member {
                workspace: ws.name.clone(),
                email: r.get(0),
                role: r.get(1),
            })
            .collect())
    }

    pub async fn add_provider(&self, name: &str, workspace: &str) -> Result<Provider, StoreError> {
        check_provider_name(name)?;
        let ws = self.workspace_by_name(workspace).await?;
        let p = Provider {
            id: new_id(),
            name: name.to_owned(),
            workspace: ws.name.clone(),
            created_at: now_millis(),
        };
        sqlx::query(
            "INSERT INTO providers (id, name, workspace_id, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&p.id)
        .bind(&p.name)
        .bind(&ws.id)
        .bind(p.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| conflict(e, || format!("a provider named '{name}' already exists")))?;
        Ok(p)
    }

    pub async fn list_providers(&self) -> Result<Vec<Provider>, StoreError> {
        let rows = sqlx::query(
            "SELECT p.id, p.name, w.name, p.created_at FROM providers p \
             JOIN workspaces w ON w.id = p.workspace_id ORDER BY p.name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Provider {
                id: r.get(0),
                name: r.get(1),
                workspace: r.get(2),
                created_at: r.get(3),
            })
            .collect())
    }
}

fn user_row(r: &AnyRow) -> User {
    User {
        id: r.get(0),
        email: r.get(1),
        display_name: r.get(2),
        created_at: r.get(3),
    }
}

fn workspace_row(r: &AnyRow) -> Workspace {
    Workspace {
        id: r.get(0),
        name: r.get(1),
        created_at: r.get(2),
    }
}

fn check_name(what: &str, name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "'{name}' is not a valid {what} name (letters, digits, '-', '_', '.'; at most 64)"
        )))
    }
}

/// Provider names are path segments of the storage API: lower-case letters, digits, `-`, `_`.
pub fn check_provider_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['-', '_'])
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "'{name}' is not a valid provider name (lower-case letters, digits, '-', '_')"
        )))
    }
}

fn normalize_email(email: &str) -> Result<String, StoreError> {
    let e = email.trim().to_lowercase();
    let valid = e.len() <= 254
        && e.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'))
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(e)
    } else {
        Err(StoreError::Invalid(format!(
            "'{}' is not an email address",
            email.trim()
        )))
    }
}

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
    pub grants: Option<Vec<crate::keys::Grant>>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
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
    pub grants: Option<Vec<crate::keys::Grant>>,
    pub expires_at: Option<i64>,
    pub rotated_from: Option<String>,
}

/// Changes to a key; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct KeyChanges {
    pub name: Option<String>,
    pub scopes: Option<Vec<String>>,
    /// `Some(None)`: every provider.
    pub grants: Option<Option<Vec<crate::keys::Grant>>>,
    /// `Some(None)`: never expires.
    pub expires_at: Option<Option<i64>>,
}

/// One day of a key's usage.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
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
     k.revoked_at, k.generation, m.role";

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
        generation: r.get(13),
        role: role.map(|r| r.parse()).transpose()?,
    })
}

fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".to_owned())
}

impl Store {
    /// Inserts a key unless its owner already has `limit` active keys; the count and the
    /// insert are one transaction holding the owner's row, so concurrent creates cannot pass
    /// the limit together. With `revoke` set (rotation), that key is revoked in the same
    /// transaction and does not count.
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
            sqlx::query(
                "UPDATE api_keys SET revoked_at = $1, generation = generation + 1, updated_at = $1 \
                 WHERE id = $2 AND revoked_at IS NULL",
            )
            .bind(now)
            .bind(old)
            .execute(&mut *tx)
            .await?;
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

    /// The row `sql` selects with `param` bound as `$1`, if there is one, decoded.
    async fn fetch_row<T>(
        &self,
        sql: &str,
        param: &str,
        decode: impl FnOnce(&AnyRow) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        sqlx::query(sql)
            .bind(param)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(decode)
            .transpose()
    }

    /// Keys, newest first, optionally of one owner and/or one workspace.
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
        let now = now_millis();
        sqlx::query(
            "UPDATE api_keys SET revoked_at = $1, generation = generation + 1, updated_at = $1 \
             WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        self.key(id).await
    }

    /// (id, generation) of keys changed after `since_ms`, and the newest change time seen.
    pub async fn keys_changed_since(
        &self,
        since_ms: i64,
    ) -> Result<(Vec<(String, i64)>, i64), StoreError> {
        let rows =
            sqlx::query("SELECT id, generation, updated_at FROM api_keys WHERE updated_at > $1")
                .bind(since_ms)
                .fetch_all(&self.pool)
                .await?;
        let newest = rows
            .iter()
            .map(|r| r.get::<i64, _>(2))
            .max()
            .unwrap_or(since_ms);
        Ok((rows.iter().map(|r| (r.get(0), r.get(1))).collect(), newest))
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

    /// Memberships of a user: (workspace id, workspace name, role).
    pub async fn memberships(
        &self,
        user_id: &str,
    ) -> Result<Vec<(String, String, Role)>, StoreError> {
        let rows = sqlx::query(
            "SELECT w.id, w.name, m.role FROM memberships m JOIN workspaces w ON w.id = m.workspace_id \
             WHERE m.user_id = $1 ORDER BY w.name",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.get(0), r.get(1), r.get::<String, _>(2).parse()?)))
            .collect()
    }

    /// Every provider's name and the id of the workspace that owns it.
    pub async fn provider_directory(
        &self,
    ) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let rows = sqlx::query("SELECT name, workspace_id FROM providers")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// The workspace that owns a provider.
    pub async fn provider_workspace(&self, provider: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query("SELECT workspace_id FROM providers WHERE name = $1")
                .bind(provider)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.get(0)),
        )
    }
}
