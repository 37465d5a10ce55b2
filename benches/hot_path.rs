//! Micro-benchmarks of the hot path's pure stages. Run: `cargo bench --bench hot_path`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use keygate::config::{Config, Overrides};
use keygate::route::{canonicalize, RouteInput};

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

criterion_group!(benches, route_stage);
criterion_main!(benches);
