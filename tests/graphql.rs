//! GraphQL routes through the real proxy: each root field of the operation in the body is
//! decided as an action (on the path its arguments name, when they name one), the body reaches
//! the upstream byte for byte after the decision, and what cannot be authorized is refused
//! before anything is forwarded.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A GraphQL endpoint at `/graphql` over the shipped policies: reading a file needs `readFile`
/// on its path, deleting one `deleteFile`; a field without a rule is decided on the field
/// itself (the shipped policies refuse those: nothing says what they touch).
const CONFIG: &str = r#"
[[routes.rule]]
methods = ["POST"]
path = "/graphql"
graphql = true

[graphql]
query = "readFile"
mutation = "deleteFile"
max_depth = 5
max_aliases = 4
max_root_fields = 3
body_timeout = "1s"

[graphql.fields]
"query.file" = { action = "readFile", provider = "provider", path = "path" }
"query.listing" = { action = "listFolder", provider = "where.provider", path = "where.path" }
"mutation.deleteFile" = { action = "deleteFile", provider = "provider", path = "path" }
"#;

async fn key_with(kg: &Keygate, body: Value) -> String {
    kg.create_key(body).await["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn post(kg: &Keygate, key: &str, body: &Value) -> reqwest::RequestBuilder {
    client_with_key(key)
        .post(kg.url("/graphql"))
        .header("content-type", "application/json")
        .body(body.to_string())
}

#[tokio::test]
async fn each_root_field_is_decided_and_the_body_arrives_intact() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], CONFIG);
    let reader = key_with(
        &kg,
        json!({"name": "reader", "scopes": ["read"], "owner": "ada@example.com"}),
    )
    .await;
    let backups = key_with(
        &kg,
        json!({"name": "backups", "scopes": ["write"], "owner": "ada@example.com",
               "providers": [{"provider": "local", "basePath": "/backups"}]}),
    )
    .await;

    // A query the reader may run: forwarded unchanged, after the decision.
    let query = json!({
        "query": "query Q($p: String!) { file(provider: \"local\", path: $p) { name size } \
                  listing(where: {provider: \"local\", path: \"/docs\"}) { name } }",
        "variables": {"p": "/docs/report.pdf"},
        "operationName": "Q"
    });
    post(&kg, &reader, &query).expect(StatusCode::OK).await;
    let seen = rec.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/graphql");
    assert_eq!(seen[0].body, query.to_string().as_bytes());
    assert!(seen[0].complete);

    // A mutation needs deleteFile: the reader is told which scope it lacks.
    let delete =
        json!({"query": "mutation { deleteFile(provider: \"local\", path: \"/docs/a\") { ok } }"});
    let denied = post(&kg, &reader, &delete)
        .expect(StatusCode::FORBIDDEN)
        .await;
    assert_eq!(denied["error"]["details"]["required"], "files:delete");
    // One root field the key may not use refuses the whole operation.
    let mixed =
        json!({"query": "{ file(provider: \"local\", path: \"/a\") { name } other { x } }"});
    let denied = post(&kg, &reader, &mixed)
        .expect(StatusCode::FORBIDDEN)
        .await;
    assert_eq!(denied["error"]["details"]["restriction"], "no_resource");

    // Base paths hold for GraphQL arguments as for URLs.
    let inside = json!({"query": "mutation { deleteFile(provider: \"local\", path: \"/backups/2025/old.tar\") { ok } }"});
    post(&kg, &backups, &inside).expect(StatusCode::OK).await;
    let outside = json!({"query": "mutation { deleteFile(provider: \"local\", path: \"/backupsX/a\") { ok } }"});
    let denied = post(&kg, &backups, &outside)
        .expect(StatusCode::FORBIDDEN)
        .await;
    assert_eq!(denied["error"]["details"]["restriction"], "base_path");
    let other = json!({"query": "{ file(provider: \"other\", path: \"/backups/a\") { name } }"});
    post(&kg, &backups, &other)
        .expect(StatusCode::FORBIDDEN)
        .await;
    // Only the two allowed requests reached the upstream.
    assert_eq!(rec.requests().len(), 2);

    // Each decision is audited with its targets.
    let audit = kg
        .audit_until(|lines| lines.iter().filter(|l| l["status"] == 403).count() >= 4)
        .await;
    let base_path_denial = audit
        .iter()
        .find(|l| l["status"] == 403 && l.to_string().contains("/backupsX/a"))
        .expect("the base-path denial is audited");
    assert_eq!(base_path_denial["action"], "deleteFile");
}

#[tokio::test]
async fn what_cannot_be_authorized_is_refused_and_never_forwarded() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], CONFIG);
    let key = kg.key.clone();
    let refused = |body: Value, why: &'static str| {
        let req = post(&kg, &key, &body);
        async move {
            let b = req.expect(StatusCode::BAD_REQUEST).await;
            let message = b["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            assert!(message.contains(why), "{body}: {message}");
            assert_eq!(b["error"]["code"], "BAD_REQUEST");
        }
    };
    refused(
        json!([{"query": "{ file(provider: \"local\", path: \"/a\") { name } }"}]),
        "batches",
    )
    .await;
    refused(json!({"query": "{ file(provider: "}), "does not parse").await;
    refused(
        json!({"query": "query A { a } query B { b }"}),
        "operationName",
    )
    .await;
    refused(
        json!({"query": "query A { a }", "operationName": "B"}),
        "no operation",
    )
    .await;
    refused(
        json!({"query": "subscription { changes { id } }"}),
        "subscriptions",
    )
    .await;
    refused(
        json!({"query": "{ a { b { c { d { e { f } } } } } }"}),
        "deeper",
    )
    .await;
    refused(
        json!({"query": "{ a: file(provider: \"local\", path: \"/a\") { n: name s: size t: type u: url } }"}),
        "aliases",
    )
    .await;
    refused(json!({"query": "{ a b c d }"}), "root fields").await;
    refused(
        json!({"query": "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }"}),
        "cycle",
    )
    .await;
    refused(
        json!({"query": "{ file(provider: \"local\", path: \"/a/../../etc/passwd\") { name } }"}),
        "dot segment",
    )
    .await;
    refused(
        json!({"query": "{ file(provider: \"local\") { name } }"}),
        "path",
    )
    .await;
    refused(
        json!({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "00"}}, "query": "{ a }"}),
        "persisted",
    )
    .await;

    // Not JSON: a browser's cross-site form or text/plain POST is no GraphQL request.
    let b = client_with_key(&key)
        .post(kg.url("/graphql"))
        .header("content-type", "text/plain")
        .body(r#"{"query": "{ file(provider: \"local\", path: \"/a\") { name } }"}"#)
        .expect(StatusCode::BAD_REQUEST)
        .await;
    assert!(b["error"]["message"]
        .as_str()
        .unwrap()
        .contains("application/json"));

    // What a GraphQL server could read differently from keygate: a key given twice (parsers
    // disagree on which counts), an operation in the URL (some servers read it first), another
    // charset, two Content-Types.
    let twice = r#"{"query": "{ file(provider: \"local\", path: \"/a\") { name } }", "query": "mutation { deleteFile(provider: \"local\", path: \"/a\") { ok } }"}"#;
    for (url, content_types, body) in [
        ("/graphql", vec!["application/json"], twice.to_owned()),
        (
            "/graphql?query=mutation%7BdeleteFile%7D",
            vec!["application/json"],
            json!({"query": "{ file(provider: \"local\", path: \"/a\") { name } }"}).to_string(),
        ),
        (
            "/graphql",
            vec!["application/json; charset=iso-8859-1"],
            json!({"query": "{ file(provider: \"local\", path: \"/a\") { name } }"}).to_string(),
        ),
        (
            "/graphql",
            vec!["application/json", "text/plain"],
            json!({"query": "{ file(provider: \"local\", path: \"/a\") { name } }"}).to_string(),
        ),
    ] {
        let mut req = client_with_key(&key).post(kg.url(url)).body(body);
        for ct in content_types {
            req = req.header("content-type", ct);
        }
        req.expect(StatusCode::BAD_REQUEST).await;
    }
    // UTF-8 said outright is fine.
    client_with_key(&key)
        .post(kg.url("/graphql"))
        .header("content-type", "application/json; charset=UTF-8")
        .body(json!({"query": "{ file(provider: \"local\", path: \"/a\") { name } }"}).to_string())
        .expect(StatusCode::OK)
        .await;

    // Over 64 KiB: refused from its Content-Length, before it is read.
    let big = json!({"query": format!("{{ file(provider: \"local\", path: \"/a\") {{ name }} }} # {}", "x".repeat(70_000))});
    let b = post(&kg, &key, &big)
        .expect(StatusCode::PAYLOAD_TOO_LARGE)
        .await;
    assert_eq!(b["error"]["code"], "PAYLOAD_TOO_LARGE");

    // Without a credential the body is not read at all.
    reqwest::Client::new()
        .post(kg.url("/graphql"))
        .header("content-type", "application/json")
        .body(json!({"query": "{ a }"}).to_string())
        .expect(StatusCode::UNAUTHORIZED)
        .await;
    // Only the one well-formed request reached the upstream.
    assert_eq!(rec.requests().len(), 1, "{:?}", rec.requests());
}

/// Reads one HTTP response (status line, headers, a Content-Length body) from `s`.
fn read_answer(s: &mut std::net::TcpStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                let status = head[9..12].parse().unwrap();
                return (status, body.to_owned());
            }
        }
    }
    panic!("no answer: {}", String::from_utf8_lossy(&buf));
}

#[tokio::test]
async fn large_chunked_and_slow_bodies() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], CONFIG);
    // Just under the limit, sent chunked in many pieces: forwarded byte for byte.
    let query = json!({
        "query": format!("{{ file(provider: \"local\", path: \"/a\") {{ name }} }} # {}", "y".repeat(60_000)),
    })
    .to_string();
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = query
        .as_bytes()
        .chunks(7_000)
        .map(|c| Ok(c.to_vec()))
        .collect();
    client_with_key(&kg.key)
        .post(kg.url("/graphql"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            pieces,
        )))
        .expect(StatusCode::OK)
        .await;
    let seen = rec.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body.len(), query.len());
    assert_eq!(seen[0].body, query.as_bytes());

    // A client that sends half its body and stops gets a 408 once `body_timeout` (1 s) is up,
    // and nothing is forwarded.
    let addr = kg.data;
    let key = kg.key.clone();
    let (status, body) = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = r#"{"query": "{ file(provider: \"local\", path: \"/a\") { name } }"}"#;
        write!(
            s,
            "POST /graphql HTTP/1.1\r\nHost: kg\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            body.len(),
            &body[..10]
        )
        .unwrap();
        read_answer(&mut s)
    })
    .await
    .unwrap();
    assert_eq!(status, 408, "{body}");
    assert_eq!(
        raw_json(&format!("\r\n\r\n{body}"))["error"]["code"],
        "REQUEST_TIMEOUT"
    );
    assert_eq!(rec.requests().len(), 1);
}

#[tokio::test]
async fn rate_limit_rules_hold_for_every_action_an_operation_needs() {
    let rec = Recorder::start().await;
    let config = r#"
[rate_limit]
default = "1000000/min"

[[rate_limit.rule]]
name = "deletes"
action = "deleteFile"
limit = "2/min"

[[routes.rule]]
methods = ["POST"]
path = "/graphql"
graphql = true

[graphql]
query = "readFile"
mutation = "writeFile"

[graphql.fields]
"mutation.deleteFile" = { action = "deleteFile", provider = "provider", path = "path" }
"mutation.upload" = { action = "writeFile", provider = "provider", path = "path" }
"#;
    let kg = Keygate::start(&[rec.addr], config);
    // The delete comes second, after a field decided as writeFile: it is still counted.
    let op = json!({"query": "mutation { upload(provider: \"local\", path: \"/a\") { ok } deleteFile(provider: \"local\", path: \"/b\") { ok } }"});
    for _ in 0..2 {
        post(&kg, &kg.key, &op).expect(StatusCode::OK).await;
    }
    let limited = post(&kg, &kg.key, &op)
        .expect(StatusCode::TOO_MANY_REQUESTS)
        .await;
    assert_eq!(limited["error"]["code"], "RATE_LIMIT_EXCEEDED");
    // Without the delete, the operation is within its limits.
    let upload = json!({"query": "mutation { upload(provider: \"local\", path: \"/a\") { ok } }"});
    post(&kg, &kg.key, &upload).expect(StatusCode::OK).await;
    // A compressed body is refused: a server that inflates it would read other bytes.
    client_with_key(&kg.key)
        .post(kg.url("/graphql"))
        .header("content-type", "application/json")
        .header("content-encoding", "br")
        .body(upload.to_string())
        .expect(StatusCode::BAD_REQUEST)
        .await;
    assert_eq!(rec.requests().len(), 3);
}
