//! Policy sets published to the database: every version, never changed or deleted.

use sqlx::Row;

use super::{Store, StoreError};

/// A published version with its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedPolicy {
    pub version: i64,
    pub hash: String,
    /// (file name, contents), shadow files as `shadow/NAME`.
    pub files: Vec<(String, String)>,
}

/// A published version as the history lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyVersion {
    pub version: i64,
    pub hash: String,
    pub files: Vec<String>,
    pub published_at: i64,
    pub published_by: String,
    pub note: Option<String>,
    pub rollback_of: Option<i64>,
}

/// What `publish_policy` stores.
pub struct NewPolicyVersion<'a> {
    pub hash: &'a str,
    pub files: &'a [(String, String)],
    pub published_by: &'a str,
    pub note: Option<&'a str>,
    pub rollback_of: Option<i64>,
}

impl Store {
    /// Stores a new version (the newest plus one) and returns its number. Two publishes at once:
    /// one of them is refused as a conflict, never merged.
    pub async fn publish_policy(&self, new: &NewPolicyVersion<'_>) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let newest: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM policy_versions")
            .fetch_one(&mut *tx)
            .await?;
        let version = newest.unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO policy_versions (version, hash, files, published_at, published_by, note, \
             rollback_of) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(version)
        .bind(new.hash)
        .bind(super::json_text(&new.files))
        .bind(crate::clock::now_millis())
        .bind(new.published_by)
        .bind(new.note)
        .bind(new.rollback_of)
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            super::conflict(e, || {
                format!("version {version} was published by someone else meanwhile; try again")
            })
        })?;
        tx.commit().await?;
        Ok(version)
    }

    /// The newest version's number, if any was published.
    pub async fn newest_policy_version(&self) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT MAX(version) FROM policy_versions")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// One version with its files.
    pub async fn policy_version(
        &self,
        version: i64,
    ) -> Result<Option<PublishedPolicy>, StoreError> {
        let row =
            sqlx::query("SELECT version, hash, files FROM policy_versions WHERE version = $1")
                .bind(version)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| {
            let files: Vec<(String, String)> = serde_json::from_str(&r.get::<String, _>(2))
                .map_err(|e| StoreError::Invalid(format!("policy version {version}: {e}")))?;
            Ok(PublishedPolicy {
                version: r.get(0),
                hash: r.get(1),
                files,
            })
        })
        .transpose()
    }

    /// Every version, newest first (at most `limit`).
    pub async fn policy_history(&self, limit: i64) -> Result<Vec<PolicyVersion>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, hash, files, published_at, published_by, note, rollback_of \
             FROM policy_versions ORDER BY version DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let files: Vec<(String, String)> = serde_json::from_str(&r.get::<String, _>(2))
                    .map_err(|e| StoreError::Invalid(format!("a policy version: {e}")))?;
                Ok(PolicyVersion {
                    version: r.get(0),
                    hash: r.get(1),
                    files: files.into_iter().map(|(name, _)| name).collect(),
                    published_at: r.get(3),
                    published_by: r.get(4),
                    note: r.get(5),
                    rollback_of: r.get(6),
                })
            })
            .collect()
    }
}
