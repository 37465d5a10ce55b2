//! Process wiring for `keygate serve`: builds every part from the config, binds both listeners
//! (port 0 picks a free port; the chosen addresses are printed), feeds every data-plane
//! connection to pingora's HTTP proxy (`accept.rs`) and serves the control plane beside it on the
//! caller's runtime, runs the background tasks (`tasks.rs`) on a runtime of their own
//! (`Background`), and shuts down gracefully.
//!
//! May import everything below it; only `commands` and `main.rs` import it.

mod accept;
mod buffered;
mod control_plane;
mod plain;
mod tasks;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pingora::server::configuration::ServerConf;
use pingora::services::background::BackgroundService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use accept::{accept_loop, ConnLimits, ConnSettings};

use tasks::{count_expiring_keys, flush_usage, purge_tokens, reload_on_change, reload_on_signal};

use crate::audit::AuditLog;
use crate::cluster::ChangeFeed;
use crate::config::Config;
use crate::control::{self, ControlState, MetricsAccess};
use crate::identity::jwt::Tokens;
use crate::identity::{Identity, IdentityConfig};
use crate::manage::logins::Auth;
use crate::manage::KeyManager;
use crate::model::Pepper;
use crate::policy::PolicyEngine;
use crate::proxy::upstream::Upstreams;
use crate::proxy::Keygate;
use crate::ratelimit::RateLimiter;
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::usage::UsageRecorder;

pub use plain::SENT_IN_CLEAR;

/// A running keygate: its addresses and the handle that stops it.
pub struct Running {
    pub data_addr: SocketAddr,
    pub control_addr: SocketAddr,
    /// `[server] metrics_listen`, when configured.
    pub metrics_addr: Option<SocketAddr>,
    /// `[tls] plain_listen`, when configured.
    pub plain_addr: Option<SocketAddr>,
    /// The served certificate, when `[tls]` is configured.
    pub certificates: Option<Arc<crate::tls::Certificates>>,
    /// The listening sockets, by name, for a hand-over to a new keygate.
    sockets: upgrade::Sockets,
    /// The keygate this one took the sockets from, to retire once this one serves.
    pub replaces: Option<i32>,
    upgrade_socket: Option<std::path::PathBuf>,
    drain: Duration,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    store: Store,
    usage: Arc<UsageRecorder>,
    audit: Arc<AuditLog>,
    /// Dropped last: the tasks above run on it.
    background: Background,
}

/// The runtime of keygate's own periodic work: the change feed, the polls, the usage flush, the
/// token purge, the reload watchers and the upstream health checks. Its thread keeps that work
/// from sitting in front of a client's request on the data plane's workers.
///
/// What a client can reach stays on the data plane's runtime: the control plane (its health
/// probes then answer for the workers that serve requests), the metrics and plain listeners, and
/// the Redis watcher, whose connection carries the data plane's calls. A PostgreSQL connection
/// the pool opened for a task here is driven by this thread when a request later borrows it;
/// nothing a client sends runs here, so the thread stays idle but for its periodic work.
struct Background(Option<tokio::runtime::Runtime>);

impl Background {
    fn start() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("keygate-background")
            .enable_all()
            .build()
            .context("cannot start the background runtime")?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("running until dropped").handle()
    }

    /// Stops the runtime, giving its blocking work up to `timeout`, off the caller's workers.
    async fn stop(mut self, timeout: Duration) {
        if let Some(runtime) = self.0.take() {
            let _ = tokio::task::spawn_blocking(move || runtime.shutdown_timeout(timeout)).await;
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        // Never blocks: a runtime may not wait for its threads from inside another runtime.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Running {
    /// Stops accepting, lets in-flight requests finish (up to a deadline), closes the database.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let drained = tokio::time::timeout(self.drain, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown: in-flight requests did not finish in time");
            self.tasks.abort_all();
        }
        if let Err(e) = self.usage.flush(&self.store).await {
            tracing::error!(error = %e, "shutdown: could not write the last usage counts");
        }
        self.store.close().await;
        // The audit writer is a thread of its own: wait for it off the runtime's threads.
        let audit = self.audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.drain(Duration::from_secs(5))).await;
        self.background.stop(Duration::from_secs(1)).await;
    }

    /// Hands the listening sockets to a new keygate waiting on `[server] upgrade_socket`
    /// (`serve --upgrade`). This keygate goes on accepting until the new one, once it serves,
    /// sends SIGTERM.
    pub async fn hand_over(&self) -> anyhow::Result<()> {
        let path = self
            .upgrade_socket
            .clone()
            .context("an upgrade needs [server] upgrade_socket")?;
        let sockets = self.sockets.clone();
        tokio::task::spawn_blocking(move || sockets.send(&path))
            .await
            .context("the hand-over did not finish")?
    }
}

/// Where the listening sockets come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    /// Bind the configured addresses.
    Bind,
    /// Receive them from the running keygate over `[server] upgrade_socket` (`serve --upgrade`;
    /// needs `pid_file` too); a listener the old one did not have is bound.
    Inherit,
}

/// Opens the database, binds the listeners and starts serving on the current runtime.
pub async fn start(config: &Config, listen: Listen) -> anyhow::Result<Running> {
    let store = Store::open(&config.database.url, config.database.max_connections)
        .await
        .context("cannot open the database")?;
    start_with_store(config, store, listen).await
}

/// The pepper of the config, read (or created) and checked.
pub fn load_pepper(config: &Config) -> anyhow::Result<Pepper> {
    let secret = config
        .keys
        .pepper
        .load()
        .context("cannot read the key pepper")?;
    Pepper::new(secret.as_bytes()).map_err(|e| anyhow::anyhow!("invalid key pepper: {e}"))
}

/// The policy set of the config, checked to declare every action the route table and keygate's
/// control plane name.
pub fn load_policies(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<PolicyEngine>> {
    let engine = PolicyEngine::load(&config.policy_dir, metrics).map_err(|e| {
        anyhow::anyhow!(
            "the policies in {} are not valid:\n{e}",
            config.policy_dir.display()
        )
    })?;
    require_config(&engine, config)
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.policy_dir.display()))?;
    Ok(Arc::new(engine))
}

/// The newest policy version published to the database (`[policies] source = "database"`).
/// One this instance cannot run (it lacks an action this instance's route table needs, say) is
/// refused: keygate does not start on an older version that may allow what the newest forbids
/// (the running instances keep the last good one, and say so).
pub async fn load_published_policies(
    config: &Config,
    store: &Store,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Arc<PolicyEngine>> {
    let newest = store
        .newest_policy_version()
        .await
        .context("cannot read the published policies")?
        .context(
            "[policies] source = \"database\", but no policy version was published: publish one \
             with `keygate policy publish DIR`",
        )?;
    let published = store
        .policy_version(newest)
        .await
        .context("cannot read the published policies")?
        .with_context(|| format!("policy version {newest} vanished"))?;
    let refused = |e: String| {
        anyhow::anyhow!(
            "published policy version {newest} cannot run here (publish a fixed version, or \
             `keygate policy rollback` to a good one):\n{e}"
        )
    };
    let engine = PolicyEngine::load_published(newest, &published.files, metrics)
        .map_err(|e| refused(e.to_string()))?;
    require_config(&engine, config).map_err(|e| refused(e.to_string()))?;
    engine.note_running();
    Ok(Arc::new(engine))
}

/// Requires of `engine`'s set, now and on every reload, what the config needs: every action of
/// the route table and of keygate itself, every scope a rate-limit rule names (a rule for a
/// scope no key can hold would never match).
pub fn require_config(engine: &PolicyEngine, config: &Config) -> anyhow::Result<()> {
    engine
        .require_actions(
            config
                .routes
                .action_names()
                .into_iter()
                .chain(
                    crate::policy::BUILT_IN_ACTIONS
                        .iter()
                        .map(|a| (*a).to_owned()),
                )
                .collect(),
        )
        .map_err(anyhow::Error::msg)?;
    engine
        .require_scopes(
            config
                .rate_limit
                .rules
                .iter()
                .filter_map(|r| r.matches.scope.clone())
                .collect(),
        )
        .map_err(anyhow::Error::msg)
}

/// The rate-limit settings with each rule's scope as the policies name it (a rule may use the
/// deployment's `@scope("…")` spelling; keys hold the names).
fn scope_names_in(
    mut settings: crate::ratelimit::RateLimitConfig,
    policy: &PolicyEngine,
) -> crate::ratelimit::RateLimitConfig {
    let loaded = policy.current();
    for rule in &mut settings.rules {
        if let Some(scope) = &mut rule.matches.scope {
            if let Some(name) = loaded.scope_named(scope) {
                *scope = name.to_owned();
            }
        }
    }
    settings
}

/// The key manager for a process that is not serving (the CLI).
pub fn key_manager(config: &Config, store: Store) -> anyhow::Result<KeyManager> {
    Ok(KeyManager {
        policy: load_policies(config, Arc::new(Metrics::new()))?,
        store,
        style: config.keys.style.clone(),
        pepper: load_pepper(config)?,
        max_active_per_user: config.keys.max_active_per_user,
        identity: None,
        usage: None,
    })
}

pub async fn start_with_store(
    config: &Config,
    store: Store,
    listen: Listen,
) -> anyhow::Result<Running> {
    let metrics = Arc::new(Metrics::new());
    let usage = Arc::new(UsageRecorder::default());
    let pepper = load_pepper(config)?;
    // The policies first: a keygate that cannot run them must not have written anything.
    let policy = if config.policy_published {
        load_published_policies(config, &store, metrics.clone()).await?
    } else {
        load_policies(config, metrics.clone())?
    };
    let shared_limits = match &config.rate_limit.shared {
        Some(shared) => Some(
            crate::ratelimit::shared::Shared::new(shared, metrics.clone())
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let tokens = Arc::new(
        Tokens::open(store.clone(), &pepper, config.tokens.clone())
            .await
            .context("cannot load the token signing keys")?
            .with_metrics(metrics.clone()),
    );
    let identity = Arc::new(Identity::new(
        store.clone(),
        pepper.clone(),
        &IdentityConfig {
            style: config.keys.style.clone(),
            session_cookie: Some(config.tokens.session_cookie.clone()),
            allowed_origins: config.tokens.allowed_origins.clone(),
            cache_ttl: config.keys.cache_ttl,
            cache_capacity: 100_000,
            failures_per_minute: config.auth_failures_per_minute,
            forbidden_per_minute: config.auth_forbidden_per_minute,
            limiter_capacity: config.auth_limiter_capacity,
            shared_limits: shared_limits.clone(),
        },
        Some(tokens.clone()),
        usage.clone(),
        metrics.clone(),
    ));
    let keys = Arc::new(KeyManager {
        policy: policy.clone(),
        store: store.clone(),
        style: config.keys.style.clone(),
        pepper: pepper.clone(),
        max_active_per_user: config.keys.max_active_per_user,
        identity: Some(identity.clone()),
        usage: Some(usage.clone()),
    });
    let auth = Arc::new(Auth::new(
        store.clone(),
        pepper,
        tokens.clone(),
        identity.clone(),
        keys.clone(),
        metrics.clone(),
    ));
    policy.set_providers(
        store
            .provider_directory()
            .await
            .context("cannot read the providers")?,
    );
    let operator_token = match &config.operator_token {
        Some(source) => {
            let token = source.load().context("cannot read the operator token")?;
            // The file's contents are checked like an inline token: an empty or short one
            // would let anyone act as a workspace admin everywhere.
            if token.chars().count() < crate::config::MIN_OPERATOR_TOKEN_LEN {
                anyhow::bail!(
                    "the operator token must have at least {} characters",
                    crate::config::MIN_OPERATOR_TOKEN_LEN
                );
            }
            Some(Arc::<str>::from(token))
        }
        None => None,
    };
    let reminders = config
        .notify
        .as_ref()
        .map(|n| tasks::reminders(n, store.clone(), metrics.clone()))
        .transpose()?;
    let upstream = Arc::new(
        Upstreams::new(&config.upstream, &config.upstreams).context("invalid upstream peers")?,
    );
    let audit = Arc::new(
        AuditLog::start(&config.audit, metrics.clone()).context("cannot open the audit log")?,
    );
    let certificates = match &config.tls {
        Some(tls) => Some(crate::tls::Certificates::open(tls, metrics.clone())?),
        None => None,
    };
    let server_tls = match &certificates {
        Some(c) => Some(c.server_config()?),
        None => None,
    };
    let hsts = config
        .tls
        .as_ref()
        .and_then(|t| t.hsts.as_deref())
        .map(http::HeaderValue::from_str)
        .transpose()
        .context("[tls] hsts")?;
    let changes = Arc::new(ChangeFeed::new(
        store.clone(),
        identity.clone(),
        policy.clone(),
        tokens.clone(),
        metrics.clone(),
        config.keys.change_poll_interval,
    ));
    changes
        .prime()
        .await
        .context("cannot read where the change feed starts")?;
    let background = Background::start()?;
    // Everything that can fail has been checked: only now take the sockets, so that a new
    // keygate that cannot start never leaves an inherited socket without an acceptor.
    let mut wanted = vec![
        ("data", config.server.listen),
        ("control", config.server.control_listen),
    ];
    if let Some(addr) = config.server.metrics_listen {
        wanted.push(("metrics", addr));
    }
    if let Some(addr) = config.tls.as_ref().and_then(|t| t.plain_listen) {
        wanted.push(("plain", addr));
    }
    let (mut listeners, sockets, replaces) = match listen {
        Listen::Bind => {
            let (listeners, sockets) = upgrade::bind(&wanted).await?;
            (listeners, sockets, None)
        }
        Listen::Inherit => {
            let (Some(path), Some(pid_file)) =
                (&config.server.upgrade_socket, &config.server.pid_file)
            else {
                anyhow::bail!("serve --upgrade needs [server] upgrade_socket and pid_file");
            };
            let inherited = upgrade::receive(path, &wanted, pid_file).await?;
            (
                inherited.listeners,
                inherited.sockets,
                Some(inherited.previous),
            )
        }
    };
    let mut take = |name: &str| listeners.remove(name);
    let data = take("data").context("no data-plane listener")?;
    let control = take("control").context("no control-plane listener")?;
    let metrics_listener = take("metrics");
    let plain_listener = take("plain");
    let data_addr = data.local_addr()?;
    let control_addr = control.local_addr()?;
    let metrics_addr = metrics_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let plain_addr = plain_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();

    for balancer in upstream.balancers() {
        let rx = shutdown_rx.clone();
        tasks.spawn_on(async move { balancer.start(rx).await }, background.handle());
    }

    tasks.spawn_on(
        changes.clone().run(shutdown_rx.clone()),
        background.handle(),
    );
    if let Some(shared) = &shared_limits {
        // Not background work: its connection, made on first use, carries the data plane's
        // calls to Redis, and it is made where this runs.
        tasks.spawn(shared.clone().run(shutdown_rx.clone()));
    }
    // Holders of scopes the running set no longer defines are named at start and after every
    // reload (KeyManager::check_inert_scopes says why such a reload is not refused).
    let report_inert = {
        let keys = keys.clone();
        let runtime = background.handle().clone();
        move || {
            let keys = keys.clone();
            runtime.spawn(async move {
                if let Err(e) = keys.check_inert_scopes().await {
                    tracing::warn!(error = %e, "could not look for credentials with undefined scopes");
                }
            });
        }
    };
    report_inert();
    let reload_policy: tasks::Reload = {
        let policy = policy.clone();
        Arc::new(move || {
            if policy.reload().is_ok() {
                report_inert();
            }
        })
    };
    let mut reloads = vec![reload_policy.clone()];
    if config.policy_watch && !config.policy_published {
        tasks.spawn_on(
            reload_on_change(
                "policies",
                vec![config.policy_dir.clone()],
                None,
                reload_policy,
                shutdown_rx.clone(),
            ),
            background.handle(),
        );
    }
    if let Some(certs) = &certificates {
        let reload_certs: tasks::Reload = {
            let certs = certs.clone();
            Arc::new(move || {
                let _ = certs.reload();
            })
        };
        reloads.push(reload_certs.clone());
        if config.tls.as_ref().is_some_and(|t| t.watch) {
            tasks.spawn_on(
                reload_on_change(
                    "certificate",
                    certs.folders(),
                    Some(certs.file_names()),
                    reload_certs,
                    shutdown_rx.clone(),
                ),
                background.handle(),
            );
        }
    }
    tasks.spawn_on(
        reload_on_signal(reloads, shutdown_rx.clone()),
        background.handle(),
    );
    tasks.spawn_on(
        purge_tokens(store.clone(), shutdown_rx.clone()),
        background.handle(),
    );
    tasks.spawn_on(
        count_expiring_keys(
            store.clone(),
            metrics.clone(),
            config.keys.change_poll_interval,
            shutdown_rx.clone(),
        ),
        background.handle(),
    );
    if let (Some(reminders), Some(notify)) = (reminders, &config.notify) {
        tasks.spawn_on(
            reminders.run(notify.check_interval, shutdown_rx.clone()),
            background.handle(),
        );
    }
    tasks.spawn_on(
        flush_usage(
            usage.clone(),
            store.clone(),
            config.keys.usage_flush_interval,
            shutdown_rx.clone(),
        ),
        background.handle(),
    );

    let state = ControlState {
        store: store.clone(),
        metrics: metrics.clone(),
        identity: identity.clone(),
        keys: keys.clone(),
        auth,
        operator_token,
        certificates: certificates.clone(),
        routes: config.routes.clone(),
        policy: policy.clone(),
        changes: changes.clone(),
        shared_limits: shared_limits.clone(),
        metrics_access: match (
            config.server.metrics_listen,
            config.server.metrics_operator_only,
        ) {
            (Some(_), _) => MetricsAccess::Elsewhere,
            (None, true) => MetricsAccess::Operator,
            (None, false) => MetricsAccess::Public,
        },
        readiness: Default::default(),
        trusted_proxies: config.server.trusted_proxies.clone(),
    };
    let limits = ConnLimits {
        total: config.server.max_connections,
        per_address: config.server.max_connections_per_address,
    };
    if let Some(listener) = metrics_listener {
        let state = ControlState {
            metrics_access: MetricsAccess::Public,
            ..state.clone()
        };
        // No credential crosses this listener: it stays plain HTTP (see docs/operating.md).
        tasks.spawn(control_plane::serve(
            listener,
            control::metrics_app(state),
            None,
            limits,
            config.server.trusted_proxies.clone(),
            config.server.header_timeout,
            metrics.clone(),
            shutdown_rx.clone(),
        ));
    }
    let mut control_app = control::app(state);
    if let Some(hsts) = hsts.clone() {
        control_app = control_app.layer(axum::middleware::map_response(
            move |mut resp: axum::response::Response| {
                let hsts = hsts.clone();
                async move {
                    resp.headers_mut()
                        .insert(http::header::STRICT_TRANSPORT_SECURITY, hsts);
                    resp
                }
            },
        ));
    }
    tasks.spawn(control_plane::serve(
        control,
        control_app,
        server_tls.clone().map(tokio_rustls::TlsAcceptor::from),
        limits,
        config.server.trusted_proxies.clone(),
        config.server.header_timeout,
        metrics.clone(),
        shutdown_rx.clone(),
    ));

    let conf = ServerConf {
        threads: config.server.threads,
        // The CA bundle `https://` peers are verified against (default: the system's roots).
        ca_file: config
            .upstream
            .tls
            .ca_file
            .as_ref()
            .map(|p| p.display().to_string()),
        ..ServerConf::default()
    };
    let keygate = Keygate {
        routes: config.routes.clone(),
        identity,
        limits: RateLimiter::new(
            scope_names_in(config.rate_limit.clone(), &policy),
            metrics.clone(),
        )
        .with_shared(shared_limits),
        policy,
        upstream,
        audit: audit.clone(),
        metrics: metrics.clone(),
        trusted_proxies: config.server.trusted_proxies.clone(),
        hsts: if server_tls.is_some() { hsts } else { None },
    };
    let identity_for_plain = keygate.identity.clone();
    let proxy = Arc::new(pingora::proxy::http_proxy(&Arc::new(conf), keygate));
    if let (Some(listener), Some(tls)) = (plain_listener, &config.tls) {
        if tls.https_only {
            let plain = Arc::new(plain::Plain {
                redirect_to: tls.redirect_to.clone(),
                https_port: data_addr.port(),
                certificates: certificates
                    .clone()
                    .context("[tls] without a certificate")?,
                style: config.keys.style.clone(),
                session_cookie: config.tokens.session_cookie.clone(),
                revoke: tls
                    .revoke_credentials_sent_in_clear
                    .then(|| (identity_for_plain.clone(), keys.clone())),
                trusted_proxies: config.server.trusted_proxies.clone(),
                metrics: metrics.clone(),
            });
            tasks.spawn(plain::serve(
                listener,
                plain,
                limits,
                config.server.trusted_proxies.clone(),
                config.server.header_timeout,
                shutdown_rx.clone(),
            ));
        } else {
            // `https_only = false`: the plain listener serves the data plane unencrypted too (a
            // migration aid), through the same proxy.
            tasks.spawn(accept_loop(
                listener,
                proxy.clone(),
                None,
                settings_for(config, limits),
                config.server.trusted_proxies.clone(),
                metrics.clone(),
                shutdown_rx.clone(),
            ));
        }
    }
    tasks.spawn(accept_loop(
        data,
        proxy,
        server_tls.map(|c| Arc::new(pingora::listeners::tls::Acceptor::from_server_config(c))),
        settings_for(config, limits),
        config.server.trusted_proxies.clone(),
        metrics,
        shutdown_rx,
    ));

    Ok(Running {
        data_addr,
        control_addr,
        metrics_addr,
        plain_addr,
        certificates,
        sockets,
        replaces,
        upgrade_socket: config.server.upgrade_socket.clone(),
        drain: config.server.shutdown_timeout,
        shutdown: shutdown_tx,
        tasks,
        store,
        usage,
        audit,
        background,
    })
}

fn settings_for(config: &Config, limits: ConnLimits) -> ConnSettings {
    ConnSettings {
        header_timeout: config.server.header_timeout,
        keepalive: config.server.keepalive_timeout,
        keepalive_requests: config.server.keepalive_requests,
        body_timeout: config.server.body_timeout,
        limits,
    }
}
