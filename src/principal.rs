//! Who is making a request: the [`Principal`] every stage after identity works with, built
//! from a stored key or token row. One definition for both planes.
//!
//! May import: `model`, `store` (the rows it is built from), `usage`. Never `policy`,
//! `identity` or anything above them: those import this.

use std::sync::Arc;

use crate::model::{Grant, Role};
use crate::store::{KeyRecord, TokenKind, TokenRecord};
use crate::usage::KeyCounters;

/// What kind of credential a principal came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrincipalKind {
    #[default]
    ApiKey,
    ScopedToken,
    Login,
    /// The operator token on the control plane, or the CLI on the database.
    Operator,
}

impl PrincipalKind {
    /// The kind's name in API answers and audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::ApiKey => "apiKey",
            PrincipalKind::ScopedToken => "scopedToken",
            PrincipalKind::Login => "login",
            PrincipalKind::Operator => "operator",
        }
    }
}

/// Who is making a request, as the later stages need it.
#[derive(Debug)]
pub struct Principal {
    pub kind: PrincipalKind,
    /// The credential's id (an API key's id).
    pub key_id: String,
    pub user_id: String,
    pub user_email: String,
    pub workspace_id: String,
    pub workspace: String,
    pub scopes: Vec<String>,
    /// `None`: every provider.
    pub grants: Option<Vec<Grant>>,
    /// The owner's role in the key's workspace; `None` when no longer a member.
    pub role: Option<Role>,
    pub expires_at: Option<i64>,
    pub generation: i64,
    pub usage: Arc<KeyCounters>,
}

impl Principal {
    /// The principal of a stored API key.
    pub fn from_key(r: KeyRecord, usage: Arc<KeyCounters>) -> Principal {
        Principal {
            kind: PrincipalKind::ApiKey,
            usage,
            key_id: r.id,
            user_id: r.owner_id,
            user_email: r.owner_email,
            workspace_id: r.workspace_id,
            workspace: r.workspace,
            scopes: r.scopes,
            grants: r.grants,
            role: r.role,
            expires_at: r.expires_at,
            generation: r.generation,
        }
    }

    /// The principal of a token row: a scoped token holds its permissions; a login holds no
    /// scopes (it acts by its owner's role, as the policies say).
    pub fn from_token(r: TokenRecord, usage: Arc<KeyCounters>) -> Principal {
        let (kind, scopes, grants) = match r.kind {
            TokenKind::Scoped => (
                PrincipalKind::ScopedToken,
                r.scopes.unwrap_or_default(),
                r.grants,
            ),
            _ => (PrincipalKind::Login, Vec::new(), None),
        };
        Principal {
            kind,
            usage,
            key_id: r.id,
            user_id: r.user_id,
            user_email: r.user_email,
            workspace_id: r.workspace_id,
            workspace: r.workspace,
            scopes,
            grants,
            role: r.role,
            expires_at: Some(r.expires_at),
            generation: r.generation,
        }
    }

    /// The operator (the control-plane token, or the CLI on the database) as a principal: a
    /// member of no workspace, with no role and no scopes. What it may do is in the policies
    /// (`operating.cedar`).
    pub fn operator() -> Principal {
        Principal {
            kind: PrincipalKind::Operator,
            key_id: "operator".to_owned(),
            user_id: "operator".to_owned(),
            user_email: "operator".to_owned(),
            workspace_id: String::new(),
            workspace: String::new(),
            scopes: Vec::new(),
            grants: None,
            role: None,
            expires_at: None,
            generation: 0,
            usage: Default::default(),
        }
    }

    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at.is_some_and(|e| e <= now_ms)
    }

    /// Every folder on the way to a restricted credential's base paths, as (provider, path):
    /// each provider's root, the folders below it down to the base path, and the base path
    /// itself. Empty for a credential without base paths. At most 257 per grant.
    pub fn toward_grants(&self) -> Vec<(&str, String)> {
        let mut out = Vec::new();
        for g in self.grants.iter().flatten() {
            out.push((g.provider.as_str(), "/".to_owned()));
            let mut folder = String::new();
            for segment in g.base_path.split('/').filter(|s| !s.is_empty()) {
                folder.push('/');
                folder.push_str(segment);
                out.push((g.provider.as_str(), folder.clone()));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// True when canonical `path` of `provider` is on the way to one of the credential's base
    /// paths (one of [`Principal::toward_grants`]), compared segment by segment.
    pub fn leads_to_grant(&self, provider: &str, path: &str) -> bool {
        self.grants.iter().flatten().any(|g| {
            g.provider == provider
                && (path == "/"
                    || g.base_path == path
                    || g.base_path
                        .strip_prefix(path)
                        .is_some_and(|rest| rest.starts_with('/')))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_way_to_base_paths_is_every_folder_above_them_and_nothing_beside() {
        let mut p = Principal::operator();
        assert!(p.toward_grants().is_empty());
        assert!(!p.leads_to_grant("nas", "/"));
        p.grants = Some(vec![
            Grant {
                provider: "nas".into(),
                base_path: "/projects/alpha".into(),
            },
            Grant {
                provider: "s3".into(),
                base_path: "/".into(),
            },
        ]);
        let way: Vec<String> = p
            .toward_grants()
            .into_iter()
            .map(|(provider, path)| format!("{provider}:{path}"))
            .collect();
        assert_eq!(
            way,
            ["nas:/", "nas:/projects", "nas:/projects/alpha", "s3:/"]
        );
        for (provider, path, on_the_way) in [
            ("nas", "/", true),
            ("nas", "/projects", true),
            ("nas", "/projects/alpha", true),
            ("nas", "/projects/alpha/x", false),
            ("nas", "/projects/al", false),
            ("nas", "/projects/beta", false),
            ("nas", "/proj", false),
            ("s3", "/", true),
            ("s3", "/a", false),
            ("other", "/", false),
        ] {
            assert_eq!(
                p.leads_to_grant(provider, path),
                on_the_way,
                "{provider}:{path}"
            );
        }
    }
}
