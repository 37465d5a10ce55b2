//! Micro-benchmarks of the hot path's pure stages. Run: `cargo bench --bench hot_path`.

use std::hint::black_box;

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use keygate::config::{Config, Overrides};
use keygate::identity::{Principal, PrincipalKind};
use keygate::keys::Grant;
use keygate::policy::{PolicyEngine, SHIPPED};
use keygate::route::{canonicalize, RouteInput, RouteTable};
use keygate::store::Role;
use keygate::telemetry::Metrics;

fn route_stage(c: &mut Criterion) {
    let config = Config::from_toml("", "bench", std::iter::empty(), &Overrides::default())
        .expect("the default config is valid");
    let routes = config.routes;

    c.bench_function("canonicalize/plain", |b| {
        b.iter(|| canonicalize(black_box(b"/v1/files/local/backups/2025/db-dump.tar")))
    });
    c.bench_function("canonicalize/encoded_utf8", |b| {
        b.iter(|| {
            canonicalize(black_box(
                "/v1/files/local/docs/caf%C3%A9/%E6%97%A5%E6%9C%AC%20notes.txt".as_bytes(),
            ))
        })
    });
    c.bench_function("route/read_file", |b| {
        b.iter(|| {
            routes.route(black_box(RouteInput {
                method: "GET",
                raw_target: b"/v1/files/local/backups/2025/db-dump.tar",
                destination: None,
                host: Some("localhost"),
            }))
        })
    });
    c.bench_function("route/move_with_destination", |b| {
        b.iter(|| {
            routes.route(black_box(RouteInput {
                method: "MOVE",
                raw_target: b"/v1/files/local/backups/a.tar",
                destination: Some(b"/v1/files/local/archive/a.tar"),
                host: Some("localhost"),
            }))
        })
    });
}

fn principal(id: &str, grants: Option<Vec<Grant>>) -> Principal {
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

fn engine() -> (PolicyEngine, RouteTable, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in SHIPPED {
        std::fs::write(dir.path().join(name), text).expect("write policies");
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

fn decide_stage(c: &mut Criterion) {
    let (engine, routes, _dir) = engine();
    let restricted = principal(
        "key-restricted",
        Some(vec![Grant {
            provider: "local".to_owned(),
            base_path: "/backups".to_owned(),
        }]),
    );
    let route = routes
        .route(RouteInput {
            method: "GET",
            raw_target: b"/v1/files/local/backups/2025/db-dump.tar",
            destination: None,
            host: None,
        })
        .expect("routes");
    // A miss: the whole decision, entities and Cedar included, with no cache.
    c.bench_function("decide/cold_uncached", |b| {
        b.iter(|| engine.decide_uncached(black_box(&restricted), black_box(&route)))
    });
    // A hit: the same request again.
    let _ = engine.decide(&restricted, &route);
    c.bench_function("decide/cache_hit", |b| {
        b.iter(|| engine.decide(black_box(&restricted), black_box(&route)))
    });
    // Grants are data: the decision costs the same with 10, 1,000 or 100,000 keys, each with
    // its own grant, because nothing per key lives in the policies.
    for keys in [10usize, 1_000, 100_000] {
        let principals: Vec<Principal> = (0..keys)
            .map(|i| {
                principal(
                    &format!("key-{i}"),
                    Some(vec![Grant {
                        provider: "local".to_owned(),
                        base_path: format!("/tenant-{i}"),
                    }]),
                )
            })
            .collect();
        let p = &principals[keys / 2];
        c.bench_function(&format!("decide/cold_with_{keys}_keys"), |b| {
            b.iter(|| engine.decide_uncached(black_box(p), black_box(&route)))
        });
    }
}

criterion_group!(benches, route_stage, decide_stage);
criterion_main!(benches);
