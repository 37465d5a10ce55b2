//! Micro-benchmarks of the hot path's pure stages. Run: `cargo bench --bench hot_path`.

use std::hint::black_box;

use std::sync::Arc;

mod common;

use common::{engine, engine_with, get, get_route, keygate, principal, restricted_key, SHADOW};
use criterion::{criterion_group, criterion_main, Criterion};
use keygate::config::{Config, Overrides};
use keygate::identity::credentials::{credentials, Credentials};
use keygate::model::Grant;
use keygate::principal::Principal;
use keygate::proxy::RequestCtx;
use keygate::route::{canonicalize, RouteInput};
use pingora::http::RequestHeader;

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
                overwrite: None,
                depth: None,
                if_header: None,
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
                overwrite: None,
                depth: None,
                if_header: None,
                host: Some("localhost"),
            }))
        })
    });
}

/// A GraphQL route's pre-parse: a typical mutation with variables, and the most work a client
/// can ask for within the limits (a 64 KiB document of 20 root fields, near the token limit).
fn graphql_stage(c: &mut Criterion) {
    use keygate::route::graphql::{authorize, ArgumentPath, FieldRule, GraphqlRules, MAX_BODY};
    use std::collections::HashMap;
    let rules = GraphqlRules {
        max_body: MAX_BODY,
        body_timeout: std::time::Duration::from_secs(10),
        max_depth: 15,
        max_aliases: 30,
        max_fields: 10_000,
        max_root_fields: 20,
        subscriptions: false,
        persisted_queries: false,
        query_action: Arc::from("browse"),
        mutation_action: Arc::from("manageWorkspace"),
        subscription_action: Arc::from("browse"),
        fields: HashMap::from([(
            "mutation.deleteFile".to_owned(),
            FieldRule {
                action: Arc::from("deleteFile"),
                provider: ArgumentPath::parse("providerId"),
                path: ArgumentPath::parse("path"),
                destination: None,
                new_name: None,
            },
        )]),
    };
    let typical = serde_json::json!({
        "query": "mutation Del($p: String!) { deleteFile(providerId: \"s3\", path: $p) { ok } }",
        "variables": {"p": "/backups/2025/db.tar"},
        "operationName": "Del"
    })
    .to_string();
    c.bench_function("graphql/typical_mutation", |b| {
        b.iter(|| authorize(&rules, black_box(typical.as_bytes()), None).unwrap())
    });
    // The most a client can ask for within the default limits: 20 root fields, each nested
    // 14 deep, with 1000 long-named fields in all (about 60 KiB).
    let mut doc = String::from("{");
    for i in 0..20 {
        doc.push_str(&format!(" f{i}"));
        for _ in 0..13 {
            doc.push_str(" { n");
        }
        for j in 0..36 {
            doc.push_str(&format!(" x{j}_{}", "y".repeat(75)));
        }
        for _ in 0..13 {
            doc.push_str(" }");
        }
    }
    doc.push_str(" }");
    let largest = serde_json::json!({ "query": doc }).to_string();
    assert!(largest.len() <= MAX_BODY, "{}", largest.len());
    let mut defaults = rules.clone();
    defaults.max_fields = 1000;
    c.bench_function("graphql/largest_accepted", |b| {
        b.iter(|| authorize(&defaults, black_box(largest.as_bytes()), None).unwrap())
    });
    // 64 KiB of one-letter fields: refused when the parser reaches its token limit.
    let tokens =
        serde_json::json!({ "query": format!("{{{} }}", " x".repeat(32_000)) }).to_string();
    c.bench_function("graphql/refused_at_token_limit", |b| {
        b.iter(|| authorize(&defaults, black_box(tokens.as_bytes()), None).unwrap_err())
    });
}

fn decide_stage(c: &mut Criterion) {
    let (engine, routes, _dir) = engine();
    let restricted = restricted_key();
    let route = get_route(&routes, "/v1/files/local/backups/2025/db-dump.tar");
    // A miss: the whole decision, entities and Cedar included, with no cache.
    c.bench_function("decide/cold_uncached", |b| {
        b.iter(|| engine.decide_uncached(black_box(&restricted), black_box(&route)))
    });
    // A new file for a key already seen (the common case: an upload, a listing's entries):
    // a miss of the path but a hit of its decision class (docs/policies.md), so no Cedar.
    let paths: Vec<_> = (0..200_000)
        .map(|i| get_route(&routes, &format!("/v1/files/local/backups/2025/f-{i}.tar")))
        .collect();
    let mut i = 0;
    c.bench_function("decide/new_file_known_principal", |b| {
        b.iter(|| {
            i = (i + 1) % paths.len();
            engine.decide(black_box(&restricted), black_box(&paths[i]))
        })
    });
    // The same with shadow policies beside the enforced ones (evaluated, never enforced): what
    // trying a policy change on live traffic costs a cold decision.
    // Compare with decide/cold_uncached.
    let (shadowed, _, _shadow_dir) = engine_with(Some(SHADOW));
    c.bench_function("decide/cold_uncached_shadowed", |b| {
        b.iter(|| shadowed.decide_uncached(black_box(&restricted), black_box(&route)))
    });
    // Depth: only the folders a decision can ask about become entities, so a cold decision
    // costs the same three folders deep and two hundred deep.
    for depth in [3usize, 200] {
        let target = format!("/v1/files/local/backups{}/f.tar", "/d".repeat(depth - 2));
        let deep = get_route(&routes, &target);
        c.bench_function(&format!("decide/cold_depth_{depth}"), |b| {
            b.iter(|| engine.decide_uncached(black_box(&restricted), black_box(&deep)))
        });
    }
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

/// The stages of `request_filter` together: framing, route, address check, credentials,
/// identity, rate limit and decision, as `admit` runs them for every request. Each iteration
/// includes one `block_on` of a current-thread runtime (a few hundred ns).
fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (kg, key) = rt.block_on(keygate(dir.path()));
    let rules = kg.identity.rules().clone();
    let req = get("/v1/files/local/backups/2025/db-dump.tar", &key);

    c.bench_function("credentials/parse_with_checksum", |b| {
        b.iter(|| {
            let creds =
                credentials(black_box(&req.headers), None, &rules, false).expect("credentials");
            let Credentials::ApiKey(k) = &creds else {
                panic!("an API key")
            };
            assert!(rules.style.is_well_formed(k));
            creds
        })
    });
    let creds = credentials(&req.headers, None, &rules, false).expect("credentials");
    rt.block_on(kg.identity.principal_for(&creds))
        .expect("the key is valid");
    c.bench_function("identity/cache_hit", |b| {
        b.iter(|| rt.block_on(kg.identity.principal_for(black_box(&creds))))
    });

    let admit = |req: &RequestHeader| {
        let mut ctx = RequestCtx::new();
        let out = rt.block_on(kg.admit(req, None, &mut ctx));
        assert!(out.is_ok(), "{out:?}");
        ctx
    };
    admit(&req);
    c.bench_function("request_filter/allowed_warm", |b| {
        b.iter(|| admit(black_box(&req)))
    });
    // Every request a different file: a hit of the decision class the first file decided.
    let mut n = 0u64;
    c.bench_function("request_filter/allowed_new_file", |b| {
        b.iter_batched(
            || {
                n += 1;
                get(&format!("/v1/files/local/backups/2025/file-{n}.tar"), &key)
            },
            |req| admit(&req),
            criterion::BatchSize::SmallInput,
        )
    });
    // Every request decided by Cedar: before each, the provider directory changes (which
    // retires every cached decision; not timed).
    let directories = common::directories(&kg.policy);
    c.bench_function("request_filter/allowed_cold_decision", |b| {
        b.iter_batched(
            || {
                n += 1;
                kg.policy
                    .set_providers(directories[(n % 2) as usize].clone());
                get(&format!("/v1/files/local/backups/2025/file-{n}.tar"), &key)
            },
            |req| admit(&req),
            // Each request right after its own directory change (a batch would share one).
            criterion::BatchSize::PerIteration,
        )
    });
}

/// JWT verification with the backend keygate ships (jsonwebtoken's pure-Rust `rust_crypto`:
/// ed25519-dalek for EdDSA): what a token costs on an identity-cache miss. Against it, HS256
/// from the same crate as a floor for "verify anything at all".
fn jwt(c: &mut Criterion) {
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
    use keygate::identity::jwt::{JwtKind, Tokens};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = rt.block_on(async {
        let store = keygate::store::Store::open(
            &format!("sqlite://{}", dir.path().join("jwt.db").display()),
            2,
        )
        .await
        .expect("database");
        let pepper = keygate::model::Pepper::new(&[9u8; 32]).expect("pepper");
        Tokens::open(store, &pepper, Default::default())
            .await
            .expect("signing keys")
    });
    let expires = keygate::clock::now_millis() + 600_000;
    let claims = tokens.claims(
        JwtKind::Access,
        "t-1",
        "u-1",
        "ada@example.com",
        "w-1",
        expires,
    );
    let token = tokens.sign(&claims).expect("sign");
    c.bench_function("jwt/verify_eddsa", |b| {
        b.iter(|| {
            let v = rt.block_on(tokens.verify(black_box(&token)));
            assert!(v.is_ok(), "{v:?}");
        })
    });
    c.bench_function("jwt/sign_eddsa", |b| {
        b.iter(|| tokens.sign(black_box(&claims)))
    });
    let secret = [7u8; 32];
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&secret),
    )
    .expect("sign hs256");
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_audience(&["keygate"]);
    let key = DecodingKey::from_secret(&secret);
    c.bench_function("jwt/verify_hs256_floor", |b| {
        b.iter(|| {
            jsonwebtoken::decode::<keygate::identity::jwt::Claims>(
                black_box(&hs),
                &key,
                &validation,
            )
            .expect("valid")
        })
    });
}

criterion_group!(
    benches,
    route_stage,
    graphql_stage,
    decide_stage,
    pipeline,
    jwt
);
criterion_main!(benches);
