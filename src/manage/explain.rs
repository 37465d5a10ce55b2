//! Explaining a decision: what the running policy set answers for a principal (an API key, a
//! scoped or login token, or a user signed in), a method and a path, with the deciding
//! policies, the scopes required and granted, and the principal the policies saw. One
//! implementation for `keygate policy explain` and `POST /v1/admin/policy/check`; asking is
//! itself a management action (`explainDecision`), decided by the policy files.

use serde::Serialize;
use serde_json::{Map, Value};

use super::keys::KeyManager;
use super::{Actor, ManageError};
use crate::policy::PolicyEngine;
use crate::principal::{Principal, PrincipalKind};
use crate::refusal::Refusal;
use crate::route::{RouteInput, RouteTable};
use crate::store::Store;

/// Whose request is explained.
#[derive(Debug, Clone)]
pub enum Subject {
    /// An API key, by id.
    Key(String),
    /// A login or scoped token, by id.
    Token(String),
    /// A user signed in with a password: their role in the provider's workspace sets the scope.
    User(String),
}

/// The request explained.
#[derive(Debug, Clone)]
pub struct Question {
    pub subject: Subject,
    pub method: String,
    pub path: String,
    pub destination: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// `allow` or `deny`.
    pub decision: &'static str,
    pub action: String,
    pub resources: Vec<ResourceDecision>,
    pub principal: PrincipalView,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceDecision {
    /// `provider:/path`.
    pub resource: String,
    pub allowed: bool,
    /// The policies that decided, with their intent and where they are written.
    pub policies: Vec<DecidingPolicy>,
    /// For a deny: the scope required and the scopes granted, or the restriction.
    #[serde(skip_serializing_if = "Map::is_empty")]
    #[schema(value_type = Object)]
    pub details: Map<String, Value>,
    /// A policy failed to evaluate (and the answer is a deny).
    pub errored: bool,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DecidingPolicy {
    pub id: String,
    pub place: Option<String>,
    pub intent: Option<String>,
}

/// The principal as the policies saw it (never a secret).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrincipalView {
    pub kind: &'static str,
    pub id: String,
    pub user: String,
    pub workspace_id: String,
    pub scopes: Vec<String>,
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub providers: Option<Value>,
}

/// Explains `q` under the running policy set of `engine` and the route table `routes`, if
/// `actor` may ask about this principal (`explainDecision`, like reading its credential).
pub async fn explain(
    store: &Store,
    engine: &PolicyEngine,
    routes: &RouteTable,
    keys: Option<&KeyManager>,
    actor: &Actor,
    q: &Question,
) -> Result<Explanation, ManageError> {
    let route = routes
        .route(RouteInput {
            method: &q.method,
            raw_target: q.path.as_bytes(),
            destination: q.destination.as_deref().map(str::as_bytes),
            overwrite: None,
            depth: None,
            if_header: None,
            host: None,
        })
        .map_err(|r| {
            ManageError::BadRequest(format!(
                "the request is refused before any policy: {} ({})",
                r.code(),
                r.status()
            ))
        })?;
    let principal = match &q.subject {
        Subject::Key(id) => Principal::from_key(store.key(id).await?, Default::default()),
        Subject::Token(id) => Principal::from_token(store.token(id).await?, Default::default()),
        Subject::User(email) => {
            let user = store.user_by_email(email).await?;
            let provider = route
                .resources
                .first()
                .map(|r| r.provider.to_string())
                .unwrap_or_default();
            let workspace = store
                .provider_directory()
                .await?
                .get(&provider)
                .cloned()
                .unwrap_or_default();
            let role = store
                .memberships(&user.id)
                .await?
                .into_iter()
                .find(|(id, _, _)| *id == workspace)
                .map(|(_, _, role)| role);
            Principal {
                kind: PrincipalKind::Login,
                key_id: format!("login:{}", user.id),
                user_id: user.id,
                user_email: user.email,
                workspace_id: workspace,
                workspace: String::new(),
                // Signed in, a user holds no scopes: the policies decide by the role.
                scopes: Vec::new(),
                grants: None,
                role,
                expires_at: None,
                generation: 0,
                usage: Default::default(),
            }
        }
    };
    if let Some(keys) = keys {
        keys.authorize(
            actor,
            "explainDecision",
            &principal.key_id,
            &principal.user_id,
            &principal.workspace_id,
        )
        .map_err(|_| ManageError::NotFound("no such principal".to_owned()))?;
    } else if !matches!(actor, Actor::Operator) {
        return Err(Refusal::Forbidden(Map::new()).into());
    }
    let verdicts = engine.decide_uncached(&principal, &route);
    let allowed = !verdicts.is_empty() && verdicts.iter().all(|v| v.allowed);
    let loaded = engine.current();
    let resources = crate::policy::decided_targets(&route)
        .into_iter()
        .zip(&verdicts)
        .map(|(resource, v)| ResourceDecision {
            resource,
            allowed: v.allowed,
            policies: v
                .policies
                .iter()
                .map(|id| DecidingPolicy {
                    id: id.clone(),
                    place: loaded
                        .listed
                        .iter()
                        .find(|p| p.id == *id)
                        .map(|p| p.place.clone()),
                    intent: loaded.intent.get(id).cloned(),
                })
                .collect(),
            details: v.details.clone(),
            errored: v.errored,
        })
        .collect();
    Ok(Explanation {
        decision: if allowed { "allow" } else { "deny" },
        action: route.action.to_string(),
        resources,
        principal: PrincipalView {
            kind: principal.kind.as_str(),
            id: principal.key_id.clone(),
            user: principal.user_email.clone(),
            workspace_id: principal.workspace_id.clone(),
            scopes: principal.scopes.clone(),
            role: principal.role.map(|r| r.as_str()),
            providers: principal
                .grants
                .as_ref()
                .and_then(|g| serde_json::to_value(g).ok()),
        },
    })
}
