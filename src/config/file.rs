//! The TOML file model: what an operator writes. Every table denies unknown fields.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub database: DatabaseSection,
    #[serde(default)]
    pub upstream: UpstreamSection,
    #[serde(default)]
    pub routes: RoutesSection,
    #[serde(default)]
    pub log: LogSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Data-plane address, `host:port` (port 0 picks a free port).
    pub listen: Option<String>,
    /// Control-plane address.
    pub control_listen: Option<String>,
    /// Worker threads of the runtime (default: the number of cores).
    pub threads: Option<usize>,
    /// Seconds a client has to send a request's headers before the connection is closed.
    pub header_timeout: Option<String>,
    /// Longest a connection may stay idle between requests.
    pub keepalive_timeout: Option<String>,
    /// Requests served on one connection before it is closed.
    pub keepalive_requests: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// `sqlite://path/to/keygate.db` or `postgres://user@host/db`.
    pub url: Option<String>,
    pub max_connections: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// `host:port` of each storage backend; several are load-balanced round-robin.
    pub peers: Option<Vec<String>>,
    /// How often several peers are health-checked (e.g. `5s`).
    pub health_check_interval: Option<String>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub write_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesSection {
    /// `storage-backend` (default), `webdav` or `none`.
    pub preset: Option<String>,
    /// The provider a WebDAV mount maps to (preset `webdav`).
    pub webdav_provider: Option<String>,
    /// Action for requests no route matches; unset means 404.
    pub default_action: Option<String>,
    /// Extra routes, consulted before the preset's.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RouteRule>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// Methods this rule answers; `["*"]` for any.
    pub methods: Vec<String>,
    /// Path template: literals, `{provider}`, `{name}` and a final `{*path}`.
    pub path: String,
    pub action: String,
    /// Fixed provider for templates without `{provider}`.
    pub provider: Option<String>,
    /// The request names a second resource in its `Destination` header.
    #[serde(default)]
    pub destination: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// A tracing filter such as `info` or `keygate=debug`.
    pub level: Option<String>,
    /// `text` (default) or `json`.
    pub format: Option<String>,
}
