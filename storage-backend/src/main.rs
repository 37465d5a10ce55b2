//! `storage-backend`: serve a folder of providers over HTTP. Binds, prints its address, serves
//! until interrupted.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use storage_backend::{AppState, BackendConfig};

/// A plain HTTP file store with no authentication of its own; put keygate in front of it.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Data root: every provider is a folder directly under it.
    #[arg(long, env = "STORAGE_BACKEND_ROOT")]
    root: PathBuf,
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "STORAGE_BACKEND_LISTEN", default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// A provider to create at start if it does not exist (repeatable).
    #[arg(long = "provider")]
    providers: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "storage_backend=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let state = AppState::open(&BackendConfig {
        root: cli.root.clone(),
        providers: cli.providers.clone(),
    })
    .await?;
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    let addr = listener.local_addr()?;
    println!("storage-backend listening on http://{addr}");
    tracing::info!(%addr, root = %cli.root.display(), "storage-backend started");
    storage_backend::serve(listener, state, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
