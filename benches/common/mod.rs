//! What the benches share: the shipped policies loaded into an engine, a principal, and a
//! keygate with its real stages over SQLite (`hot_path.rs` times them with criterion,
//! `instructions.rs` counts their instructions with callgrind).
#![allow(dead_code)]

use std::sync::Arc;

use keygate::config::{Config, Overrides};
use keygate::model::{Grant, Role};
use keygate::policy::{PolicyEngine, SHIPPED};
use keygate::principal::{Principal, PrincipalKind};
use keygate::proxy::Keygate;
use keygate::route::RouteTable;
use keygate::telemetry::Metrics;
use pingora::http::RequestHeader;

pub fn principal(id: &str, grants: Option<Vec<Grant>>) -> Principal {
    Principal {
        kind: PrincipalKind::ApiKey,
        key_id: id.to_owned(),
        user_id: "user-1".to_owned(),
        user_email: "ada@example.com".to_owned(),
        workspace_id: "ws-1".to_owned(),
        workspace: "acme".to_owned(),
        scopes: vec!["write".to_owned()],
        grants,
        role: Some(Role::Editor),
        expires_at: None,
        generation: 0,
        usage: Default::default(),
    }
}

/// Shadow policies for the shadowed benches: a new forbid, a new permit and a replaced
/// forbid (the base-path rule, which decides the benched requests).
pub const SHADOW: &str = r#"@id("keys-never-purge")
forbid (principal is Keygate::ApiKey, action == Keygate::Action::"purgeTrash", resource);

@id("readers-list")
permit (principal, action == Keygate::Action::"listFolder", resource)
when { principal.scopes.contains("files:read") };

@id("outside-base-path")
forbid (principal, action, resource is Keygate::Path)
when
{
  principal.restricted &&
  principal.providers.contains(resource.provider) &&
  !(resource in principal.grants) &&
  action != Keygate::Action::"listFolder"
};
"#;

/// An API key restricted to `local:/backups`.
pub fn restricted_key() -> Principal {
    principal(
        "key-restricted",
        Some(vec![Grant {
            provider: "local".to_owned(),
            base_path: "/backups".to_owned(),
        }]),
    )
}

/// The route of a GET of `target` (with no other headers), as the route stage finds it.
pub fn get_route(routes: &RouteTable, target: &str) -> keygate::route::RouteMatch {
    routes
        .route(keygate::route::RouteInput {
            method: "GET",
            raw_target: target.as_bytes(),
            destination: None,
            overwrite: None,
            depth: None,
            if_header: None,
            host: None,
        })
        .expect("routes")
}

/// `engine`'s provider directory and the same with one more provider nothing asks about:
/// installing the other one retires every cached decision, so the next decision is Cedar's.
pub fn directories(engine: &PolicyEngine) -> [std::collections::HashMap<String, String>; 2] {
    let one = engine.providers();
    let mut two = one.clone();
    two.insert("spare".to_owned(), "spare-workspace".to_owned());
    [one, two]
}

pub fn engine() -> (PolicyEngine, RouteTable, tempfile::TempDir) {
    engine_with(None)
}

pub fn engine_with(shadow: Option<&str>) -> (PolicyEngine, RouteTable, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in SHIPPED {
        std::fs::write(dir.path().join(name), text).expect("write policies");
    }
    if let Some(text) = shadow {
        std::fs::create_dir(dir.path().join("shadow")).expect("shadow folder");
        std::fs::write(dir.path().join("shadow/candidates.cedar"), text).expect("write shadow");
    }
    let engine =
        PolicyEngine::load(dir.path(), Arc::new(Metrics::new())).expect("shipped policies load");
    engine.set_providers(
        [("local".to_owned(), "ws-1".to_owned())]
            .into_iter()
            .collect(),
    );
    let routes = Config::from_toml("", "bench", std::iter::empty(), &Overrides::default())
        .expect("default config")
        .routes;
    (engine, routes, dir)
}

/// A keygate with its real stages over a SQLite database in `dir`, one workspace, provider
/// `local`, and a key with the `write` scope; returns it with the key.
pub async fn keygate(dir: &std::path::Path) -> (Keygate, String) {
    use keygate::audit::{AuditConfig, AuditLog, AuditOutput};
    use keygate::identity::jwt::Tokens;
    use keygate::identity::{Identity, IdentityConfig};
    use keygate::manage::{Actor, CreateKey};
    use keygate::proxy::upstream::Upstreams;
    use keygate::ratelimit::{Limit, RateLimitConfig, RateLimiter};
    use keygate::store::Store;
    use keygate::usage::UsageRecorder;

    for (name, text) in SHIPPED {
        std::fs::write(dir.join(name), text).expect("write policies");
    }
    let db = format!("sqlite://{}", dir.join("bench.db").display());
    let toml = format!(
        "[policies]\ndir = {:?}\n[keys]\npepper = \"bench-pepper-0123456789abcdef0123456789\"\n",
        dir.display().to_string()
    );
    let config = Config::from_toml(&toml, "bench", std::iter::empty(), &Overrides::default())
        .expect("bench config");
    let store = Store::open(&db, 4).await.expect("database");
    store.add_workspace("acme").await.expect("workspace");
    store
        .add_user("ada@example.com", None, "unused")
        .await
        .expect("user");
    store
        .set_member("acme", "ada@example.com", Role::Admin)
        .await
        .expect("member");
    store.add_provider("local", "acme").await.expect("provider");
    let manager = keygate::server::key_manager(&config, store.clone()).expect("manager");
    let key = manager
        .create(
            &Actor::Operator,
            CreateKey {
                name: "bench".into(),
                scopes: vec!["write".into()],
                owner: Some("ada@example.com".into()),
                ..CreateKey::default()
            },
        )
        .await
        .expect("key")
        .key;
    let metrics = Arc::new(Metrics::new());
    let pepper = keygate::server::load_pepper(&config).expect("pepper");
    let tokens = Arc::new(
        Tokens::open(store.clone(), &pepper, config.tokens.clone())
            .await
            .expect("signing keys"),
    );
    let identity = Arc::new(Identity::new(
        store.clone(),
        pepper,
        &IdentityConfig {
            style: config.keys.style.clone(),
            session_cookie: Some(config.tokens.session_cookie.clone()),
            allowed_origins: Vec::new(),
            cache_ttl: std::time::Duration::from_secs(3600),
            cache_capacity: 100_000,
            failures_per_minute: 20,
            forbidden_per_minute: 300,
            limiter_capacity: 100_000,
            shared_limits: None,
        },
        Some(tokens),
        Arc::new(UsageRecorder::default()),
        metrics.clone(),
    ));
    let policy = keygate::server::load_policies(&config, metrics.clone()).expect("policies");
    policy.set_providers(store.provider_directory().await.expect("providers"));
    let limits = RateLimitConfig {
        // Counted like in production, but never reached by a benchmark's millions of calls.
        default: Some(Limit {
            requests: u32::MAX,
            window: std::time::Duration::from_secs(60),
        }),
        rules: Vec::new(),
        shared: None,
    };
    let kg = Keygate {
        routes: config.routes.clone(),
        identity,
        limits: RateLimiter::new(limits, metrics.clone()),
        policy,
        upstream: Arc::new(Upstreams::new(&config.upstream, &config.upstreams).expect("upstream")),
        audit: Arc::new(
            AuditLog::start(
                &AuditConfig {
                    output: AuditOutput::Off,
                    ..AuditConfig::default()
                },
                metrics.clone(),
            )
            .expect("audit"),
        ),
        metrics,
        trusted_proxies: Default::default(),
        hsts: None,
    };
    (kg, key)
}

pub fn get(path: &str, key: &str) -> RequestHeader {
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).expect("request");
    req.insert_header("host", "localhost").expect("header");
    req.insert_header("x-api-key", key).expect("header");
    req
}
