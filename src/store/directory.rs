//! The directory: workspaces, users, memberships and providers.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{conflict, new_id, Store, StoreError};
use crate::clock::now_millis;
use crate::model::{check_provider_name, Role};

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

impl Store {
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
        check_provider_name(name).map_err(StoreError::Invalid)?;
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
            .map(|r| Ok((r.get(0), r.get(1), role(&r.get::<String, _>(2))?)))
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

/// A stored role; anything else is a corrupt row.
pub(super) fn role(s: &str) -> Result<Role, StoreError> {
    s.parse().map_err(StoreError::Invalid)
}
