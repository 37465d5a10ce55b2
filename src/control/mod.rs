//! The control plane (axum, in the same process): health, readiness, metrics, logins and
//! tokens (`logins.rs`), the key-management API (`keys.rs`), policy status (`policy.rs`), this
//! instance among several (`cluster.rs`), the web console (`console.rs`). The
//! handlers are thin: [`caller::Caller`] authenticates, `manage/` applies the rules, and
//! `respond.rs` is the one place results become JSON (the data plane's error shape).
//!
//! May import: `cluster`, `manage`, `identity`, `policy`, `ratelimit`, `store`, `refusal`,
//! `telemetry`, `clock`, `model`. Never `proxy` or `server`.

pub mod caller;
mod cluster;
mod console;
mod oauth;
mod openapi;
mod keys;
mod logins;
mod policy;
mod tls;
pub mod respond;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::identity::Identity;
use crate::manage::{Auth, KeyManager};
use crate::policy::PolicyEngine;
use crate::store::Store;
use crate::telemetry::Metrics;

#[derive(Clone)]
pub struct ControlState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub identity: Arc<Identity>,
    pub keys: Arc<KeyManager>,
    pub auth: Arc<Auth>,
    /// The operator token from the config; acts as a workspace admin everywhere.
    pub operator_token: Option<Arc<str>>,
    pub policy: Arc<PolicyEngine>,
    /// Who may read `/metrics` here.
    pub metrics_access: MetricsAccess,
    /// The last readiness check, shared so that a flood of `/readyz` costs one database round
    /// trip a second.
    pub readiness: Arc<tokio::sync::Mutex<Option<(std::time::Instant, Readiness)>>>,
    /// Peers whose forwarding headers name the client (`[server] trusted_proxies`).
    pub trusted_proxies: crate::identity::client::TrustedProxies,
    /// The served certificate, when `[tls]` is configured.
    pub certificates: Option<Arc<crate::tls::Certificates>>,
    /// The route table, to explain decisions as the data plane makes them.
    pub routes: crate::route::RouteTable,
    /// This instance's follower of changes made elsewhere.
    pub changes: Arc<crate::cluster::ChangeFeed>,
    /// Redis, when the rate limits are shared by every instance.
    pub shared_limits: Option<Arc<crate::ratelimit::shared::Shared>>,
}

/// Who may read `/metrics` on the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAccess {
    /// Anyone who reaches the control plane (the default; keep the plane private).
    Public,
    /// Only with the operator token.
    Operator,
    /// Not here: served on `[server] metrics_listen` instead.
    Elsewhere,
}

/// The outcome of a readiness check.
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    database: &'static str,
}

/// The control-plane API, without a socket.
pub fn app(state: ControlState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(keys::routes())
        .merge(logins::routes())
        .merge(policy::routes())
        .merge(tls::routes())
        .merge(cluster::routes())
        .merge(console::routes())
        .merge(oauth::routes())
        .route("/v1/openapi.json", get(openapi::document))
        .fallback(not_found)
        .with_state(state)
}

/// The listener of `[server] metrics_listen`: `/metrics` and nothing else.
pub fn metrics_app(state: ControlState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// The process is up (no envelope: what probes read).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
}

/// Readiness (no envelope: what probes read).
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct Ready {
    /// `ready` or `not ready`.
    pub status: &'static str,
    pub checks: ReadyChecks,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReadyChecks {
    /// `ok`, `unavailable` or `timeout`.
    pub database: &'static str,
    pub policies: ReadyPolicies,
    pub rate_limits: ReadyLimits,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ReadyPolicies {
    /// Always `ok`: keygate never runs without a valid set.
    pub state: &'static str,
    pub epoch: u64,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ReadyLimits {
    /// `local` or `redis`.
    pub backend: &'static str,
    /// `ok`, or `fallback` (Redis is unreachable: each instance limits on its own).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[utoipa::path(get, path = "/healthz", operation_id = "health", tag = "health", security(()),
    responses((status = 200, description = "The process is up", body = Health)))]
pub(super) async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Ready when the database answers. Fails closed: a slow database is not ready. Checked at
/// most once a second, whoever asks: readiness is unauthenticated.
#[utoipa::path(get, path = "/readyz", operation_id = "readiness", tag = "health", security(()),
    responses((status = 200, description = "Ready to serve", body = Ready),
        (status = 503, description = "The database does not answer", body = Ready)))]
pub(super) async fn readyz(State(st): State<ControlState>) -> Response {
    let checked = {
        let mut last = st.readiness.lock().await;
        match *last {
            Some((at, r)) if at.elapsed() < Duration::from_secs(1) => r,
            _ => {
                let db = tokio::time::timeout(Duration::from_secs(2), st.store.ping()).await;
                let database = match db {
                    Ok(Ok(())) => "ok",
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "readiness: database unavailable");
                        "unavailable"
                    }
                    Err(_) => "timeout",
                };
                let r = Readiness { database };
                *last = Some((std::time::Instant::now(), r));
                r
            }
        }
    };
    let db_state = checked.database;
    let ready = db_state == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // The policy set is always loaded: keygate refuses to start without a valid one, and a
    // failed reload keeps the last good set.
    let epoch = st.policy.current().epoch;
    // Redis down does not make an instance unready: it limits on its own meanwhile.
    let limits = |backend, state, detail| ReadyLimits {
        backend,
        state,
        detail,
    };
    let rate_limits = match &st.shared_limits {
        None => limits("local", "ok", None),
        Some(s) if s.is_up() => limits("redis", "ok", None),
        Some(s) => limits(
            "redis",
            "fallback",
            Some(format!(
                "Redis is unreachable: this instance allows 1/{} of each limit",
                s.instances
            )),
        ),
    };
    (
        status,
        Json(Ready {
            status: if ready { "ready" } else { "not ready" },
            checks: ReadyChecks {
                database: db_state,
                policies: ReadyPolicies { state: "ok", epoch },
                rate_limits,
            },
        }),
    )
        .into_response()
}

/// The Prometheus page, from memory: no database work per scrape (the gauges that come from
/// the database are refreshed by a background task).
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "health", security(()),
    responses((status = 200, description = "Prometheus metrics (`[control] metrics = \"operator\"`: the operator token is needed)",
        content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, description = "The operator token is needed and was not sent", body = openapi::Failure)))]
pub async fn metrics(State(st): State<ControlState>, headers: axum::http::HeaderMap) -> Response {
    match st.metrics_access {
        MetricsAccess::Public => {}
        MetricsAccess::Elsewhere => return not_found().await,
        MetricsAccess::Operator => {
            if !caller::is_operator(&st, &headers) {
                return respond::refusal(&crate::refusal::Refusal::Unauthorized(
                    crate::refusal::AuthFailure::Missing,
                ));
            }
        }
    }
    let gauge = |name: &str, n: u64| {
        st.metrics
            .limiter_entries
            .with_label_values(&[name])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    };
    gauge("address", st.identity.gate().entries());
    let (accounts, addresses) = st.auth.limiter_entries();
    gauge("login_account", accounts);
    gauge("login_address", addresses);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> Response {
    respond::error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such endpoint", None)
}
