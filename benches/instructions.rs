//! Instruction counts of the hot path under valgrind's callgrind (iai-callgrind): the same
//! for the same binary and input whatever else the machine is doing, so CI can hold them to
//! the numbers stored in `benches/instructions.json` (`bash benches/instructions.sh`; it fails
//! when a count grows by more than 10 %).
//!
//! Each benchmark counts one call, with everything before it (databases, policies, a first
//! request that warms the caches) done in its setup, which callgrind does not count.

use std::hint::black_box;

mod common;

use common::{directories, engine, get, get_route, keygate, restricted_key};
use iai_callgrind::{library_benchmark, library_benchmark_group, main};
use keygate::identity::credentials::{credentials, CredentialRules, Credentials};
use keygate::policy::PolicyEngine;
use keygate::principal::Principal;
use keygate::proxy::{Keygate, RequestCtx};
use keygate::route::{canonicalize, RouteMatch};
use pingora::http::RequestHeader;
use tokio::runtime::Runtime;

#[library_benchmark]
fn canonicalize_plain() {
    black_box(canonicalize(black_box(
        b"/v1/files/local/backups/2025/db-dump.tar",
    )))
    .expect("canonical");
}

/// A request carrying a well-formed key of the default style, and where keys are looked for.
fn api_key_request() -> (RequestHeader, CredentialRules) {
    let style = keygate::config::Config::from_toml(
        "",
        "bench",
        std::iter::empty(),
        &keygate::config::Overrides::default(),
    )
    .expect("default config")
    .keys
    .style;
    let key = style.generate();
    let rules = CredentialRules {
        style,
        ..CredentialRules::default()
    };
    (get("/v1/files/local/backups/2025/db-dump.tar", &key), rules)
}

// Finding the key in the headers and checking its shape and checksum.
#[library_benchmark]
#[bench::api_key(setup = api_key_request)]
fn credentials_parse(input: (RequestHeader, CredentialRules)) -> bool {
    let (req, rules) = input;
    match credentials(&req.headers, None, &rules, false) {
        Ok(Credentials::ApiKey(k)) => rules.style.is_well_formed(&k),
        _ => false,
    }
}

type Decider = (PolicyEngine, Principal, RouteMatch, tempfile::TempDir);

/// The shipped policies and a key restricted to `local:/backups`, one decision already made
/// (so nothing is first-time) and then retired with the provider directory it was made with,
/// and a path: Cedar decides it.
fn decider() -> Decider {
    let (engine, routes, dir) = engine();
    let restricted = restricted_key();
    let route = |target: &str| get_route(&routes, target);
    let _ = engine.decide(
        &restricted,
        &route("/v1/files/local/backups/2025/first.tar"),
    );
    engine.set_providers(directories(&engine)[1].clone());
    engine.run_pending_cache_tasks();
    let fresh = route("/v1/files/local/backups/2025/db-dump.tar");
    (engine, restricted, fresh, dir)
}

#[library_benchmark]
#[bench::restricted_key(setup = decider)]
fn decide_cold(input: Decider) -> (bool, Decider) {
    let allowed = input
        .0
        .decide(black_box(&input.1), black_box(&input.2))
        .refusal
        .is_none();
    (allowed, input)
}

type Admitter = (Runtime, Keygate, RequestHeader, tempfile::TempDir);

/// A keygate over SQLite with one key; the first request admitted; `next` is the request
/// counted (the same file: every cache warm; another file: a hit of the first one's decision
/// class). With `retire`, the provider directory changes first: Cedar decides `next`.
fn admitter(next: &str, retire: bool) -> Admitter {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (kg, key) = rt.block_on(keygate(dir.path()));
    let first = get("/v1/files/local/backups/2025/db-dump.tar", &key);
    let mut ctx = RequestCtx::new();
    rt.block_on(kg.admit(&first, None, &mut ctx))
        .expect("the first request is admitted");
    if retire {
        kg.policy.set_providers(directories(&kg.policy)[1].clone());
    }
    kg.run_pending_cache_tasks();
    (rt, kg, get(next, &key), dir)
}

#[library_benchmark]
#[bench::warm(args = ("/v1/files/local/backups/2025/db-dump.tar", false), setup = admitter)]
#[bench::new_file(args = ("/v1/files/local/backups/2025/other.tar", false), setup = admitter)]
#[bench::cold_decision(args = ("/v1/files/local/backups/2025/other.tar", true), setup = admitter)]
fn admit(input: Admitter) -> (bool, Admitter) {
    let mut ctx = RequestCtx::new();
    let ok = input
        .0
        .block_on(input.1.admit(black_box(&input.2), None, &mut ctx))
        .is_ok();
    (ok, input)
}

library_benchmark_group!(
    name = hot_path;
    benchmarks = canonicalize_plain, credentials_parse, decide_cold, admit
);

main!(library_benchmark_groups = hot_path);
