//! The database: a sqlx pool over SQLite (default) or PostgreSQL, the migrations, and every
//! query. The only module that touches the database: `directory.rs` (workspaces, users,
//! memberships, providers), `keys.rs` (API keys and their usage), `tokens.rs` (logins, tokens,
//! signing keys), `changes.rs` (the change feed several instances follow), `policies.rs`
//! (published policy versions), `reminders.rs` (key expiry reminders), `oauth.rs` (applications,
//! codes and grants of OAuth 2.0). Queries use `$n`
//! placeholders, which run on both databases.
//!
//! May import: `model`, `clock`. Never anything that decides or serves.

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

mod changes;
mod directory;
mod keys;
mod oauth;
mod policies;
mod reminders;
mod tokens;

pub use changes::{ChangeListener, CredentialChange, Notice};
pub use directory::{Member, Provider, User, Workspace};
pub use keys::{KeyChanges, KeyRecord, NewKey, UsageDay};
pub use oauth::{CodeUse, NewCode, OAuthClient, MAX_CLIENTS_PER_WORKSPACE, MAX_PENDING_CODES};
pub use policies::{NewPolicyVersion, PolicyVersion, PublishedPolicy};
pub use reminders::{DueReminder, ReminderId, MAX_REMINDER_ATTEMPTS};
pub use tokens::{Exchange, NewToken, SigningKeyRow, TokenKind, TokenRecord};

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
    /// The URL connected to, for the change listener's own connection (PostgreSQL).
    url: std::sync::Arc<str>,
}

/// The schema both databases share. Each set ignores the other's migrations in the table of
/// applied ones (they share it on PostgreSQL).
static PORTABLE: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("./migrations")
};
/// PostgreSQL's own additions (the change feed's triggers), applied after the portable set.
static POSTGRES: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("./migrations/postgres")
};

pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Maps a unique-constraint violation to a conflict naming `what`.
pub(crate) fn conflict(e: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
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
        Ok(Store {
            pool,
            backend,
            url: url.into(),
        })
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
        PORTABLE.run(&self.pool).await?;
        if self.backend == Backend::Postgres {
            POSTGRES.run(&self.pool).await?;
        }
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

    /// The row `sql` selects with `param` bound as `$1`, if there is one, decoded.
    pub(crate) async fn fetch_row<T>(
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
}

pub(crate) fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".to_owned())
}
