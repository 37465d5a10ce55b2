//! The database: a sqlx pool over SQLite (default) or PostgreSQL, the migrations, and every
//! query. The only module that touches the database.

use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

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
            .map(|r| User {
                id: r.get(0),
                email: r.get(1),
                display_name: r.get(2),
                created_at: r.get(3),
            })
            .ok_or_else(|| StoreError::NotFound(format!("no user with email '{email}'")))
    }

    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let rows =
            sqlx::query("SELECT id, email, display_name, created_at FROM users ORDER BY email")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .iter()
            .map(|r| User {
                id: r.get(0),
                email: r.get(1),
                display_name: r.get(2),
                created_at: r.get(3),
            })
            .collect())
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
