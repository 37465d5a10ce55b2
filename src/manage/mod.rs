//! The rules of credential management, one implementation behind the control plane and the
//! CLI: API keys (`keys.rs`: create, list, show, update, revoke, rotate, usage) and logins
//! (`logins.rs`: password login, refresh rotation, logout, devices, scoped tokens),
//! applications granted access with OAuth 2.0 (`oauth.rs`), and explaining a decision
//! (`explain.rs`). Who may do
//! what is the policies' decision; this module asks Cedar and applies the answer.
//!
//! Every call fails with the one [`ManageError`]; the control plane renders it (and nothing
//! else) as the JSON error shape.
//!
//! May import: `identity`, `policy`, `principal`, `ratelimit`, `store`, `model`, `route`,
//! `refusal`, `usage`, `telemetry`, `clock`. Never `proxy`, `control` or `server`.

pub mod explain;
pub mod keys;
pub mod logins;
pub mod oauth;
mod password;

use std::sync::Arc;

pub use keys::{CreateKey, KeyManager, KeyView, NewKeyView, UpdateKey, UsageView};
pub use logins::{Auth, Issued, LoginRequest, MintRequest};

use crate::identity::jwt::TokenError;
use crate::model::Role;
use crate::principal::Principal;
use crate::refusal::Refusal;
use crate::store::StoreError;

/// Who is asking.
#[derive(Debug, Clone)]
pub enum Actor {
    Operator,
    /// A user, through any credential: an API key, a login, a session, a scoped token. What
    /// each may do is the policies' decision.
    User(Arc<Principal>),
}

/// Why a management call failed. Messages name the caller's input and never a secret.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// A refusal of the request path: 401, 429, or 503 when keygate cannot decide.
    #[error("{}", .0.code())]
    Refused(Refusal),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A request body over the size limit (413).
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A request body that did not arrive in time (408).
    #[error("{0}")]
    Timeout(String),
    /// A request body that is not JSON (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A policy set that does not load; the running set stays (422).
    #[error("{message}")]
    InvalidPolicy {
        message: String,
        details: serde_json::Value,
    },
    /// Bad input, with what the client needs to act on it (400).
    #[error("{message}")]
    InvalidRequest {
        message: String,
        details: serde_json::Value,
    },
    /// A certificate that does not load; the served one stays (422).
    #[error("{message}")]
    InvalidCertificate {
        message: String,
        details: serde_json::Value,
    },
    /// The database failed; answered 503 with nothing of the cause.
    #[error(transparent)]
    Store(StoreError),
}

impl From<Refusal> for ManageError {
    fn from(r: Refusal) -> ManageError {
        ManageError::Refused(r)
    }
}

impl From<StoreError> for ManageError {
    fn from(e: StoreError) -> ManageError {
        match e {
            StoreError::Invalid(m) => ManageError::BadRequest(m),
            StoreError::NotFound(m) => ManageError::NotFound(m),
            StoreError::Conflict(m) => ManageError::Conflict(m),
            other => ManageError::Store(other),
        }
    }
}

impl From<TokenError> for ManageError {
    fn from(e: TokenError) -> ManageError {
        match e {
            TokenError::Store(s) => s.into(),
            TokenError::Key(m) => {
                tracing::error!(error = %m, "token signing failed");
                ManageError::Refused(Refusal::Unavailable(
                    "keygate cannot sign tokens right now".into(),
                ))
            }
        }
    }
}

/// One of a user's workspace memberships: (workspace id, workspace name, role).
pub type Membership = (String, String, Role);

/// The membership a request acts in: the workspace it names, or the user's only one. Not being
/// a member is answered with `not_member` (logins and key creation answer it differently);
/// belonging to several without naming one is a 400.
pub fn choose_workspace(
    memberships: &[Membership],
    named: Option<&str>,
    email: &str,
    not_member: fn(String) -> ManageError,
) -> Result<Membership, ManageError> {
    match named {
        Some(ws) => memberships
            .iter()
            .find(|(_, name, _)| name == ws)
            .cloned()
            .ok_or_else(|| not_member(format!("{email} is not a member of workspace '{ws}'"))),
        None => match memberships {
            [one] => Ok(one.clone()),
            [] => Err(not_member(format!(
                "{email} is not a member of any workspace"
            ))),
            _ => Err(ManageError::BadRequest(format!(
                "{email} belongs to several workspaces: name one (workspace)"
            ))),
        },
    }
}
