//! The validated config: file < environment (`KEYGATE_<SECTION>_<KEY>`) < command line, turned
//! into typed values. Every problem is collected and reported with where it is, before failing.
//!
//! Each section is read and checked in its own file (`server.rs`, `keys.rs`, `tokens.rs`,
//! `limits.rs`, `routes.rs`), with the shared shapes (durations, addresses, secrets given inline
//! or in a file) in `check.rs`; `file.rs` is the serde model of the TOML file.
//!
//! May import: the settings types of `route`, `model`, `ratelimit`, `audit`, `notify`, `identity::jwt`,
//! `identity::client`.
//! Never `policy`, `manage` or the planes.

mod check;
pub mod file;
mod keys;
mod limits;
mod notify;
mod routes;
mod secret;
mod server;
mod tls;
mod tokens;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use check::{ConfigError, Problem};
use file::FileConfig;
pub use notify::{EmailConfig, NotifyConfig, WebhookConfig, MIN_WEBHOOK_SECRET_LEN};
pub use secret::SecretSource;

use crate::route::RouteTable;

/// Shortest operator token accepted, inline or (checked when it is read) from a file.
pub const MIN_OPERATOR_TOKEN_LEN: usize = 16;

/// Sections of the file; `KEYGATE_<SECTION>_<KEY>` overrides `[section] key`.
const SECTIONS: &[&str] = &[
    "server",
    "database",
    "upstream",
    "routes",
    "log",
    "keys",
    "auth",
    "control",
    "policies",
    "rate_limit",
    "audit",
    "tokens",
    "sessions",
    "tls",
    "notify",
];

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub upstream: UpstreamConfig,
    /// Providers with a server of their own (`[upstreams.<provider>]`).
    pub upstreams: Vec<(String, UpstreamConfig)>,
    pub routes: RouteTable,
    pub log: LogConfig,
    pub keys: KeysConfig,
    /// Failed authentications per client address and minute before 429.
    pub auth_failures_per_minute: u32,
    /// Requests refused 403 per client address and minute before 429.
    pub auth_forbidden_per_minute: u32,
    /// Addresses each per-address failure limiter tracks at most.
    pub auth_limiter_capacity: u64,
    pub operator_token: Option<SecretSource>,
    /// The policy folder.
    pub policy_dir: PathBuf,
    /// The running policies are the newest version published to the database (not the folder,
    /// which `keygate policy publish` reads by default).
    pub policy_published: bool,
    /// Reload on file changes.
    pub policy_watch: bool,
    pub rate_limit: crate::ratelimit::RateLimitConfig,
    pub audit: crate::audit::AuditConfig,
    /// Logins, tokens, sessions and external issuers.
    pub tokens: crate::identity::jwt::TokenSettings,
    /// `[tls]`: HTTPS on the data and control planes.
    pub tls: Option<TlsConfig>,
    /// `[notify]`: key expiry reminders.
    pub notify: Option<NotifyConfig>,
    /// Where the config came from, for messages.
    pub source: Option<PathBuf>,
}

/// `[tls]`: the certificate both planes serve, and what the plain-HTTP listener does.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The plain listener refuses (or redirects) instead of serving.
    pub https_only: bool,
    pub plain_listen: Option<SocketAddr>,
    /// Base of the plain listener's redirects, without a trailing `/`.
    pub redirect_to: Option<String>,
    pub revoke_credentials_sent_in_clear: bool,
    /// The `Strict-Transport-Security` value; `None` sends none.
    pub hsts: Option<String>,
    pub watch: bool,
}

/// TLS to `https://` upstream peers.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTls {
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain and key for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// `[server]`: the listeners and the data plane's connection limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub control_listen: SocketAddr,
    pub threads: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub keepalive_requests: u32,
    pub body_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    /// Peers whose forwarding header names the client, and which header that is.
    pub trusted_proxies: crate::identity::client::TrustedProxies,
    /// `/metrics` on a listener of its own.
    pub metrics_listen: Option<SocketAddr>,
    /// `/metrics` on the control plane needs the operator token.
    pub metrics_operator_only: bool,
    /// How long a stopping keygate lets open requests finish.
    pub shutdown_timeout: Duration,
    /// Where `serve --upgrade` receives the listening sockets of the running keygate.
    pub upgrade_socket: Option<PathBuf>,
    /// Where keygate writes its process id.
    pub pid_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub peers: Vec<SocketAddr>,
    pub health_check_interval: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// For each peer (same order): the name to send as SNI and verify, when it is `https://`.
    pub tls_names: Vec<Option<String>>,
    pub tls: UpstreamTls,
    /// The file holding the `Authorization` value to send the server, if it wants one.
    pub authorization_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct KeysConfig {
    pub style: crate::model::KeyStyle,
    pub pepper: SecretSource,
    pub max_active_per_user: u32,
    pub cache_ttl: Duration,
    pub usage_flush_interval: Duration,
    pub change_poll_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub json: bool,
}

/// Values from the command line, which win over the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub control_listen: Option<String>,
    pub database_url: Option<String>,
    pub peers: Vec<String>,
}

impl Config {
    /// Loads the file (if any), applies `env` and `overrides`, validates everything.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let (text, place) = match path {
            Some(p) => match std::fs::read_to_string(p) {
                Ok(t) => (t, p.display().to_string()),
                Err(e) => {
                    return Err(ConfigError(vec![Problem {
                        place: p.display().to_string(),
                        message: format!("cannot read the file: {e}"),
                    }]))
                }
            },
            None => (String::new(), "defaults".to_owned()),
        };
        let mut config = Config::from_toml(&text, &place, env, overrides)?;
        config.source = path.map(Path::to_path_buf);
        Ok(config)
    }

    /// Parses and validates config text; `place` names it in messages.
    pub fn from_toml(
        text: &str,
        place: &str,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        // The file alone first, so that its errors point at a line.
        if let Err(e) = toml::from_str::<FileConfig>(text) {
            return Err(ConfigError(vec![Problem {
                place: place.to_owned(),
                message: e.to_string().trim_end().replace('\n', "\n    "),
            }]));
        }
        let mut value: toml::Table = toml::from_str(text).unwrap_or_default();
        let mut problems = Vec::new();
        let mut env_names = Vec::new();
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("KEYGATE_") else {
                continue;
            };
            let lower = rest.to_ascii_lowercase();
            let Some((section, key)) = SECTIONS.iter().find_map(|s| {
                lower
                    .strip_prefix(s)
                    .and_then(|k| k.strip_prefix('_'))
                    .map(|k| (*s, k.to_owned()))
            }) else {
                continue;
            };
            let v = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw));
            let table = value
                .entry(section)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = table {
                t.insert(key, v);
            }
            env_names.push(name);
        }
        let file: FileConfig = match toml::Value::Table(value).try_into() {
            Ok(f) => f,
            Err(e) => {
                return Err(ConfigError(vec![Problem {
                    place: format!("environment ({})", env_names.join(", ")),
                    message: e.to_string().trim_end().to_owned(),
                }]))
            }
        };
        let config = validate(file, overrides, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            for p in &mut problems {
                p.place = format!("{place}: {}", p.place);
            }
            Err(ConfigError(problems))
        }
    }
}

fn validate(file: FileConfig, overrides: &Overrides, problems: &mut Vec<Problem>) -> Config {
    let server = server::listeners(&file, overrides, problems);
    let database = server::database(&file, overrides, problems);
    let upstream = server::upstream(&file, overrides, problems);
    let upstreams = server::provider_upstreams(&file, problems);
    let log = server::log(&file, problems);
    let routes = routes::route_table(&file, problems);
    let keys = keys::keys_config(&file, &database.url, problems);
    let operator_token = check::secret(
        problems,
        "control",
        ("operator_token", &file.control.operator_token),
        ("operator_token_file", &file.control.operator_token_file),
        MIN_OPERATOR_TOKEN_LEN,
    );
    Config {
        tokens: tokens::token_settings(&file, problems),
        rate_limit: limits::rate_limit_config(&file, problems),
        audit: limits::audit_config(&file, problems),
        policy_dir: PathBuf::from(
            file.policies
                .dir
                .clone()
                .unwrap_or_else(|| "policies".to_owned()),
        ),
        policy_watch: file.policies.watch.unwrap_or(true),
        policy_published: match file.policies.source.as_deref() {
            None | Some("files") => false,
            Some("database") => true,
            Some(other) => {
                check::problem(
                    problems,
                    "[policies] source",
                    format!("'{other}' is neither \"files\" nor \"database\""),
                );
                false
            }
        },
        keys,
        auth_failures_per_minute: file.auth.failures_per_minute.unwrap_or(20).max(1),
        auth_forbidden_per_minute: file.auth.forbidden_per_minute.unwrap_or(300).max(1),
        auth_limiter_capacity: file.auth.limiter_capacity.unwrap_or(100_000).max(100),
        operator_token,
        server,
        database,
        upstream,
        upstreams,
        routes,
        log,
        tls: tls::tls_config(&file, problems),
        notify: notify::notify_config(&file, problems),
        source: None,
    }
}

impl Config {
    /// Problems that only matter to a serving keygate (not to `migrate` or the admin commands).
    pub fn serve_problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let SecretSource::Missing(why) = &self.keys.pepper {
            out.push(Problem {
                place: "[keys] pepper_file".to_owned(),
                message: (*why).to_owned(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            "test.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            &Overrides::default(),
        )
    }

    #[test]
    fn defaults_are_valid() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.control_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.database.url, "sqlite://keygate.db");
        assert!(!c.routes.routes().is_empty());
    }

    #[test]
    fn unknown_fields_point_at_the_line() {
        let e = load("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n", &[]).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert!(e.0[0].message.contains("line 3"), "{}", e);
        assert!(e.0[0].message.contains("lisen"), "{}", e);
    }

    #[test]
    fn every_problem_is_listed() {
        let text = r#"
[server]
listen = "nowhere"
[upstream]
peers = ["127.0.0.1:7070", "x"]
connect_timeout = "soon"
[routes]
preset = "ftp"
[[routes.rule]]
methods = ["get"]
path = "/v1/{*rest}/x"
action = "read file"
[log]
format = "xml"
"#;
        let e = load(text, &[]).unwrap_err();
        let places: Vec<&str> = e.0.iter().map(|p| p.place.as_str()).collect();
        for want in [
            "[server] listen",
            "[upstream] peers[1]",
            "[upstream] connect_timeout",
            "[routes] preset",
            "[[routes.rule]] #1",
            "[log] format",
        ] {
            assert!(
                places.iter().any(|p| p.ends_with(want)),
                "missing {want} in {e}"
            );
        }
    }

    #[test]
    fn environment_overrides_file_and_cli_overrides_environment() {
        let text =
            "[database]\nurl = \"sqlite://file.db\"\n[server]\nlisten = \"127.0.0.1:1000\"\n";
        let c = load(
            text,
            &[
                ("KEYGATE_DATABASE_URL", "sqlite://env.db"),
                ("KEYGATE_CONFIG", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.database.url, "sqlite://env.db");
        let c = load(
            "",
            &[(
                "KEYGATE_UPSTREAM_PEERS",
                r#"["127.0.0.1:1", "127.0.0.1:2"]"#,
            )],
        )
        .unwrap();
        assert_eq!(c.upstream.peers.len(), 2);
        let o = Overrides {
            database_url: Some("sqlite://cli.db".into()),
            ..Overrides::default()
        };
        let c = Config::from_toml(
            text,
            "t",
            [(
                "KEYGATE_DATABASE_URL".to_string(),
                "sqlite://env.db".to_string(),
            )],
            &o,
        )
        .unwrap();
        assert_eq!(c.database.url, "sqlite://cli.db");
        let e = load("", &[("KEYGATE_SERVER_LISTN", "x")]).unwrap_err();
        assert!(e.to_string().contains("environment"), "{e}");
    }

    #[test]
    fn shared_rate_limits_need_a_redis_url_and_the_instance_count() {
        let c = load(
            "[rate_limit]\nbackend = \"redis\"\ninstances = 3\n",
            &[(
                "KEYGATE_RATE_LIMIT_REDIS_URL",
                "redis://:s3cret@cache:6379/2",
            )],
        )
        .unwrap();
        let shared = c.rate_limit.shared.clone().unwrap();
        assert_eq!((shared.instances, shared.prefix.as_str()), (3, "keygate"));
        // The URL may hold a password: the config's Debug output never shows it.
        assert!(!format!("{c:?}").contains("s3cret"));
        for (bad, says) in [
            ("backend = \"redis\"\ninstances = 3", "needs redis_url"),
            ("backend = \"redis\"\nredis_url = \"redis://c\"", "needs redis_url"),
            ("backend = \"memcached\"", "neither"),
            ("redis_url = \"redis://c\"", "go with backend"),
            (
                "backend = \"redis\"\nredis_url = \"http://c\"\ninstances = 3",
                "redis://",
            ),
            (
                "backend = \"redis\"\nredis_url = \"redis://c\"\ninstances = 0",
                "between 1",
            ),
            (
                "backend = \"redis\"\nredis_url = \"redis://c\"\ninstances = 2\nredis_prefix = \"a b\"",
                "letters",
            ),
        ] {
            let e = load(&format!("[rate_limit]\n{bad}\n"), &[]).unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn tls_and_https_peers_are_read_and_checked() {
        let c = load(
            "[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nplain_listen = \"127.0.0.1:0\"\n\
             hsts_max_age = \"1d\"\nhsts_include_subdomains = true\n\
             [upstream]\npeers = [\"https://localhost:8443\", \"127.0.0.1:7070\"]\n",
            &[],
        )
        .unwrap();
        let tls = c.tls.unwrap();
        assert!(tls.https_only && tls.watch && !tls.revoke_credentials_sent_in_clear);
        assert_eq!(
            tls.hsts.as_deref(),
            Some("max-age=86400; includeSubDomains")
        );
        assert_eq!(
            c.upstream.tls_names,
            [Some("localhost".to_owned()), None],
            "the https peer is verified by its host name"
        );
        let c = load(
            "[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nhsts_max_age = \"0s\"\n\
             [upstream]\npeers = [\"https://10.0.0.5:8443\"]\ntls_server_name = \"storage.internal\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.tls.unwrap().hsts, None);
        assert_eq!(c.upstream.tls_names, [Some("storage.internal".to_owned())]);
        for (bad, place) in [
            ("[tls]\ncert_file = \"c.pem\"\n", "[tls]"),
            (
                "[tls]\ncert_file = \"c\"\nkey_file = \"k\"\nredirect_to = \"http://x\"\n",
                "[tls] redirect_to",
            ),
            (
                "[upstream]\npeers = [\"ftp://x:1\"]\n",
                "[upstream] peers[0]",
            ),
            (
                "[upstream]\ntls_client_cert_file = \"c.pem\"\n",
                "[upstream] tls_client_cert_file",
            ),
        ] {
            let e = load(bad, &[]).unwrap_err();
            assert!(e.0.iter().any(|p| p.place.ends_with(place)), "{bad}: {e}");
        }
    }

    #[test]
    fn the_path_dialect_follows_the_preset_unless_the_upstream_says() {
        use crate::route::PathDialect;
        let dialect = |toml: &str| load(toml, &[]).map(|c| c.routes.dialect());
        assert_eq!(
            dialect("").unwrap(),
            PathDialect::POSIX,
            "the storage-backend"
        );
        assert_eq!(
            dialect("[routes]\npreset = \"webdav\"\n").unwrap(),
            PathDialect::POSIX
        );
        assert_eq!(
            dialect("[routes]\npreset = \"none\"\ndefault_action = \"readFile\"\n").unwrap(),
            PathDialect::STRICT
        );
        assert_eq!(
            dialect("[upstream]\npath_dialect = \"strict\"\n").unwrap(),
            PathDialect::STRICT
        );
        let mut iis = PathDialect::POSIX;
        iis.backslash = false;
        iis.dots = false;
        assert_eq!(
            dialect(
                "[upstream.path_dialect]\nbase = \"posix\"\nbackslash = \"refuse\"\ndots = \"refuse\"\n"
            )
            .unwrap(),
            iis
        );
        for (bad, place) in [
            (
                "[upstream]\npath_dialect = \"windows\"\n",
                "[upstream] path_dialect",
            ),
            (
                "[upstream.path_dialect]\npercent = \"yes\"\n",
                "[upstream] path_dialect.percent",
            ),
        ] {
            let e = dialect(bad).unwrap_err();
            assert!(e.0.iter().any(|p| p.place.ends_with(place)), "{bad}: {e}");
        }
        assert!(dialect("[upstream.path_dialect]\ncase = \"insensitive\"\n").is_err());
    }

    #[test]
    fn providers_may_have_servers_of_their_own_under_a_mount() {
        let c = load(
            "[routes]\npreset = \"webdav\"\nwebdav_mount = \"/dav\"\n\
             [upstreams.photos]\npeers = [\"127.0.0.1:8082\"]\nprefix = \"/library\"\npath_dialect = \"strict\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(c.upstreams[0].0, "photos");
        assert!(c.routes.routes().iter().all(|r| r.forward_tail));
        for (bad, place) in [
            ("[upstreams.Photos]\npeers = [\"127.0.0.1:1\"]\n", "[upstreams.Photos]"),
            ("[upstreams.photos]\n", "[upstreams.photos] peers"),
            (
                "[upstreams.photos]\npeers = [\"127.0.0.1:1\"]\ntls_ca_file = \"ca.pem\"\n",
                "[upstreams.photos] tls_ca_file",
            ),
            (
                "[upstreams.photos]\npeers = [\"127.0.0.1:1\"]\nprefix = \"library\"\n",
                "[upstreams.photos] prefix",
            ),
            (
                "[routes]\nwebdav_mount = \"/dav\"\nwebdav_provider = \"nas\"\npreset = \"webdav\"\n",
                "[routes] webdav_provider",
            ),
            (
                "[[routes.rule]]\nmethods = [\"GET\"]\npath = \"/x/{name}/{*path}\"\naction = \"readFile\"\nforward_tail = true\n",
                "[[routes.rule]] #1",
            ),
            (
                "[[routes.rule]]\nmethods = [\"GET\"]\npath = \"/x/{*path}\"\naction = \"listFolder\"\nancestor_action = \"traverse\"\n",
                "[[routes.rule]] #1",
            ),
            ("[upstream]\nprefix = \"/srv\"\n", "[upstream] prefix"),
            (
                "[routes]\npreset = \"webdav\"\nwebdav_mount = \"/dav\"\ndefault_action = \"readFile\"\n",
                "[routes] default_action",
            ),
            (
                "[[routes.rule]]\nmethods = [\"POST\"]\npath = \"/gql/{provider}\"\ngraphql = true\n[graphql]\nquery = \"readFile\"\nmutation = \"writeFile\"\n",
                "[[routes.rule]] #1",
            ),
        ] {
            let e = load(bad, &[]).unwrap_err();
            assert!(e.0.iter().any(|p| p.place.ends_with(place)), "{bad}: {e}");
        }
    }

    #[test]
    fn every_section_can_be_overridden_from_the_environment() {
        // Each section of the file model, by a key it has; a section missing from SECTIONS
        // would be silently ignored.
        let samples = [
            ("KEYGATE_SERVER_THREADS", "3"),
            ("KEYGATE_DATABASE_MAX_CONNECTIONS", "4"),
            ("KEYGATE_UPSTREAM_CONNECT_TIMEOUT", "7s"),
            ("KEYGATE_ROUTES_PRESET", "webdav"),
            ("KEYGATE_LOG_FORMAT", "json"),
            ("KEYGATE_KEYS_MAX_ACTIVE_PER_USER", "3"),
            ("KEYGATE_AUTH_FAILURES_PER_MINUTE", "9"),
            ("KEYGATE_CONTROL_OPERATOR_TOKEN", "0123456789abcdef-token"),
            ("KEYGATE_POLICIES_DIR", "/etc/keygate/policies"),
            ("KEYGATE_RATE_LIMIT_DEFAULT", "50/10s"),
            ("KEYGATE_AUDIT_OUTPUT", "off"),
            ("KEYGATE_TOKENS_ACCESS_TTL", "5m"),
            ("KEYGATE_SESSIONS_TTL", "1h"),
            ("KEYGATE_TLS_CERT_FILE", "/etc/keygate/tls/cert.pem"),
            // `[tls]` needs both files: its one extra sample.
            ("KEYGATE_TLS_KEY_FILE", "/etc/keygate/tls/key.pem"),
            ("KEYGATE_NOTIFY_CHECK_INTERVAL", "1m"),
            // `[notify]` needs a channel; a nested table is given inline.
            (
                "KEYGATE_NOTIFY_WEBHOOK",
                "{url = \"https://hooks.example.com/keygate\", secret_file = \"/etc/keygate/hook\"}",
            ),
        ];
        assert_eq!(samples.len(), SECTIONS.len() + 2);
        let c = load("", &samples).unwrap();
        assert_eq!(c.server.threads, 3);
        assert_eq!(c.database.max_connections, 4);
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(7));
        assert!(c.routes.routes().iter().any(|r| r.provider.is_some()));
        assert!(c.log.json);
        assert_eq!(c.keys.max_active_per_user, 3);
        assert_eq!(c.auth_failures_per_minute, 9);
        assert!(c.operator_token.is_some());
        assert_eq!(c.policy_dir, PathBuf::from("/etc/keygate/policies"));
        assert_eq!(
            c.tls.as_ref().map(|t| t.key_file.clone()),
            Some(PathBuf::from("/etc/keygate/tls/key.pem"))
        );
        assert_eq!(
            c.rate_limit.default,
            Some(crate::ratelimit::Limit {
                requests: 50,
                window: Duration::from_secs(10)
            })
        );
        assert_eq!(c.audit.output, crate::audit::AuditOutput::Off);
        assert_eq!(c.tokens.access_ttl, Duration::from_secs(300));
        assert_eq!(c.tokens.session_ttl, Duration::from_secs(3600));
        let notify = c.notify.as_ref().expect("[notify]");
        assert_eq!(notify.check_interval, Duration::from_secs(60));
        assert_eq!(notify.reminders, [Duration::from_secs(7 * 86_400)]);
        assert_eq!(
            notify.webhook.as_ref().map(|w| w.url.as_str()),
            Some("https://hooks.example.com/keygate")
        );
    }

    #[test]
    fn notify_settings_are_checked() {
        for (text, place) in [
            ("[notify]\n", "[notify]"),
            (
                "[notify.email]\nhost = \"smtp\"\nfrom = \"not an address\"\n",
                "[notify.email] from",
            ),
            (
                "[notify.email]\nhost = \"smtp\"\nfrom = \"k@example.com\"\nsecurity = \"none\"\nusername = \"u\"\npassword = \"p\"\n",
                "[notify.email] security",
            ),
            (
                "[notify.webhook]\nurl = \"https://hooks.example.com/k\"\nsecret = \"short\"\n",
                "[notify.webhook] secret",
            ),
            (
                "[notify.webhook]\nurl = \"https://hooks.example.com/k\"\n",
                "[notify.webhook]",
            ),
            (
                "[notify]\nreminders = [\"soon\"]\n[notify.webhook]\nurl = \"https://h.example.com\"\nsecret_file = \"/s\"\n",
                "[notify] reminders",
            ),
        ] {
            let e = load(text, &[]).unwrap_err();
            assert!(e.0.iter().any(|p| p.place.ends_with(place)), "{text}: {e}");
        }
        let c = load(
            "[notify]\nreminders = [\"1d\", \"7d\", \"1d\"]\n[notify.email]\nhost = \"smtp.example.com\"\nfrom = \"keygate <keys@example.com>\"\n",
            &[],
        )
        .unwrap();
        let notify = c.notify.unwrap();
        assert_eq!(
            notify.reminders,
            [Duration::from_secs(86_400), Duration::from_secs(7 * 86_400)]
        );
        assert_eq!(
            notify.email.map(|e| e.security),
            Some(crate::notify::SmtpSecurity::StartTls)
        );
    }

    #[test]
    fn token_settings_are_checked() {
        let text = r#"
[tokens]
leeway = "2m"
scoped_default_ttl = "400d"

[sessions]
allowed_origins = ["https://app.example", "app.example/path"]

[[issuers]]
name = "idp"
issuer = "https://idp.example"
audience = "keygate"
jwks_url = "https://idp.example/jwks.json"
algorithms = ["HS256"]

[[issuers]]
name = "both"
issuer = "https://other.example"
audience = "keygate"
jwks_file = "a.json"
jwks_url = "https://other.example/jwks.json"
"#;
        let e = load(text, &[]).unwrap_err().to_string();
        for needle in [
            "[tokens] leeway",
            "[tokens] scoped_default_ttl",
            "allowed_origins[1]",
            "'HS256' is not an asymmetric",
            "needs jwks_file or jwks_url",
        ] {
            assert!(e.contains(needle), "{needle} in {e}");
        }
        let ok = load(
            r#"
[[issuers]]
name = "idp"
issuer = "https://idp.example"
audience = "keygate"
jwks_file = "jwks.json"
algorithms = ["RS256", "ES256"]
user_claim = "sub"

[issuers.subjects]
"00u1" = "ada@example.com"
"#,
            &[],
        )
        .unwrap();
        assert_eq!(ok.tokens.issuers.len(), 1);
        assert_eq!(ok.tokens.issuers[0].user_claim, "sub");
        assert_eq!(ok.tokens.issuers[0].subjects["00u1"], "ada@example.com");
        // A claim the user can change at the provider names nobody unless bound.
        let err = load(
            "[[issuers]]\nname = \"idp\"\nissuer = \"https://idp.example\"\naudience = \"k\"\n\
             jwks_file = \"j.json\"\nuser_claim = \"preferred_username\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("preferred_username"), "{err}");
        assert_eq!(ok.tokens.leeway, Duration::from_secs(30));
    }

    #[test]
    fn rate_limit_rules_are_checked() {
        let text = r#"
[rate_limit]
default = "1000/min"
[[rate_limit.rule]]
name = "uploads"
action = "upload"
limit = "60/min"
[[rate_limit.rule]]
name = "everyone"
limit = "5/s"
[[rate_limit.rule]]
name = "uploads"
scope = "write:everything"
limit = "ten/min"
[audit]
allow_sample_rate = 2.0
"#;
        let e = load(text, &[]).unwrap_err();
        let all = e.to_string();
        for want in [
            "#2 (everyone): needs at least one of",
            "#3 (uploads): rule names must be unique",
            "'ten/min' is not a limit",
            "[audit] allow_sample_rate",
        ] {
            assert!(all.contains(want), "missing {want} in {all}");
        }
        let ok = load(
            "[rate_limit]\ndefault = \"off\"\n[[rate_limit.rule]]\nname = \"up\"\naction = \"upload\"\nlimit = \"2/s\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(ok.rate_limit.default, None);
        assert_eq!(ok.rate_limit.rules[0].limit.requests, 2);
    }

    #[test]
    fn graphql_and_query_parameter_routes_are_checked() {
        let problems = |text: &str| -> String {
            match load(text, &[]) {
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            }
        };
        let route = "[[routes.rule]]\nmethods = [\"POST\"]\npath = \"/graphql\"\ngraphql = true\n";
        assert!(problems(route).contains("[graphql]"));
        let ok = format!("{route}[graphql]\nquery = \"readFile\"\nmutation = \"deleteFile\"\n");
        assert_eq!(problems(&ok), "");
        let c = load(&ok, &[]).unwrap();
        assert!(c.routes.action_names().contains(&"deleteFile".to_owned()));
        assert!(!c.routes.action_names().contains(&"graphql".to_owned()));
        for (bad, why) in [
            ("max_body = 70000", "max_body"),
            ("max_depth = 0", "max_depth"),
            (
                "[graphql.fields]\n\"query\" = { action = \"readFile\" }",
                "query.<field>",
            ),
            (
                "[graphql.fields]\n\"query.f\" = { action = \"readFile\", provider = \"p\" }",
                "no path argument",
            ),
            (
                "[graphql.fields]\n\"query.f\" = { action = \"readFile\", path = \"a..b\" }",
                "not an argument name",
            ),
        ] {
            let text = format!("{ok}{bad}\n");
            assert!(problems(&text).contains(why), "{bad}: {}", problems(&text));
        }
        assert!(problems(&format!(
            "{route}action = \"x\"\n[graphql]\nquery = \"a\"\nmutation = \"b\"\n"
        ))
        .contains("no action"));
        let param = "[[routes.rule]]\nmethods = [\"GET\"]\npath = \"/dl/{*path}\"\naction = \"readFile\"\npath_param = \"path\"\nprovider = \"s3\"\n";
        assert!(problems(param).contains("path_param"));
        let param = param.replace("/dl/{*path}", "/dl");
        assert_eq!(problems(&param), "");
        assert!(problems(&param.replace(
            "provider = \"s3\"",
            "provider_param = \"p\"\nprovider = \"s3\""
        ))
        .contains("provider_param"));
    }

    #[test]
    fn a_move_or_copy_that_may_overwrite_also_needs_delete() {
        use crate::route::RouteInput;
        let c = load("", &[]).unwrap();
        let route = |method: &str, overwrite: Option<&str>| {
            c.routes.route(RouteInput {
                method,
                raw_target: b"/v1/files/local/a.txt",
                destination: Some(b"/v1/files/local/b.txt"),
                overwrite: overwrite.map(str::as_bytes),
                depth: None,
                if_header: None,
                host: None,
            })
        };
        let also = |r: &crate::route::RouteMatch| -> Vec<(String, String)> {
            r.also
                .iter()
                .map(|a| (a.action.to_string(), a.resource.path.clone()))
                .collect()
        };
        let d = |p: &str| ("deleteFile".to_owned(), p.to_owned());
        // Absent means T (RFC 4918): the destination may be replaced, so it may be deleted.
        let m = route("MOVE", None).unwrap();
        assert_eq!(also(&m), [d("/b.txt"), d("/a.txt")]);
        assert_eq!(m.upstream_overwrite, Some("T"));
        let m = route("MOVE", Some("F")).unwrap();
        assert_eq!(also(&m), [d("/a.txt")]);
        assert_eq!(m.upstream_overwrite, Some("F"));
        assert_eq!(also(&route("COPY", Some("t")).unwrap()), [d("/b.txt")]);
        assert!(also(&route("COPY", Some(" F ")).unwrap()).is_empty());
        assert!(matches!(
            route("COPY", Some("yes")),
            Err(crate::refusal::Refusal::BadRequest(_))
        ));
    }

    #[test]
    fn custom_rules_come_first() {
        let text = r#"
[routes]
preset = "none"
[[routes.rule]]
methods = ["PROPFIND"]
path = "/dav/{*path}"
provider = "nas"
action = "listFolder"
"#;
        let c = load(text, &[]).unwrap();
        assert_eq!(c.routes.routes().len(), 1);
        assert_eq!(c.routes.routes()[0].provider.as_deref(), Some("nas"));
    }
}
