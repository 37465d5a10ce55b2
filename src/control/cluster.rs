//! `/v1/admin/cluster`: this instance as one of several on a database (which instance it is, the
//! changes it has applied, how it learns of them); who may read it is in the policy files
//! (`operating.cedar`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde_json::json;

use super::caller::Caller;
use super::respond::ok;
use super::ControlState;
use crate::manage::ManageError;

pub fn routes() -> Router<ControlState> {
    Router::new().route("/v1/admin/cluster", get(status))
}

async fn status(
    State(st): State<ControlState>,
    Caller(actor): Caller,
) -> Result<Response, ManageError> {
    st.keys.authorize_operation(&actor, "readCluster")?;
    Ok(ok(
        StatusCode::OK,
        json!({
            "instance": crate::cluster::instance_name(),
            "database": match st.store.backend() {
                crate::store::Backend::Postgres => "postgres",
                crate::store::Backend::Sqlite => "sqlite",
            },
            "pollInterval": humantime::format_duration(st.changes.interval()).to_string(),
            "changes": st.changes.status(),
            "policy": {
                "version": st.policy.current().version,
                "hash": st.policy.current().hash,
                "epoch": st.policy.current().epoch,
            },
        }),
    ))
}
