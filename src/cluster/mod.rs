//! Several instances on one database: each follows the changes the others make (`changes.rs`:
//! PostgreSQL's notices, with polling as the safety net and the whole mechanism on SQLite).
//!
//! May import: `store`, `identity`, `policy`, `telemetry`, `clock`, `background`. Never the
//! planes.

pub mod changes;

pub use changes::{ChangeFeed, FeedStatus};

/// This instance, as the cluster status names it: the host's name and the process id.
pub fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("{host}/{}", std::process::id())
}
