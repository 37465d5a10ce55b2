//! The change feed several instances on one database follow: which credentials changed, and the
//! notices PostgreSQL sends as changes commit (`migrations/postgres/` makes both).
//!
//! On PostgreSQL a follower keeps a *horizon*: the oldest transaction still running when it last
//! read. Every row changed by a transaction below the horizon was visible to that read; rows
//! changed by transactions at or above it are read again next time, however late or in whatever
//! order those transactions commit. No clock is involved. On SQLite (one instance; the other
//! writers are the CLI on the same machine, and SQLite commits one writer at a time) changes are
//! found by their `updated_at` time, re-reading a window before the newest one seen.

use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::Row;

use super::{Backend, Store, StoreError};

/// The channel the triggers announce changes on.
const CHANNEL: &str = "keygate_changes";

/// A key or token whose cached copies must be retired: its id, its new generation, and when the
/// change was written (unix ms, the writer's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialChange {
    pub id: String,
    pub generation: i64,
    pub changed_at: i64,
}

/// What a notice on the channel says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Credential(CredentialChange),
    /// The providers changed: read the directory again.
    Providers,
    /// The signing keys changed: load them again.
    SigningKeys,
    /// A policy version was published.
    Policy(i64),
    /// The connection was lost and made again: notices may have been missed, catch up.
    Reconnected,
    /// A notice of another kind (a newer keygate's): catching up covers it.
    Other(String),
}

impl Notice {
    fn parse(payload: &str) -> Notice {
        let mut words = payload.split(' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("credential"), Some(id), Some(generation), Some(at)) => {
                match (generation.parse(), at.parse()) {
                    (Ok(generation), Ok(changed_at)) => Notice::Credential(CredentialChange {
                        id: id.to_owned(),
                        generation,
                        changed_at,
                    }),
                    _ => Notice::Other(payload.to_owned()),
                }
            }
            (Some("providers"), None, ..) => Notice::Providers,
            (Some("signing-keys"), None, ..) => Notice::SigningKeys,
            (Some("policy"), Some(version), None, _) => match version.parse() {
                Ok(v) => Notice::Policy(v),
                Err(_) => Notice::Other(payload.to_owned()),
            },
            _ => Notice::Other(payload.to_owned()),
        }
    }
}

/// A connection listening on the change channel (PostgreSQL only).
pub struct ChangeListener {
    listener: PgListener,
}

impl ChangeListener {
    /// The next notice. An error means the connection is gone and could not be made again: drop
    /// this listener and make a new one (then catch up).
    pub async fn next(&mut self) -> Result<Notice, StoreError> {
        match self.listener.try_recv().await? {
            Some(n) => Ok(Notice::parse(n.payload())),
            None => Ok(Notice::Reconnected),
        }
    }
}

impl Store {
    /// Listens on the change channel; `None` on SQLite, which has no notifications.
    pub async fn listen(&self) -> Result<Option<ChangeListener>, StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        // A pool of one connection of its own, so that reconnecting gives up after a few seconds
        // (and the follower's safety-net poll goes on meanwhile).
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy(&self.url)?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Some(ChangeListener { listener }))
    }

    /// The horizon to start following from: the oldest transaction running now (PostgreSQL).
    /// A follower that starts with empty caches has nothing older to catch up on.
    pub async fn change_horizon(&self) -> Result<i64, StoreError> {
        let text: String =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
                .fetch_one(&self.pool)
                .await?;
        parse_xid(&text)
    }

    /// Every key and token changed by a transaction at or above `horizon`, and the next horizon
    /// (PostgreSQL). Reads in one snapshot, so every transaction below the next horizon had
    /// committed (or rolled back) before the read. Rows may come again on the next call; applying
    /// a generation twice is harmless.
    pub async fn credentials_changed_after(
        &self,
        horizon: i64,
    ) -> Result<(Vec<CredentialChange>, i64), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let next: String =
            sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
                .fetch_one(&mut *tx)
                .await?;
        let rows = sqlx::query(
            "SELECT id, generation, updated_at FROM api_keys WHERE changed_xid >= $1::text::xid8 \
             UNION ALL SELECT id, generation, updated_at FROM auth_tokens \
             WHERE changed_xid >= $1::text::xid8",
        )
        .bind(horizon.to_string())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((changes(&rows), parse_xid(&next)?))
    }

    /// A key's or token's generation and change time now: a notice only says which to read
    /// (any role that can connect may send one).
    pub async fn credential_now(&self, id: &str) -> Result<Option<CredentialChange>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, generation, updated_at FROM api_keys WHERE id = $1 \
             UNION ALL SELECT id, generation, updated_at FROM auth_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(changes(&rows).into_iter().next())
    }

    /// Every key and token changed after `since_ms`, and the newest change time seen (SQLite).
    /// One query over both tables: they share the generation scheme.
    pub async fn credentials_changed_since(
        &self,
        since_ms: i64,
    ) -> Result<(Vec<CredentialChange>, i64), StoreError> {
        let rows = sqlx::query(
            "SELECT id, generation, updated_at FROM api_keys WHERE updated_at > $1 \
             UNION ALL SELECT id, generation, updated_at FROM auth_tokens WHERE updated_at > $1",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        let changes = changes(&rows);
        let newest = changes
            .iter()
            .map(|c| c.changed_at)
            .max()
            .unwrap_or(since_ms);
        Ok((changes, newest))
    }
}

fn changes(rows: &[sqlx::any::AnyRow]) -> Vec<CredentialChange> {
    rows.iter()
        .map(|r| CredentialChange {
            id: r.get(0),
            generation: r.get(1),
            changed_at: r.get(2),
        })
        .collect()
}

fn parse_xid(text: &str) -> Result<i64, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Invalid(format!("unexpected transaction id '{text}'")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_read_and_anything_else_is_other() {
        assert_eq!(
            Notice::parse("credential 0193-ab 7 1765000000000"),
            Notice::Credential(CredentialChange {
                id: "0193-ab".into(),
                generation: 7,
                changed_at: 1_765_000_000_000
            })
        );
        assert_eq!(Notice::parse("providers"), Notice::Providers);
        assert_eq!(Notice::parse("signing-keys"), Notice::SigningKeys);
        assert_eq!(Notice::parse("policy 12"), Notice::Policy(12));
        for other in [
            "credential x y 1",
            "credential x 1",
            "providers now",
            "policy x",
            "policy 4 5",
            "",
        ] {
            assert_eq!(Notice::parse(other), Notice::Other(other.into()), "{other}");
        }
    }
}
