//! The validated config: file < environment (`KEYGATE_<SECTION>_<KEY>`) < command line, turned
//! into typed values. Every problem is collected and reported with where it is, before failing.

pub mod file;

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use file::{FileConfig, RouteRule};

use crate::route::{Methods, Route, RouteTable, Template};

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
];

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub control_listen: SocketAddr,
    pub threads: usize,
    pub header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub keepalive_requests: u32,
    pub database: DatabaseConfig,
    pub upstream: UpstreamConfig,
    pub routes: RouteTable,
    pub log: LogConfig,
    pub keys: KeysConfig,
    /// Failed authentications per client address and minute before 429.
    pub auth_failures_per_minute: u32,
    /// Requests refused 403 per client address and minute before 429.
    pub auth_forbidden_per_minute: u32,
    pub operator_token: Option<SecretSource>,
    /// The policy folder.
    pub policy_dir: PathBuf,
    /// Reload on file changes.
    pub policy_watch: bool,
    pub rate_limit: crate::ratelimit::RateLimitConfig,
    pub audit: crate::audit::AuditConfig,
    /// Logins, tokens, sessions and external issuers.
    pub tokens: crate::tokens::TokenSettings,
    /// Where the config came from, for messages.
    pub source: Option<PathBuf>,
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
}

/// A secret given inline or in a file.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    Inline(String),
    File(PathBuf),
    /// A file created with a random secret if it does not exist yet.
    Generated(PathBuf),
    /// Not configured, and nothing sensible to fall back on; says what to set.
    Missing(&'static str),
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("Inline(…)"),
            SecretSource::File(p) => write!(f, "File({})", p.display()),
            SecretSource::Generated(p) => write!(f, "Generated({})", p.display()),
            SecretSource::Missing(why) => write!(f, "Missing({why})"),
        }
    }
}

impl SecretSource {
    /// Reads the secret (creating a generated one, readable by its owner only).
    pub fn load(&self) -> std::io::Result<String> {
        match self {
            SecretSource::Missing(why) => {
                Err(std::io::Error::new(std::io::ErrorKind::NotFound, *why))
            }
            SecretSource::Inline(s) => Ok(s.clone()),
            SecretSource::File(p) => Ok(std::fs::read_to_string(p)?.trim().to_owned()),
            SecretSource::Generated(p) => match std::fs::read_to_string(p) {
                Ok(s) => Ok(s.trim().to_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    use rand::RngCore;
                    let mut bytes = [0u8; 32];
                    rand::rngs::OsRng.fill_bytes(&mut bytes);
                    let secret = crate::keys::hex(&bytes);
                    let mut options = std::fs::OpenOptions::new();
                    options.write(true).create_new(true);
                    #[cfg(unix)]
                    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                    use std::io::Write;
                    options.open(p)?.write_all(secret.as_bytes())?;
                    tracing::info!(path = %p.display(), "created a new key pepper");
                    Ok(secret)
                }
                Err(e) => Err(e),
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct KeysConfig {
    pub style: crate::keys::KeyStyle,
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

/// One problem with the config and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub place: String,
    pub message: String,
}

/// Every problem found while loading a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<Problem>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "the config has {n} problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            writeln!(f, "  {}: {}", p.place, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

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

fn problem(problems: &mut Vec<Problem>, place: impl Into<String>, message: impl Into<String>) {
    problems.push(Problem {
        place: place.into(),
        message: message.into(),
    });
}

fn address(
    problems: &mut Vec<Problem>,
    place: &str,
    raw: Option<&str>,
    default: &str,
) -> SocketAddr {
    let raw = raw.unwrap_or(default);
    match raw.to_socket_addrs().ok().and_then(|mut a| a.next()) {
        Some(a) => a,
        None => {
            problem(
                problems,
                place,
                format!("'{raw}' is not a host:port address"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
    }
}

fn duration(
    problems: &mut Vec<Problem>,
    place: &str,
    raw: Option<&str>,
    default: Duration,
) -> Duration {
    match raw {
        None => default,
        Some(s) => match humantime::parse_duration(s) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                problem(
                    problems,
                    place,
                    format!("'{s}' is not a duration such as '5s' or '2m'"),
                );
                default
            }
        },
    }
}

fn validate(file: FileConfig, overrides: &Overrides, problems: &mut Vec<Problem>) -> Config {
    let s = &file.server;
    let listen = address(
        problems,
        "[server] listen",
        overrides.listen.as_deref().or(s.listen.as_deref()),
        "127.0.0.1:8080",
    );
    let control_listen = address(
        problems,
        "[server] control_listen",
        overrides
            .control_listen
            .as_deref()
            .or(s.control_listen.as_deref()),
        "127.0.0.1:9090",
    );
    if listen.port() != 0 && listen == control_listen {
        problem(
            problems,
            "[server] control_listen",
            "must differ from listen",
        );
    }
    let threads = match s.threads {
        Some(0) => {
            problem(problems, "[server] threads", "must be at least 1");
            1
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let header_timeout = duration(
        problems,
        "[server] header_timeout",
        s.header_timeout.as_deref(),
        Duration::from_secs(10),
    );
    let keepalive_timeout = duration(
        problems,
        "[server] keepalive_timeout",
        s.keepalive_timeout.as_deref(),
        Duration::from_secs(60),
    );
    let keepalive_requests = s.keepalive_requests.unwrap_or(1000);

    let url = overrides
        .database_url
        .clone()
        .or(file.database.url.clone())
        .unwrap_or_else(|| "sqlite://keygate.db".to_owned());
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://"))
    {
        problem(
            problems,
            "[database] url",
            "must start with 'sqlite:' or 'postgres://' (the password, if any, is not shown)",
        );
    }
    let database = DatabaseConfig {
        url,
        max_connections: file.database.max_connections.unwrap_or(10).max(1),
    };

    let u = &file.upstream;
    let raw_peers: Vec<String> = if !overrides.peers.is_empty() {
        overrides.peers.clone()
    } else {
        u.peers
            .clone()
            .unwrap_or_else(|| vec!["127.0.0.1:7070".to_owned()])
    };
    if raw_peers.is_empty() {
        problem(problems, "[upstream] peers", "needs at least one host:port");
    }
    let peers = raw_peers
        .iter()
        .enumerate()
        .map(|(i, p)| address(problems, &format!("[upstream] peers[{i}]"), Some(p), ""))
        .collect();
    let upstream = UpstreamConfig {
        peers,
        health_check_interval: duration(
            problems,
            "[upstream] health_check_interval",
            u.health_check_interval.as_deref(),
            Duration::from_secs(5),
        ),
        connect_timeout: duration(
            problems,
            "[upstream] connect_timeout",
            u.connect_timeout.as_deref(),
            Duration::from_secs(3),
        ),
        read_timeout: duration(
            problems,
            "[upstream] read_timeout",
            u.read_timeout.as_deref(),
            Duration::from_secs(60),
        ),
        write_timeout: duration(
            problems,
            "[upstream] write_timeout",
            u.write_timeout.as_deref(),
            Duration::from_secs(60),
        ),
    };

    let routes = route_table(&file, problems);

    let level = file.log.level.clone().unwrap_or_else(|| "info".to_owned());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        problem(
            problems,
            "[log] level",
            format!("'{level}' is not a log filter"),
        );
    }
    let json = match file.log.format.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => {
            problem(
                problems,
                "[log] format",
                format!("'{other}' is neither 'text' nor 'json'"),
            );
            false
        }
    };

    let keys = keys_config(&file, &database.url, problems);
    let operator_token = match (
        &file.control.operator_token,
        &file.control.operator_token_file,
    ) {
        (Some(_), Some(_)) => {
            problem(
                problems,
                "[control]",
                "give operator_token or operator_token_file, not both",
            );
            None
        }
        (Some(t), None) => {
            if t.len() < 16 {
                problem(
                    problems,
                    "[control] operator_token",
                    "must have at least 16 characters",
                );
            }
            Some(SecretSource::Inline(t.clone()))
        }
        (None, Some(f)) => Some(SecretSource::File(PathBuf::from(f))),
        (None, None) => None,
    };

    let rate_limit = rate_limit_config(&file, problems);
    let audit = audit_config(&file, problems);
    let tokens = token_settings(&file, problems);
    Config {
        tokens,
        rate_limit,
        audit,
        policy_dir: PathBuf::from(
            file.policies
                .dir
                .clone()
                .unwrap_or_else(|| "policies".to_owned()),
        ),
        policy_watch: file.policies.watch.unwrap_or(true),
        keys,
        auth_failures_per_minute: file.auth.failures_per_minute.unwrap_or(20).max(1),
        auth_forbidden_per_minute: file.auth.forbidden_per_minute.unwrap_or(300).max(1),
        operator_token,
        listen,
        control_listen,
        threads,
        header_timeout,
        keepalive_timeout,
        keepalive_requests,
        database,
        upstream,
        routes,
        log: LogConfig { level, json },
        source: None,
    }
}

fn token_settings(file: &FileConfig, problems: &mut Vec<Problem>) -> crate::tokens::TokenSettings {
    use crate::tokens::{IssuerConfig, JwksSource, TokenSettings, MAX_LEEWAY};
    let d = TokenSettings::default();
    let t = &file.tokens;
    let mut ttl = |place: &str, raw: &Option<String>, default| {
        duration(problems, place, raw.as_deref(), default)
    };
    let mobile_ttl = ttl("[tokens] mobile_ttl", &t.mobile_ttl, d.mobile_ttl);
    let access_ttl = ttl("[tokens] access_ttl", &t.access_ttl, d.access_ttl);
    let refresh_ttl = ttl("[tokens] refresh_ttl", &t.refresh_ttl, d.refresh_ttl);
    let scoped_default_ttl = ttl(
        "[tokens] scoped_default_ttl",
        &t.scoped_default_ttl,
        d.scoped_default_ttl,
    );
    let scoped_max_ttl = ttl(
        "[tokens] scoped_max_ttl",
        &t.scoped_max_ttl,
        d.scoped_max_ttl,
    );
    let session_ttl = ttl("[sessions] ttl", &file.sessions.ttl, d.session_ttl);
    let leeway = match t.leeway.as_deref() {
        None => d.leeway,
        Some(raw) => match humantime::parse_duration(raw) {
            Ok(l) if l <= MAX_LEEWAY => l,
            _ => {
                problem(
                    problems,
                    "[tokens] leeway",
                    format!("'{raw}' is not a duration of at most 30s"),
                );
                d.leeway
            }
        },
    };
    if scoped_default_ttl > scoped_max_ttl {
        problem(
            problems,
            "[tokens] scoped_default_ttl",
            "must not exceed scoped_max_ttl",
        );
    }
    let non_empty = |problems: &mut Vec<Problem>,
                     place: &str,
                     v: &Option<String>,
                     default: &str| match v.as_deref().map(str::trim) {
        None => default.to_owned(),
        Some("") => {
            problem(problems, place, "must not be empty");
            default.to_owned()
        }
        Some(v) => v.to_owned(),
    };
    let issuer = non_empty(problems, "[tokens] issuer", &t.issuer, &d.issuer);
    let audience = non_empty(problems, "[tokens] audience", &t.audience, &d.audience);
    let session_cookie = non_empty(
        problems,
        "[sessions] cookie",
        &file.sessions.cookie,
        &d.session_cookie,
    );
    if !session_cookie
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    {
        problem(
            problems,
            "[sessions] cookie",
            "may hold only letters, digits, '-' and '_'",
        );
    }
    let allowed_origins = file.sessions.allowed_origins.clone().unwrap_or_default();
    for (i, o) in allowed_origins.iter().enumerate() {
        let ok = http::Uri::try_from(o.as_str()).is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.authority().is_some()
                && matches!(u.path(), "" | "/")
        });
        if !ok {
            problem(
                problems,
                format!("[sessions] allowed_origins[{i}]"),
                format!("'{o}' is not an origin such as 'https://app.example'"),
            );
        }
    }
    let mut issuers = Vec::new();
    for (i, s) in file.issuers.iter().enumerate() {
        let place = format!("[[issuers]] {i} ({})", s.name);
        let jwks = match (&s.jwks_file, &s.jwks_url) {
            (Some(f), None) => JwksSource::File(f.into()),
            (None, Some(u)) if u.starts_with("https://") || u.starts_with("http://") => {
                JwksSource::Url(u.clone())
            }
            _ => {
                problem(
                    problems,
                    &place,
                    "needs jwks_file or jwks_url (an http(s) address), not both",
                );
                continue;
            }
        };
        let mut algorithms = Vec::new();
        for a in s
            .algorithms
            .clone()
            .unwrap_or_else(|| vec!["RS256".to_owned()])
        {
            match a.parse::<jsonwebtoken::Algorithm>() {
                Ok(
                    jsonwebtoken::Algorithm::HS256
                    | jsonwebtoken::Algorithm::HS384
                    | jsonwebtoken::Algorithm::HS512,
                )
                | Err(_) => problem(
                    problems,
                    format!("{place} algorithms"),
                    format!("'{a}' is not an asymmetric JWS algorithm (RS256, ES256, EdDSA, ...)"),
                ),
                Ok(alg) => algorithms.push(alg),
            }
        }
        if algorithms.is_empty() {
            problem(
                problems,
                format!("{place} algorithms"),
                "needs at least one",
            );
            continue;
        }
        if s.issuer == issuer {
            problem(
                problems,
                format!("{place} issuer"),
                "is keygate's own issuer",
            );
        }
        issuers.push(IssuerConfig {
            name: s.name.clone(),
            issuer: s.issuer.clone(),
            audience: s.audience.clone(),
            jwks,
            algorithms,
            user_claim: s.user_claim.clone().unwrap_or_else(|| "email".to_owned()),
            workspace: s.workspace.clone(),
            refresh_interval: duration(
                problems,
                &format!("{place} jwks_refresh"),
                s.jwks_refresh.as_deref(),
                std::time::Duration::from_secs(600),
            ),
        });
    }
    let a = &file.auth;
    TokenSettings {
        issuer,
        audience,
        leeway,
        mobile_ttl,
        access_ttl,
        refresh_ttl,
        scoped_default_ttl,
        scoped_max_ttl,
        session_ttl,
        session_cookie,
        allowed_origins,
        login_failures_per_account: a
            .login_failures_per_account
            .unwrap_or(d.login_failures_per_account)
            .max(1),
        login_failures_per_address: a
            .login_failures_per_address
            .unwrap_or(d.login_failures_per_address)
            .max(1),
        password_workers: a.password_workers.unwrap_or(d.password_workers).max(1),
        issuers,
    }
}

const PEPPER_REQUIRED: &str =
    "[keys] pepper_file (or KEYGATE_KEYS_PEPPER) is required with PostgreSQL: every instance must hash keys with the same pepper";

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

fn keys_config(file: &FileConfig, db_url: &str, problems: &mut Vec<Problem>) -> KeysConfig {
    use crate::keys::{KeyFormat, KeyStyle};
    let k = &file.keys;
    let format = match k.format.as_deref() {
        None | Some("kg") => KeyFormat::Kg,
        Some("drv") => KeyFormat::Drv,
        Some("fo") => KeyFormat::Fo,
        Some(other) => {
            problem(
                problems,
                "[keys] format",
                format!("'{other}' is not one of 'kg', 'drv', 'fo'"),
            );
            KeyFormat::Kg
        }
    };
    let prefix = k.prefix.clone().unwrap_or_else(|| "kg".to_owned());
    if prefix.is_empty()
        || prefix.len() > 10
        || !prefix.bytes().all(|b| b.is_ascii_alphanumeric())
        || prefix == "drv"
        || prefix == "fo"
    {
        problem(
            problems,
            "[keys] prefix",
            format!("'{prefix}' must be 1 to 10 letters or digits, and not 'drv' or 'fo'"),
        );
    }
    let pepper = match (&k.pepper, &k.pepper_file) {
        (Some(_), Some(_)) => {
            problem(problems, "[keys]", "give pepper or pepper_file, not both");
            SecretSource::Inline(String::new())
        }
        (Some(p), None) => {
            if p.len() < crate::keys::MIN_PEPPER_LEN {
                problem(
                    problems,
                    "[keys] pepper",
                    format!(
                        "must have at least {} characters",
                        crate::keys::MIN_PEPPER_LEN
                    ),
                );
            }
            SecretSource::Inline(p.clone())
        }
        (None, Some(f)) => SecretSource::File(PathBuf::from(f)),
        (None, None) => match db_url
            .strip_prefix("sqlite://")
            .or_else(|| db_url.strip_prefix("sqlite:"))
        {
            Some(path) => {
                let path = path.split('?').next().unwrap_or(path);
                let dir = Path::new(path)
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty());
                SecretSource::Generated(dir.map_or_else(
                    || PathBuf::from("keygate.pepper"),
                    |d| d.join("keygate.pepper"),
                ))
            }
            None => SecretSource::Missing(PEPPER_REQUIRED),
        },
    };
    KeysConfig {
        style: KeyStyle { format, prefix },
        pepper,
        max_active_per_user: k.max_active_per_user.unwrap_or(10).max(1),
        cache_ttl: duration(
            problems,
            "[keys] cache_ttl",
            k.cache_ttl.as_deref(),
            Duration::from_secs(300),
        ),
        usage_flush_interval: duration(
            problems,
            "[keys] usage_flush_interval",
            k.usage_flush_interval.as_deref(),
            Duration::from_secs(5),
        ),
        change_poll_interval: duration(
            problems,
            "[keys] change_poll_interval",
            k.change_poll_interval.as_deref(),
            Duration::from_secs(1),
        ),
    }
}

fn rate_limit_config(
    file: &FileConfig,
    problems: &mut Vec<Problem>,
) -> crate::ratelimit::RateLimitConfig {
    use crate::ratelimit::{Limit, RateLimitConfig, Rule, RuleMatch};
    let r = &file.rate_limit;
    let mut config = RateLimitConfig::default();
    match r.default.as_deref() {
        None => {}
        Some("off") => config.default = None,
        Some(raw) => match Limit::parse(raw) {
            Ok(l) => config.default = Some(l),
            Err(e) => problem(problems, "[rate_limit] default", e),
        },
    }
    for (i, rule) in r.rules.iter().enumerate() {
        let place = format!("[[rate_limit.rule]] #{} ({})", i + 1, rule.name);
        check_name(problems, &place, "rule name", &rule.name);
        if rule.name == "default" || r.rules[..i].iter().any(|o| o.name == rule.name) {
            problem(
                problems,
                &place,
                "rule names must be unique and not 'default'",
            );
        }
        let matches = RuleMatch {
            action: rule.action.clone(),
            scope: rule.scope.clone(),
            workspace: rule.workspace.clone(),
            key: rule.key.clone(),
        };
        if matches == RuleMatch::default() {
            problem(
                problems,
                &place,
                "needs at least one of action, scope, workspace, key (use 'default' for everyone)",
            );
        }
        if let Some(scope) = &rule.scope {
            if !crate::keys::SCOPES.contains(&scope.as_str()) {
                problem(problems, &place, format!("'{scope}' is not a scope"));
            }
        }
        match Limit::parse(&rule.limit) {
            Ok(limit) => config.rules.push(Rule {
                name: rule.name.clone(),
                matches,
                limit,
            }),
            Err(e) => problem(problems, &place, e),
        }
    }
    config
}

fn audit_config(file: &FileConfig, problems: &mut Vec<Problem>) -> crate::audit::AuditConfig {
    use crate::audit::{AuditConfig, AuditOutput};
    let a = &file.audit;
    let mut config = AuditConfig::default();
    if let Some(out) = &a.output {
        config.output = AuditOutput::parse(out);
    }
    if let Some(rate) = a.allow_sample_rate {
        if (0.0..=1.0).contains(&rate) {
            config.allow_sample_rate = rate;
        } else {
            problem(
                problems,
                "[audit] allow_sample_rate",
                "must be between 0.0 and 1.0",
            );
        }
    }
    if let Some(q) = a.queue {
        if q == 0 {
            problem(problems, "[audit] queue", "must be at least 1");
        }
        config.queue = q.max(1);
    }
    config
}

fn check_name(problems: &mut Vec<Problem>, place: &str, what: &str, name: &str) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'));
    if !ok {
        problem(problems, place, format!("'{name}' is not a valid {what}"));
    }
}

fn route_table(file: &FileConfig, problems: &mut Vec<Problem>) -> RouteTable {
    let r = &file.routes;
    let mut rules: Vec<(String, RouteRule)> = r
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| (format!("[[routes.rule]] #{}", i + 1), rule.clone()))
        .collect();
    let preset = r.preset.as_deref().unwrap_or("storage-backend");
    let dav_provider = r
        .webdav_provider
        .clone()
        .unwrap_or_else(|| "dav".to_owned());
    match crate::presets::rules(preset, &dav_provider) {
        Some(preset_rules) => rules.extend(
            preset_rules
                .into_iter()
                .map(|rule| (format!("preset '{preset}' ({})", rule.path), rule)),
        ),
        None => problem(
            problems,
            "[routes] preset",
            format!("'{preset}' is not one of 'storage-backend', 'webdav', 'none'"),
        ),
    }
    let mut routes = Vec::with_capacity(rules.len());
    for (place, rule) in rules {
        let template = match Template::parse(&rule.path) {
            Ok(t) => t,
            Err(e) => {
                problem(problems, &place, e);
                continue;
            }
        };
        check_name(problems, &place, "action name", &rule.action);
        let methods = if rule.methods.iter().any(|m| m == "*") {
            Methods::Any
        } else {
            for m in &rule.methods {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    problem(
                        problems,
                        &place,
                        format!("'{m}' is not an upper-case HTTP method"),
                    );
                }
            }
            Methods::List(rule.methods.clone())
        };
        if rule.methods.is_empty() {
            problem(problems, &place, "needs at least one method");
        }
        if let Some(p) = &rule.provider {
            check_name(problems, &place, "provider name", p);
            if template.has_provider() {
                problem(
                    problems,
                    &place,
                    "names a provider and has {provider} in its path",
                );
            }
        }
        routes.push(Route {
            methods,
            template,
            action: Arc::from(rule.action.as_str()),
            provider: rule.provider.as_deref().map(Arc::from),
            destination: rule.destination,
        });
    }
    let default_action = r.default_action.as_deref().map(|a| {
        check_name(problems, "[routes] default_action", "action name", a);
        Arc::from(a)
    });
    RouteTable::new(routes, default_action)
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
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.control_listen.to_string(), "127.0.0.1:9090");
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
        ];
        assert_eq!(samples.len(), SECTIONS.len());
        let c = load("", &samples).unwrap();
        assert_eq!(c.threads, 3);
        assert_eq!(c.database.max_connections, 4);
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(7));
        assert!(c.routes.routes().iter().any(|r| r.provider.is_some()));
        assert!(c.log.json);
        assert_eq!(c.keys.max_active_per_user, 3);
        assert_eq!(c.auth_failures_per_minute, 9);
        assert!(c.operator_token.is_some());
        assert_eq!(c.policy_dir, PathBuf::from("/etc/keygate/policies"));
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
user_claim = "preferred_username"
"#,
            &[],
        )
        .unwrap();
        assert_eq!(ok.tokens.issuers.len(), 1);
        assert_eq!(ok.tokens.issuers[0].user_claim, "preferred_username");
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
            "'write:everything' is not a scope",
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
