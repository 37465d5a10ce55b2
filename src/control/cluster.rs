//! `/v1/admin/cluster`: this instance as one of several on a database (which instance it is, the
//! changes it has applied, how it learns of them); who may read it is in the policy files
//! (`operating.cedar`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use super::caller::Caller;
use super::openapi::{Refused, Success};
use super::respond::ok;
use super::ControlState;
use crate::cluster::FeedStatus;
use crate::manage::ManageError;

pub fn routes() -> Router<ControlState> {
    Router::new().route("/v1/admin/cluster", get(status))
}

#[utoipa::path(get, path = "/v1/admin/cluster", operation_id = "clusterStatus", tag = "operating",
    responses((status = 200, description = "This instance, and how it follows changes made elsewhere", body = Success<ClusterStatus>), Refused))]
pub(super) async fn status(
    State(st): State<ControlState>,
    Caller(actor): Caller,
) -> Result<Response, ManageError> {
    st.keys.authorize_operation(&actor, "readCluster")?;
    let policy = st.policy.current();
    Ok(ok(
        StatusCode::OK,
        ClusterStatus {
            instance: crate::cluster::instance_name(),
            database: match st.store.backend() {
                crate::store::Backend::Postgres => "postgres",
                crate::store::Backend::Sqlite => "sqlite",
            },
            poll_interval: humantime::format_duration(st.changes.interval()).to_string(),
            changes: st.changes.status(),
            policy: RunningPolicy {
                version: policy.version,
                hash: policy.hash.clone(),
                epoch: policy.epoch,
            },
        },
    ))
}

/// `GET /v1/admin/cluster`: this instance among several.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub instance: String,
    /// `postgres` or `sqlite`.
    pub database: &'static str,
    pub poll_interval: String,
    pub changes: FeedStatus,
    pub policy: RunningPolicy,
}

/// The policy set this instance runs.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct RunningPolicy {
    /// The published version (`[policies] source = "database"`).
    pub version: Option<i64>,
    pub hash: String,
    pub epoch: u64,
}
