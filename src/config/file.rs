//! The TOML file model: what an operator writes. Every table denies unknown fields.

use serde::Deserialize;

pub use crate::route::presets::RouteRule;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub database: DatabaseSection,
    #[serde(default)]
    pub upstream: UpstreamSection,
    /// A provider's own upstream (`[upstreams.photos]`), with the keys of `[upstream]`.
    #[serde(default)]
    pub upstreams: std::collections::BTreeMap<String, UpstreamSection>,
    #[serde(default)]
    pub routes: RoutesSection,
    /// How `graphql` routes are read and authorized.
    pub graphql: Option<GraphqlSection>,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub keys: KeysSection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub control: ControlSection,
    #[serde(default)]
    pub policies: PoliciesSection,
    #[serde(default)]
    pub rate_limit: RateLimitSection,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default)]
    pub tokens: TokensSection,
    #[serde(default)]
    pub sessions: SessionsSection,
    /// HTTPS on the data and control planes.
    pub tls: Option<TlsSection>,
    /// Key expiry reminders by email and webhook.
    pub notify: Option<NotifySection>,
    /// External OIDC issuers whose tokens are accepted as users.
    #[serde(default)]
    pub issuers: Vec<IssuerSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensSection {
    /// `iss` of keygate's JWTs (default `keygate`).
    pub issuer: Option<String>,
    /// `aud` of keygate's JWTs (default `keygate`).
    pub audience: Option<String>,
    /// Clock skew allowed when checking `exp` and `nbf` (default and most `30s`).
    pub leeway: Option<String>,
    /// Lifetime of a mobile login's JWT (default `30d`).
    pub mobile_ttl: Option<String>,
    /// Lifetime of an access token (default `10m`).
    pub access_ttl: Option<String>,
    /// Lifetime of a refresh token; each refresh starts a new one (default `30d`).
    pub refresh_ttl: Option<String>,
    /// Lifetime of a scoped token minted without an expiry (default `365d`).
    pub scoped_default_ttl: Option<String>,
    /// Longest lifetime a scoped token may ask for (default `365d`).
    pub scoped_max_ttl: Option<String>,
    /// Scoped tokens one user may hold unexpired and unrevoked at once (default 20): each has
    /// rate-limit counters of its own.
    pub max_scoped_per_user: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsSection {
    /// Lifetime of a browser session (default `12h`).
    pub ttl: Option<String>,
    /// The cookie's name (default `__Host-keygate_session`).
    pub cookie: Option<String>,
    /// Origins (`https://app.example`) whose pages may send state-changing requests with
    /// the cookie; unset: only the request's own origin.
    pub allowed_origins: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSection {
    /// Names the issuer in listings and logs.
    pub name: String,
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// The `aud` its tokens must carry.
    pub audience: String,
    /// A JWKS file, or
    pub jwks_file: Option<String>,
    /// a JWKS URL (fetched at start and every `jwks_refresh`).
    pub jwks_url: Option<String>,
    /// Default `10m`.
    pub jwks_refresh: Option<String>,
    /// Accepted algorithms (default `["RS256"]`); never `none` or an HMAC algorithm.
    pub algorithms: Option<Vec<String>>,
    /// The claim naming the keygate user: `email` (default; needs `email_verified: true`), or
    /// another (such as `sub`) whose values `subjects` binds to users.
    pub user_claim: Option<String>,
    /// `claim value = "user email"`: the users that values of `user_claim` stand for.
    pub subjects: Option<std::collections::HashMap<String, String>>,
    /// The workspace its users act in (default: the user's only workspace).
    pub workspace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Requests per principal (key, token or user) and window, such as `1000/min` (the
    /// default) or `100/10s`; `off` for no default limit.
    pub default: Option<String>,
    /// Rules that override the default; the first that matches a request applies.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RateLimitRule>,
    /// `local` (the default: each instance counts on its own) or `redis` (every instance shares
    /// the limits and the failure throttles through `redis_url`).
    pub backend: Option<String>,
    /// `redis://[:PASSWORD@]HOST[:PORT][/DB]` or `rediss://…`, with `backend = "redis"`.
    pub redis_url: Option<String>,
    /// How many instances share the limits, with `backend = "redis"`: while Redis is
    /// unreachable each instance allows this share of every limit.
    pub instances: Option<u32>,
    /// Begins every Redis key keygate writes (default `keygate`): several clusters may share
    /// one Redis with prefixes of their own.
    pub redis_prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitRule {
    /// Names the rule in `RateLimit-Policy` and in metrics.
    pub name: String,
    /// Such as `100/min`.
    pub limit: String,
    /// Applies to requests of this action (a route's action).
    pub action: Option<String>,
    /// Applies to principals holding this scope.
    pub scope: Option<String>,
    /// Applies to principals of this workspace (its slug).
    pub workspace: Option<String>,
    /// Applies to this key (its id).
    pub key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// `stdout` (default), `stderr`, `off`, or a file path to append JSON lines to.
    pub output: Option<String>,
    /// Share of allowed requests logged, 0.0 (default) to 1.0; every deny is logged.
    pub allow_sample_rate: Option<f64>,
    /// Events waiting for the writer before new ones are dropped and counted (default 16384).
    pub queue: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesSection {
    /// The policy folder: one .cedarschema, the .cedar policies, tests/ (default `policies`).
    pub dir: Option<String>,
    /// Reload when a file in the folder changes (default true).
    pub watch: Option<bool>,
    /// `files` (the default: the folder above) or `database` (the newest version published
    /// with `keygate policy publish`, the same on every instance).
    pub source: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    /// Shape of new keys: `kg` (default), `drv` (Drivebase) or `fo` (File Organizer).
    pub format: Option<String>,
    /// Prefix of `kg`-format keys (default `kg`).
    pub prefix: Option<String>,
    /// The server-side secret keys are hashed with (at least 32 bytes). Prefer `pepper_file`.
    pub pepper: Option<String>,
    /// A file holding the pepper. Without `pepper` or `pepper_file`, a SQLite deployment
    /// creates `keygate.pepper` beside its database on first start.
    pub pepper_file: Option<String>,
    /// Most active keys one user may hold (default 10).
    pub max_active_per_user: Option<u32>,
    /// How long a verified key stays cached (default `5m`).
    pub cache_ttl: Option<String>,
    /// How often usage counters are written to the database (default `5s`).
    pub usage_flush_interval: Option<String>,
    /// How often key changes made elsewhere (CLI, other instances) are picked up (default `1s`).
    pub change_poll_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Failed authentications one client address may make per minute before it gets 429.
    pub failures_per_minute: Option<u32>,
    /// Requests refused 403 one client address may have per minute before it gets 429.
    pub forbidden_per_minute: Option<u32>,
    /// Failed logins one account may have per 15 minutes before it gets 429 (default 5).
    pub login_failures_per_account: Option<u32>,
    /// Failed logins one client address may have per minute before it gets 429 (default 10).
    pub login_failures_per_address: Option<u32>,
    /// Password verifications run at once (default: the number of cores).
    pub password_workers: Option<usize>,
    /// Logins waiting for a password worker before more are answered 503 (default 64).
    pub password_queue: Option<usize>,
    /// Addresses or accounts each failure limiter tracks at most (default 100000).
    pub limiter_capacity: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// A token for automation that acts as a workspace admin on the control plane.
    pub operator_token: Option<String>,
    /// A file holding the operator token.
    pub operator_token_file: Option<String>,
    /// Who may read `/metrics` on the control plane: `public` (default) or `operator`.
    pub metrics: Option<String>,
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
    /// How long a client has to send a whole request header before the connection is
    /// closed (default 10s), on both planes.
    pub header_timeout: Option<String>,
    /// Longest a connection may stay idle between requests.
    pub keepalive_timeout: Option<String>,
    /// Requests served on one connection before it is closed.
    pub keepalive_requests: Option<u32>,
    /// Longest pause between two reads of a request body, or two writes of a response
    /// (default 30s).
    pub body_timeout: Option<String>,
    /// Connections each plane holds open at once (default 4096); more are answered 503.
    pub max_connections: Option<usize>,
    /// Connections one client address (an IPv6 /64) may hold on each plane (default 128).
    pub max_connections_per_address: Option<usize>,
    /// A listener of its own for `/metrics` (then the control plane does not serve it).
    pub metrics_listen: Option<String>,
    /// Load balancers and TLS terminators (CIDRs) whose `X-Forwarded-For`/`Forwarded` are
    /// believed; from any other peer those headers are ignored (default: none).
    pub trusted_proxies: Option<Vec<String>>,
    /// The header the trusted proxies write the client into: `x-forwarded-for` (default) or
    /// `forwarded`. Only that one is read.
    pub forwarded_header: Option<String>,
    /// How long a stopping keygate lets open requests finish (default 30s).
    pub shutdown_timeout: Option<String>,
    /// The Unix socket a new keygate (`serve --upgrade`) receives the listening sockets on.
    pub upgrade_socket: Option<String>,
    /// Where keygate writes its process id; `serve --upgrade` signals the process named there.
    pub pid_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The certificate chain (PEM, leaf first).
    pub cert_file: Option<String>,
    /// Its private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_file: Option<String>,
    /// Refuse credentials over plain HTTP (default true).
    pub https_only: Option<bool>,
    /// A plain-HTTP listener beside the data plane's HTTPS one.
    pub plain_listen: Option<String>,
    /// The base of redirects from the plain listener, e.g. `https://files.example.com`
    /// (default: the request's host, with the data plane's port).
    pub redirect_to: Option<String>,
    /// Revoke a valid API key presented over plain HTTP (default false).
    pub revoke_credentials_sent_in_clear: Option<bool>,
    /// `Strict-Transport-Security` max-age (default `365d`; `0s` sends none).
    pub hsts_max_age: Option<String>,
    /// Add `includeSubDomains` (default false).
    pub hsts_include_subdomains: Option<bool>,
    /// Reload the certificate when its files change (default true; SIGHUP always reloads).
    pub watch: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    /// How long before a key expires its owner is reminded (default `["7d"]`).
    pub reminders: Option<Vec<String>>,
    /// How often keygate looks for keys due a reminder (default `10m`).
    pub check_interval: Option<String>,
    /// The web console's address, linked from the email (`https://keys.example.com/console/`).
    pub console_url: Option<String>,
    pub email: Option<EmailSection>,
    pub webhook: Option<WebhookSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSection {
    /// The SMTP server.
    pub host: Option<String>,
    /// Default 587 (`starttls`), 465 (`tls`), 25 (`none`).
    pub port: Option<u16>,
    /// `starttls` (default), `tls`, or `none` (a relay on this machine only).
    pub security: Option<String>,
    /// The sender, `keygate <keys@example.com>`.
    pub from: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// Where the events are posted (`https://…`).
    pub url: Option<String>,
    /// The HMAC key the receiver verifies `X-Keygate-Signature` with (at least 32 characters).
    pub secret: Option<String>,
    pub secret_file: Option<String>,
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
    /// CA bundle (PEM) that `https://` peers are verified against (default: the system's).
    pub tls_ca_file: Option<String>,
    /// The name sent as SNI and verified in `https://` peers' certificates (default: each
    /// peer's host).
    pub tls_server_name: Option<String>,
    /// A client certificate chain and key (PEM) for mutual TLS to the backend.
    pub tls_client_cert_file: Option<String>,
    pub tls_client_key_file: Option<String>,
    /// What the backend does with `%`, `;`, `\\` and other characters some servers read
    /// specially: `"posix"`, `"strict"`, or a table saying it per character.
    pub path_dialect: Option<DialectSpec>,
    /// The folder on the server a mounted provider's tree lives in (`/remote.php/dav/files/
    /// alice`): what a route that forwards only its `{*path}` puts before it. Default `/`.
    pub prefix: Option<String>,
    /// A file holding the `Authorization` value keygate sends this server (`Basic …` of a
    /// service account): for servers that want credentials of their own, such as Nextcloud.
    pub authorization_file: Option<String>,
}

/// `path_dialect = "posix"`, or `[upstream.path_dialect]` with `base = "strict"` and a value
/// of `"literal"` or `"refuse"` for some of `percent`, `semicolon`, `backslash`, `lookalikes`,
/// `controls` and `dots`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum DialectSpec {
    Named(String),
    Table(DialectTable),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialectTable {
    pub base: Option<String>,
    pub percent: Option<String>,
    pub semicolon: Option<String>,
    pub backslash: Option<String>,
    pub lookalikes: Option<String>,
    pub controls: Option<String>,
    pub dots: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesSection {
    /// `storage-backend` (default), `webdav` or `none`.
    pub preset: Option<String>,
    /// The provider a WebDAV mount maps to (preset `webdav`).
    pub webdav_provider: Option<String>,
    /// Serve every provider's WebDAV server under `<mount>/<provider>/` (preset `webdav`)
    /// instead of one provider at `/`.
    pub webdav_mount: Option<String>,
    /// Action for requests no route matches; unset means 404.
    pub default_action: Option<String>,
    /// Extra routes, consulted before the preset's.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RouteRule>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphqlSection {
    /// Largest body read, in bytes (default and most 65536).
    pub max_body: Option<usize>,
    /// How long the whole body may take to arrive (default `10s`).
    pub body_timeout: Option<String>,
    /// Deepest nesting of selection sets, fragments included (default 15).
    pub max_depth: Option<usize>,
    /// Most aliases, counted per use of a fragment (default 30).
    pub max_aliases: Option<usize>,
    /// Most fields, counted per use of a fragment (default 1000, at most 10000).
    pub max_fields: Option<usize>,
    /// Most root fields, each one decision (default 20).
    pub max_root_fields: Option<usize>,
    /// Accept subscriptions (default false).
    pub subscriptions: Option<bool>,
    /// Accept requests with a persisted-query hash when they also carry the document (default
    /// false).
    pub persisted_queries: Option<bool>,
    /// The action of a query's (mutation's, subscription's) root field without a rule.
    pub query: Option<String>,
    pub mutation: Option<String>,
    pub subscription: Option<String>,
    /// Rules by `"<operation type>.<field>"`.
    #[serde(default)]
    pub fields: std::collections::BTreeMap<String, GraphqlFieldSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphqlFieldSection {
    pub action: String,
    /// The argument naming the provider (`providerId`, `input.providerId`).
    pub provider: Option<String>,
    /// The argument naming the path the field acts on.
    pub path: Option<String>,
    /// The argument naming a second path (a move's target), decided with the same action.
    pub destination: Option<String>,
    /// The argument giving a new name in the same folder (a rename), decided likewise.
    pub new_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// A tracing filter such as `info` or `keygate=debug`.
    pub level: Option<String>,
    /// `text` (default) or `json`.
    pub format: Option<String>,
}
