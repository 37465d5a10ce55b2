//! Every metric keygate exports, in one place, and the logging set-up.
//!
//! Labels are bounded: an action name from the route table, a status code, an outcome code.
//! Never a user, a key, a token or a path.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The series of one action that every request forwarded for it touches, resolved once: a
/// `with_label_values` hashes its labels and takes a lock on every call.
pub struct ActionSeries {
    pub overhead: Histogram,
    /// Resolved when the first response for the action is logged, not when the first request
    /// is sent (a series appears when it has something to count).
    upstream_duration: OnceLock<Histogram>,
    upstream_durations: HistogramVec,
    /// `requests_total{action, outcome="forwarded", status}` for the statuses storage
    /// answers most, each resolved at its first use (a series appears when it first counts,
    /// as with `with_label_values`); the other statuses are looked up as they come.
    forwarded: [OnceLock<IntCounter>; COMMON_STATUSES.len()],
    requests: IntCounterVec,
    action: Box<str>,
}

/// The statuses whose forwarded-request counters are kept resolved.
const COMMON_STATUSES: [u16; 12] = [200, 201, 204, 206, 207, 301, 302, 304, 404, 409, 412, 416];

impl ActionSeries {
    /// `upstream_duration_seconds{action}`.
    pub fn upstream_duration(&self) -> &Histogram {
        self.upstream_duration
            .get_or_init(|| self.upstream_durations.with_label_values(&[&self.action]))
    }

    /// Counts one forwarded request answered with `status`.
    pub fn forwarded(&self, status: http::StatusCode) {
        let resolve = || {
            self.requests
                .with_label_values(&[&self.action, "forwarded", status.as_str()])
        };
        match COMMON_STATUSES.iter().position(|s| *s == status.as_u16()) {
            Some(i) => self.forwarded[i].get_or_init(resolve).inc(),
            None => resolve().inc(),
        }
    }
}

/// Latency buckets in seconds, from 50 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

pub struct Metrics {
    registry: Registry,
    /// [`ActionSeries`] by action name; the names come from the route table, so the map holds
    /// at most one entry per action the configuration routes to.
    actions: RwLock<HashMap<Box<str>, Arc<ActionSeries>>>,
    /// `identity_cache_total{result="hit"}`, `{result="miss"}`, `{result="negative_hit"}`.
    pub identity_hit: IntCounter,
    pub identity_miss: IntCounter,
    pub identity_negative_hit: IntCounter,
    /// `decision_cache_total{result="hit"}`, `{result="miss"}`.
    pub decision_hit: IntCounter,
    pub decision_miss: IntCounter,
    /// `request_duration_seconds{outcome="forwarded"}`, resolved at its first use.
    forwarded_duration: OnceLock<Histogram>,
    /// Requests by action, outcome (`forwarded` or a refusal code) and status.
    pub requests: IntCounterVec,
    /// Whole request duration, arrival to last byte, by outcome.
    pub request_duration: HistogramVec,
    /// keygate's own time: arrival until the request is sent upstream.
    pub overhead: HistogramVec,
    /// Time from sending upstream to the end of the response.
    pub upstream_duration: HistogramVec,
    /// Failures talking to the upstream, by kind.
    pub upstream_errors: IntCounterVec,
    /// Connections open on the data plane.
    pub open_connections: IntGauge,
    /// Failed authentications by reason (missing, malformed, unknown, expired, revoked,
    /// invalid).
    pub auth_failures: IntCounterVec,
    /// Identity-cache lookups by result (hit, miss, negative_hit).
    pub identity_cache: IntCounterVec,
    /// Database lookups made by the identity stage (cache misses that reached the database).
    pub identity_db_lookups: prometheus::IntCounter,
    /// Active keys that expire within 7 days.
    pub keys_expiring_soon: IntGauge,
    /// Expiry reminders by channel (`email`, `webhook`) and result (`sent`, `failed`).
    pub reminders: IntCounterVec,
    /// Policy reloads by result (ok, error, unchanged).
    pub policy_reloads: IntCounterVec,
    /// The epoch of the running policy set.
    pub policy_epoch: IntGauge,
    /// 1 while the newest policy files are rejected (the last good set keeps running).
    pub policy_reload_failing: IntGauge,
    pub inert_scope_credentials: IntGauge,
    /// Decision-cache lookups by result (hit, miss).
    pub decision_cache: IntCounterVec,
    /// Decisions turned into denies because a policy failed to evaluate.
    pub policy_errors: prometheus::IntCounter,
    /// Requests the shadow policies would have decided differently, by `direction`
    /// (`would_allow`, `would_deny`) and the shadow `policy` held responsible (an `@id` from
    /// the policy folder, or `other`).
    pub shadow_disagreements: IntCounterVec,
    /// Requests answered 429, by limiter (`principal`, `address`) and policy (a rule name from
    /// the config, `default`, or `failures` for the address limiter).
    pub rate_limited: IntCounterVec,
    /// Audit lines written, by decision.
    pub audit_events: IntCounterVec,
    /// Audit events lost, by reason (`queue_full`, `write_error`).
    pub audit_dropped: IntCounterVec,
    /// Logins and refreshes, by result (`ok`, `failed`, `limited`, `refreshed`,
    /// `reuse_detected`).
    pub logins: IntCounterVec,
    /// Keys each failure limiter holds (`address`, `login_account`, `login_address`): bounded
    /// by `[auth] limiter_capacity`.
    pub limiter_entries: IntGaugeVec,
    /// Connections refused before a request was read, by plane (`data`, `control`) and reason
    /// (`total`, `per_address`).
    pub connections_refused: IntCounterVec,
    /// Connections closed because a request header did not arrive in time, by plane.
    pub header_timeouts: IntCounterVec,
    /// Fetches of external issuers' JWKS, by result (`ok`, `error`, `skipped`: a fetch was
    /// due but the floor between fetches had not passed).
    pub jwks_fetches: IntCounterVec,
    /// Certificate reloads, by result (`ok`, `error`: the previous certificate stays).
    pub tls_reloads: IntCounterVec,
    /// `notAfter` of the certificate being served, in Unix seconds.
    pub tls_certificate_expiry: IntGauge,
    /// TLS handshakes that failed or did not finish in time, by plane.
    pub tls_handshake_failures: IntCounterVec,
    /// Requests to the plain-HTTP listener of HTTPS-only mode, by outcome (`redirected`,
    /// `refused`, `revoked`).
    pub plain_http_requests: IntCounterVec,
    /// Seconds from a change of a credential being written to this instance applying it, by
    /// how it learned of it (`notice` or `poll`).
    pub change_lag: HistogramVec,
    /// 1 while this instance listens for PostgreSQL's change notices, by mechanism (`notify`
    /// on PostgreSQL; `poll` on SQLite, always 0).
    pub change_feed_listening: IntGaugeVec,
    /// When the newest change this instance applied was written (unix seconds).
    pub change_newest_applied: prometheus::Gauge,
    /// When this instance last read the changes made elsewhere (unix seconds).
    pub change_feed_last_read: prometheus::Gauge,
    /// 1, labelled with the running policy set's hash (its first 16 hex digits).
    pub policy_info: IntGaugeVec,
    /// The published policy version running; 0 when the policies come from a folder.
    pub policy_version: IntGauge,
    /// 1 while limits are shared through Redis; 0 while this instance limits on its own.
    /// (Only with `backend = "redis"`, labelled so: no series without it.)
    pub rate_limit_backend_up: IntGaugeVec,
    /// Calls to Redis that failed or timed out.
    pub rate_limit_backend_errors: prometheus::IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("keygate".to_owned()), None)
            .expect("the metric prefix is valid");
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Requests handled, by action, outcome and status.",
            ),
            &["action", "outcome", "status"],
        )
        .expect("valid metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Whole request duration, arrival to the last byte of the response.",
            )
            .buckets(BUCKETS.to_vec()),
            &["outcome"],
        )
        .expect("valid metric");
        let overhead = HistogramVec::new(
            HistogramOpts::new(
                "overhead_seconds",
                "keygate's own time per forwarded request: arrival until sent upstream.",
            )
            .buckets(BUCKETS.to_vec()),
            &["action"],
        )
        .expect("valid metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "upstream_duration_seconds",
                "Time from sending a request upstream to the end of its response.",
            )
            .buckets(BUCKETS.to_vec()),
            &["action"],
        )
        .expect("valid metric");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "upstream_errors_total",
                "Failures reaching or reading the upstream.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let open_connections = IntGauge::new(
            "open_connections",
            "Client connections currently open on the data plane.",
        )
        .expect("valid metric");
        let auth_failures = IntCounterVec::new(
            Opts::new("auth_failures_total", "Failed authentications, by reason."),
            &["reason"],
        )
        .expect("valid metric");
        let reminders = IntCounterVec::new(
            Opts::new(
                "reminders_total",
                "Key expiry reminders, by channel and result.",
            ),
            &["channel", "result"],
        )
        .expect("valid metric");
        let identity_cache = IntCounterVec::new(
            Opts::new("identity_cache_total", "Identity-cache lookups, by result."),
            &["result"],
        )
        .expect("valid metric");
        let identity_db_lookups = prometheus::IntCounter::new(
            "identity_db_lookups_total",
            "Database lookups made by the identity stage.",
        )
        .expect("valid metric");
        let keys_expiring_soon = IntGauge::new(
            "keys_expiring_soon",
            "Active API keys that expire within 7 days.",
        )
        .expect("valid metric");
        let policy_reloads = IntCounterVec::new(
            Opts::new("policy_reloads_total", "Policy reloads, by result."),
            &["result"],
        )
        .expect("valid metric");
        let policy_epoch = IntGauge::new("policy_epoch", "The epoch of the running policy set.")
            .expect("valid metric");
        let policy_reload_failing = IntGauge::new(
            "policy_reload_failing",
            "1 while the policy files on disk are rejected and the last good set runs.",
        )
        .expect("valid metric");
        let inert_scope_credentials = IntGauge::new(
            "inert_scope_credentials",
            "Live keys and scoped tokens holding a scope the running policies no longer define (it grants nothing).",
        )
        .expect("valid metric");
        let decision_cache = IntCounterVec::new(
            Opts::new("decision_cache_total", "Decision-cache lookups, by result."),
            &["result"],
        )
        .expect("valid metric");
        let policy_errors = prometheus::IntCounter::new(
            "policy_errors_total",
            "Decisions denied because a policy failed to evaluate.",
        )
        .expect("valid metric");
        let shadow_disagreements = IntCounterVec::new(
            Opts::new(
                "shadow_disagreements_total",
                "Requests the shadow policies would have decided differently, by direction and shadow policy.",
            ),
            &["direction", "policy"],
        )
        .expect("valid metric");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "rate_limited_total",
                "Requests answered 429, by limiter and rate-limit policy.",
            ),
            &["limiter", "policy"],
        )
        .expect("valid metric");
        let audit_events = IntCounterVec::new(
            Opts::new("audit_events_total", "Audit lines written, by decision."),
            &["decision"],
        )
        .expect("valid metric");
        let audit_dropped = IntCounterVec::new(
            Opts::new("audit_dropped_total", "Audit events lost, by reason."),
            &["reason"],
        )
        .expect("valid metric");
        let logins = IntCounterVec::new(
            Opts::new("logins_total", "Password logins and refreshes, by result."),
            &["result"],
        )
        .expect("valid metric");
        let limiter_entries = IntGaugeVec::new(
            Opts::new(
                "failure_limiter_entries",
                "Keys each failure limiter holds (bounded by [auth] limiter_capacity).",
            ),
            &["limiter"],
        )
        .expect("valid metric");
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "connections_refused_total",
                "Connections refused before a request was read, by plane and reason.",
            ),
            &["plane", "reason"],
        )
        .expect("valid metric");
        let header_timeouts = IntCounterVec::new(
            Opts::new(
                "header_timeouts_total",
                "Connections closed because a request header did not arrive in time.",
            ),
            &["plane"],
        )
        .expect("valid metric");
        let jwks_fetches = IntCounterVec::new(
            Opts::new(
                "jwks_fetches_total",
                "Fetches of external issuers' JWKS documents, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "tls_certificate_reloads_total",
                "Reloads of the served certificate, by result; on error the previous one stays.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let tls_certificate_expiry = IntGauge::new(
            "tls_certificate_expiry_timestamp_seconds",
            "notAfter of the certificate being served (Unix seconds).",
        )
        .expect("valid metric");
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "tls_handshake_failures_total",
                "TLS handshakes that failed or did not finish in time, by plane.",
            ),
            &["plane"],
        )
        .expect("valid metric");
        let plain_http_requests = IntCounterVec::new(
            Opts::new(
                "plain_http_requests_total",
                "Requests to the plain-HTTP listener, by outcome.",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let build_info = IntGauge::with_opts(
            Opts::new("build_info", "Always 1; the version is a label.")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("valid metric");
        build_info.set(1);
        let change_lag = HistogramVec::new(
            HistogramOpts::new(
                "change_lag_seconds",
                "Time from a change of a key or token being written (the writer's clock) to this \
                 instance applying it, by how it learned of it (notice or poll).",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["via"],
        )
        .expect("valid metric");
        let change_feed_listening = IntGaugeVec::new(
            Opts::new(
                "change_feed_listening",
                "1 while this instance listens for the database's change notices, by mechanism \
                 (notify: PostgreSQL; poll: SQLite, which has none).",
            ),
            &["mechanism"],
        )
        .expect("valid metric");
        let policy_info = IntGaugeVec::new(
            Opts::new(
                "policy_info",
                "1, labelled with the running policy set's hash (first 16 hex digits): instances \
                 running different sets show different hashes.",
            ),
            &["hash"],
        )
        .expect("valid metric");
        let policy_version = IntGauge::new(
            "policy_version",
            "The published policy version running ([policies] source = \"database\"); 0 when the \
             policies come from a folder.",
        )
        .expect("valid metric");
        let rate_limit_backend_up = IntGaugeVec::new(
            Opts::new(
                "rate_limit_backend_up",
                "With [rate_limit] backend = \"redis\": 1 while the limits are shared through \
                 Redis, 0 while this instance limits on its own (Redis unreachable).",
            ),
            &["backend"],
        )
        .expect("valid metric");
        let rate_limit_backend_errors = prometheus::IntCounter::new(
            "rate_limit_backend_errors_total",
            "Calls to Redis that failed or took over 250 ms.",
        )
        .expect("valid metric");
        let change_feed_last_read = prometheus::Gauge::new(
            "change_feed_last_read_timestamp_seconds",
            "When this instance last read the changes made elsewhere (a poll or a catch-up that \
             succeeded; unix seconds).",
        )
        .expect("valid metric");
        let change_newest_applied = prometheus::Gauge::new(
            "change_newest_applied_timestamp_seconds",
            "When the newest change this instance applied was written (unix seconds).",
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(overhead.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(open_connections.clone()),
            Box::new(auth_failures.clone()),
            Box::new(identity_cache.clone()),
            Box::new(identity_db_lookups.clone()),
            Box::new(keys_expiring_soon.clone()),
            Box::new(reminders.clone()),
            Box::new(policy_reloads.clone()),
            Box::new(policy_epoch.clone()),
            Box::new(policy_reload_failing.clone()),
            Box::new(inert_scope_credentials.clone()),
            Box::new(decision_cache.clone()),
            Box::new(policy_errors.clone()),
            Box::new(shadow_disagreements.clone()),
            Box::new(rate_limited.clone()),
            Box::new(audit_events.clone()),
            Box::new(audit_dropped.clone()),
            Box::new(logins.clone()),
            Box::new(limiter_entries.clone()),
            Box::new(connections_refused.clone()),
            Box::new(header_timeouts.clone()),
            Box::new(jwks_fetches.clone()),
            Box::new(tls_reloads.clone()),
            Box::new(tls_certificate_expiry.clone()),
            Box::new(tls_handshake_failures.clone()),
            Box::new(plain_http_requests.clone()),
            Box::new(change_lag.clone()),
            Box::new(change_feed_listening.clone()),
            Box::new(change_newest_applied.clone()),
            Box::new(change_feed_last_read.clone()),
            Box::new(rate_limit_backend_up.clone()),
            Box::new(policy_info.clone()),
            Box::new(policy_version.clone()),
            Box::new(rate_limit_backend_errors.clone()),
            Box::new(build_info),
        ] {
            registry
                .register(c)
                .expect("each metric is registered once");
        }
        // Series of bounded label sets exist from the start, so rates read 0 rather than nothing.
        for reason in [
            "missing",
            "malformed",
            "unknown",
            "expired",
            "revoked",
            "invalid",
        ] {
            auth_failures.with_label_values(&[reason]);
        }
        for result in ["hit", "miss", "negative_hit"] {
            identity_cache.with_label_values(&[result]);
        }
        for result in ["hit", "miss"] {
            decision_cache.with_label_values(&[result]);
        }
        for result in ["ok", "error", "unchanged"] {
            policy_reloads.with_label_values(&[result]);
        }
        for decision in ["allow", "deny"] {
            audit_events.with_label_values(&[decision]);
        }
        for reason in ["queue_full", "write_error"] {
            audit_dropped.with_label_values(&[reason]);
        }
        for limiter in ["address", "login_account", "login_address"] {
            limiter_entries.with_label_values(&[limiter]);
        }
        for plane in ["data", "control"] {
            for reason in ["total", "per_address"] {
                connections_refused.with_label_values(&[plane, reason]);
            }
            header_timeouts.with_label_values(&[plane]);
        }
        for result in ["ok", "error", "skipped"] {
            jwks_fetches.with_label_values(&[result]);
        }
        for result in [
            "ok",
            "failed",
            "limited",
            "busy",
            "refreshed",
            "reuse_detected",
        ] {
            logins.with_label_values(&[result]);
        }
        rate_limited.with_label_values(&["address", "failures"]);
        for result in ["ok", "error"] {
            tls_reloads.with_label_values(&[result]);
        }
        for plane in ["data", "control"] {
            tls_handshake_failures.with_label_values(&[plane]);
        }
        for outcome in ["redirected", "refused", "revoked"] {
            plain_http_requests.with_label_values(&[outcome]);
        }
        for via in ["notice", "poll"] {
            change_lag.with_label_values(&[via]);
        }
        Metrics {
            actions: RwLock::default(),
            identity_hit: identity_cache.with_label_values(&["hit"]),
            identity_miss: identity_cache.with_label_values(&["miss"]),
            identity_negative_hit: identity_cache.with_label_values(&["negative_hit"]),
            decision_hit: decision_cache.with_label_values(&["hit"]),
            decision_miss: decision_cache.with_label_values(&["miss"]),
            forwarded_duration: OnceLock::new(),
            change_lag,
            change_feed_listening,
            change_newest_applied,
            change_feed_last_read,
            rate_limit_backend_up,
            rate_limit_backend_errors,
            policy_info,
            policy_version,
            tls_reloads,
            tls_certificate_expiry,
            tls_handshake_failures,
            plain_http_requests,
            logins,
            limiter_entries,
            connections_refused,
            header_timeouts,
            jwks_fetches,
            registry,
            requests,
            request_duration,
            overhead,
            upstream_duration,
            upstream_errors,
            open_connections,
            auth_failures,
            identity_cache,
            identity_db_lookups,
            keys_expiring_soon,
            reminders,
            policy_reloads,
            policy_epoch,
            policy_reload_failing,
            inert_scope_credentials,
            decision_cache,
            policy_errors,
            shadow_disagreements,
            rate_limited,
            audit_events,
            audit_dropped,
        }
    }

    /// The series of `action` that a forwarded request touches, resolved at the action's first
    /// forwarded request. `action` must come from the route table, never from a client.
    pub fn action(&self, action: &str) -> Arc<ActionSeries> {
        if let Some(s) = self
            .actions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(action)
        {
            return s.clone();
        }
        let mut actions = self.actions.write().unwrap_or_else(|e| e.into_inner());
        actions
            .entry(action.into())
            .or_insert_with(|| {
                Arc::new(ActionSeries {
                    overhead: self.overhead.with_label_values(&[action]),
                    upstream_duration: OnceLock::new(),
                    upstream_durations: self.upstream_duration.clone(),
                    forwarded: Default::default(),
                    requests: self.requests.clone(),
                    action: action.into(),
                })
            })
            .clone()
    }

    /// `request_duration_seconds{outcome="forwarded"}`.
    pub fn forwarded_duration(&self) -> &Histogram {
        self.forwarded_duration
            .get_or_init(|| self.request_duration.with_label_values(&["forwarded"]))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// Installs the global tracing subscriber (to stderr; stdout is for the addresses).
pub fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // pingora's socket hand-over logs each 1 s retry of an upgrade as an error; keygate reports
    // the hand-over's outcome itself.
    let filter = match "pingora_core::server::transfer_fd=off".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
