//! storage-backend: a plain HTTP file store on disk, with no authentication of its own.
//!
//! Providers are folders directly under the data root. Everything the store keeps for itself
//! (uploads in progress, the trash, who last modified a file) lives under `<root>/.store/`, which
//! no request can name because provider names never start with a dot.
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET`/`HEAD /v1/files/{provider}/{path}` | download (streamed, `Range`, `ETag`) |
//! | `PUT /v1/files/{provider}/{path}` | upload (streamed to a temporary file, then renamed) |
//! | `DELETE /v1/files/{provider}/{path}` | move a file or folder to the provider's trash |
//! | `MOVE`/`COPY /v1/files/{provider}/{path}` | to the path in the `Destination` header |
//! | `GET /v1/folders/{provider}/{path}` | list a folder |
//! | `POST /v1/folders/{provider}/{path}` | create a folder |
//! | `GET /v1/search/{provider}/{path}?q=NAME` | find entries whose name contains NAME |
//! | `GET /v1/trash/{provider}` | list the trash |
//! | `POST /v1/trash/{provider}/{id}/restore` | put an entry back where it was |
//! | `DELETE /v1/trash/{provider}/{id}`, `DELETE /v1/trash/{provider}` | purge one, empty all |

pub mod error;
pub mod paths;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::routing::{delete, get, post};
use axum::Router;

pub use error::StoreError;
use store::Store;

/// Header whose value the store records as a file's last modifier.
pub const MODIFIER_HEADER: &str = "x-keygate-user";

#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// The data root; every provider is a folder directly under it.
    pub root: PathBuf,
    /// Providers to create at start if they do not exist yet.
    pub providers: Vec<String>,
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    store: Arc<Store>,
}

impl AppState {
    /// Opens (and creates where needed) the data root and the listed providers.
    pub async fn open(config: &BackendConfig) -> anyhow::Result<AppState> {
        let store = Store::open(&config.root, &config.providers).await?;
        Ok(AppState {
            store: Arc::new(store),
        })
    }
}

/// The whole HTTP API, without a socket, so tests can call it directly.
pub fn app(state: AppState) -> Router {
    use store::handlers as h;
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/v1/files/{provider}/{*path}",
            get(h::download)
                .put(h::upload)
                .delete(h::delete_entry)
                .fallback(h::move_or_copy),
        )
        .route("/v1/folders/{provider}", get(h::list_root))
        .route("/v1/folders/{provider}/", get(h::list_root))
        .route(
            "/v1/folders/{provider}/{*path}",
            get(h::list_folder).post(h::create_folder),
        )
        .route("/v1/search/{provider}", get(h::search_root))
        .route("/v1/search/{provider}/{*path}", get(h::search))
        .route(
            "/v1/trash/{provider}",
            get(h::list_trash).delete(h::empty_trash),
        )
        .route("/v1/trash/{provider}/{id}", delete(h::purge_trash))
        .route("/v1/trash/{provider}/{id}/restore", post(h::restore_trash))
        .fallback(h::not_found)
        .with_state(state)
}

/// Serves the API on an already bound listener until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Small responses go out at once, not after the peer's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
