//! The presets of `deploy/presets/`: each one's config is accepted, its scenarios pass through
//! its own route table, its policy files share keygate's core unchanged, and a client of the
//! product it imitates gets the answers `docs/presets.md` shows, through the real processes.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const PRESETS: &[&str] = &["file-organizer", "drivebase", "drivly"];

fn preset_dir(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/presets")
        .join(name)
}

/// `keygate --config <preset>/keygate.toml ARGS`, from the repository root as the preset's
/// comments say; (success, stdout, stderr).
fn keygate_in(name: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("keygate"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("--config")
        .arg(preset_dir(name).join("keygate.toml"))
        .args(args)
        .env("KEYGATE_KEYS_PEPPER", TEST_PEPPER)
        .env_remove("KEYGATE_POLICIES_DIR")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_preset_is_accepted_and_its_scenarios_pass_through_its_routes() {
    for name in PRESETS {
        let (ok, out, err) = keygate_in(name, &["check-config"]);
        assert!(ok, "{name}: {out}{err}");
        let dir = preset_dir(name).join("policies");
        let dir = dir.to_str().unwrap();
        for args in [
            ["policy", "validate", dir].as_slice(),
            &["policy", "fmt", "--check", dir],
            &["policy", "lint", dir],
            &["policy", "test", dir],
        ] {
            let (ok, out, err) = keygate_in(name, args);
            assert!(ok, "{name}: keygate {args:?}: {out}{err}");
            if args[1] == "test" {
                let passed: usize = out
                    .split(" passed, 0 failed")
                    .next()
                    .and_then(|s| s.rsplit('\n').next())
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or_else(|| panic!("{name}: {out}"));
                assert!(passed >= 20, "{name}: only {passed} scenario requests");
            }
        }
    }
    // The scenarios go through the preset's routes: with the storage-backend preset's they
    // would not route at all.
    let (ok, out, _) = Command::new(bin("keygate"))
        .args(["policy", "test"])
        .arg(preset_dir("drivebase").join("policies"))
        .env("KEYGATE_KEYS_PEPPER", TEST_PEPPER)
        .env_remove("KEYGATE_CONFIG")
        .output()
        .map(|o| {
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                (),
            )
        })
        .unwrap();
    assert!(!ok);
    assert!(out.contains("the request does not route"), "{out}");
}

#[test]
fn presets_share_keygates_core_policies_unchanged() {
    let shipped = shipped_policies();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    let schema = read(&shipped.join("keygate.cedarschema"));
    let head = &schema[..schema.find("  // Scopes are action groups.").unwrap()];
    let head = head.split_once('\n').unwrap().1;
    let tail = &schema[schema.find("  // Managing keys and tokens").unwrap()..];
    for name in PRESETS {
        let dir = preset_dir(name).join("policies");
        for file in ["management.cedar", "operating.cedar", "roles.cedar"] {
            assert_eq!(
                read(&dir.join(file)),
                read(&shipped.join(file)),
                "{name}/{file} differs from policies/{file}"
            );
        }
        let theirs = read(&dir.join("keygate.cedarschema"));
        assert!(
            theirs.ends_with(tail),
            "{name}: the schema's management part differs"
        );
        assert!(
            theirs.contains(head.split_once('\n').unwrap().1),
            "{name}: the schema's entity types differ"
        );
    }
    // Only Drivebase changes a restriction: workspace-wide GraphQL fields for unrestricted keys.
    for name in ["file-organizer", "drivly"] {
        assert_eq!(
            read(&preset_dir(name).join("policies/restrictions.cedar")),
            read(&shipped.join("restrictions.cedar"))
        );
    }
}

async fn key_with(kg: &Keygate, body: Value) -> (String, Value) {
    let data = kg.create_key(body).await;
    (data["key"].as_str().unwrap().to_owned(), data)
}

#[tokio::test]
async fn file_organizer_keys_permissions_and_errors_in_its_words() {
    let rec = Recorder::start().await;
    let kg = Keygate::start_preset(&[rec.addr], "file-organizer", &["files"], "");
    let (script, data) = key_with(
        &kg,
        json!({"name": "Python Script", "owner": "ada@example.com",
               "scopes": ["read:files", "read:search", "read:organize"], "expiresIn": "90d"}),
    )
    .await;
    assert!(script.starts_with("fo_"), "{script}");
    assert_eq!(
        data["scopes"],
        json!(["read:files", "read:search", "read:organize"])
    );
    let client = client_with_key(&script);
    for path in [
        "/api/v1/files",
        "/api/v1/files/projects/plan.pdf",
        "/api/v1/search?q=plan",
        "/api/v1/organize/jobs/42",
    ] {
        let r = client.get(kg.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["x-ratelimit-limit"], "1000");
    }
    let denied = client
        .put(kg.url("/api/v1/files/projects/new.pdf"))
        .body("x")
        .expect(StatusCode::FORBIDDEN)
        .await;
    assert_eq!(denied["success"], false);
    assert_eq!(denied["error"]["code"], "FORBIDDEN");
    assert_eq!(
        denied["error"]["details"],
        json!({"required": "write:files", "granted": ["read:files", "read:search", "read:organize"]})
    );
    // A permission File Organizer does not have is no scope here.
    let r = kg
        .operator()
        .post(kg.control_url("/v1/keys"))
        .json(&json!({"name": "x", "owner": "ada@example.com", "scopes": ["files:read"]}))
        .expect(StatusCode::BAD_REQUEST)
        .await;
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("read:files, read:organize"));
    // A key in the query string is refused (400), never accepted.
    let r = reqwest::Client::new()
        .get(kg.url(&format!("/api/v1/files?api_key={script}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(rec.requests().len(), 4);
}

#[tokio::test]
async fn drivebase_base_paths_hold_for_the_rest_proxy_and_graphql() {
    let rec = Recorder::start().await;
    let kg = Keygate::start_preset(&[rec.addr], "drivebase", &["s3", "gdrive"], "");
    let (backups, data) = key_with(
        &kg,
        json!({"name": "nightly backups", "owner": "ada@example.com", "scopes": ["write"],
               "providers": [{"provider": "s3", "basePath": "/backups"}]}),
    )
    .await;
    assert!(
        backups.starts_with("drv_") && backups.len() == 44,
        "{backups}"
    );
    assert_eq!(data["displayPrefix"], &backups[..12]);
    let (reader, _) = key_with(
        &kg,
        json!({"name": "reader", "owner": "ada@example.com", "scopes": ["read"]}),
    )
    .await;
    let b = bearer(&backups);

    // The REST proxy: the path is in the query, and that is what is decided.
    let up = "/api/upload/proxy?providerId=s3&path=%2Fbackups%2F2025%2Fdb.tar";
    b.post(kg.url(up)).body("dump").expect(StatusCode::OK).await;
    assert_eq!(rec.requests()[0].target, up);
    assert_eq!(rec.requests()[0].body, b"dump");
    let outside = b
        .get(kg.url("/api/download/proxy?providerId=s3&path=/documents/cv.pdf"))
        .expect(StatusCode::FORBIDDEN)
        .await;
    assert_eq!(outside["error"]["details"]["restriction"], "base_path");
    b.get(kg.url("/api/download/proxy?providerId=gdrive&path=/backups/a"))
        .expect(StatusCode::FORBIDDEN)
        .await;
    // Spellings a backend could read as another path are refused, never guessed at.
    for q in [
        "providerId=s3&path=/backups/../documents/cv.pdf",
        "providerId=s3&path=/backups/a&path=/documents/b",
        "providerId=s3&p%61th=/documents/b&path=/backups/a",
        "providerId=s3&path=/backups/a+b",
        "providerId=s3&path=/backups/a;/documents",
        "providerId=s3",
    ] {
        b.get(kg.url(&format!("/api/download/proxy?{q}")))
            .expect(StatusCode::BAD_REQUEST)
            .await;
    }

    // A form body could stand in for the query at the backend (Go's FormValue, PHP's
    // $_REQUEST): refused where the query names the resource.
    for content_type in [
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-Urlencoded; charset=utf-8",
        "application/x-www-form-urlencoded,x",
        "multipart/form-data; boundary=x",
    ] {
        b.post(kg.url(up))
            .header("content-type", content_type)
            .body("path=/documents/cv.pdf")
            .expect(StatusCode::BAD_REQUEST)
            .await;
    }
    b.post(kg.url(up))
        .header("content-type", "application/octet-stream")
        .body("dump")
        .expect(StatusCode::OK)
        .await;
    // The GraphQL endpoint answers POST only: a GET never reaches another rule.
    b.get(kg.url("/graphql?query=%7Bme%7Bid%7D%7D"))
        .expect(StatusCode::BAD_REQUEST)
        .await;

    // GraphQL: provider and path in arguments (and variables).
    let gql = |client: &reqwest::Client, body: Value| {
        client
            .post(kg.url("/graphql"))
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    let delete = json!({"query": "mutation Del($p: String!) { deleteFile(providerId: \"s3\", path: $p) }",
                        "variables": {"p": "/backups/2024/old.tar"}});
    gql(&b, delete.clone()).expect(StatusCode::OK).await;
    assert_eq!(
        rec.requests().last().unwrap().body,
        delete.to_string().as_bytes()
    );
    let denied = gql(
        &b,
        json!({"query": "mutation { moveFile(providerId: \"s3\", path: \"/backups/a.tar\", targetPath: \"/documents/a.tar\") { id } }"}),
    )
    .expect(StatusCode::FORBIDDEN)
    .await;
    assert_eq!(denied["error"]["details"]["restriction"], "base_path");
    // A rename is decided on the new name too, which stays in the folder.
    gql(
        &b,
        json!({"query": "mutation { renameFile(providerId: \"s3\", path: \"/backups/a.tar\", name: \"b.tar\") { id } }"}),
    )
    .expect(StatusCode::OK)
    .await;
    gql(
        &b,
        json!({"query": "mutation { renameFile(providerId: \"s3\", path: \"/backups/a.tar\", name: \"../documents/a.tar\") { id } }"}),
    )
    .expect(StatusCode::BAD_REQUEST)
    .await;
    // A field that names no path: only for keys not restricted to some providers.
    let me = json!({"query": "{ me { id email } }"});
    let denied = gql(&b, me.clone()).expect(StatusCode::FORBIDDEN).await;
    assert_eq!(denied["error"]["details"]["restriction"], "no_resource");
    gql(&bearer(&reader), me).expect(StatusCode::OK).await;
    // A mutation the table does not list needs admin.
    let denied = gql(
        &bearer(&reader),
        json!({"query": "mutation { updateWorkspace(name: \"x\") { id } }"}),
    )
    .expect(StatusCode::FORBIDDEN)
    .await;
    assert_eq!(
        denied["error"]["details"],
        json!({"required": "admin", "granted": ["read"]})
    );
}

#[tokio::test]
async fn drivly_permissions_for_keys_and_minted_tokens() {
    let rec = Recorder::start().await;
    let kg = Keygate::start_preset(&[rec.addr], "drivly", &["drivly"], "");
    // A signed-in user mints a token with a permission list.
    let login: Value = reqwest::Client::new()
        .post(kg.control_url("/v1/auth/login"))
        .json(&json!({"email": "ada@example.com", "password": "ada's long password", "type": "access"}))
        .expect(StatusCode::OK)
        .await;
    let access = login["data"]["accessToken"].as_str().unwrap().to_owned();
    assert!(login["data"]["refreshToken"].is_string());
    let minted = bearer(&access)
        .post(kg.control_url("/v1/auth/tokens"))
        .json(&json!({"name": "reports", "permissions": ["files.read", "shares.write"]}))
        .expect(StatusCode::CREATED)
        .await;
    assert_eq!(
        minted["data"]["scopes"],
        json!(["files.read", "shares.write"])
    );
    let token = bearer(minted["data"]["token"].as_str().unwrap());
    token
        .get(kg.url("/files/reports/q3.pdf"))
        .expect(StatusCode::OK)
        .await;
    token
        .delete(kg.url("/shares/q3"))
        .expect(StatusCode::OK)
        .await;
    let denied = token
        .post(kg.url("/files/reports/q4.pdf"))
        .body("x")
        .expect(StatusCode::FORBIDDEN)
        .await;
    assert_eq!(
        denied["error"]["details"],
        json!({"required": "files.write", "granted": ["files.read", "shares.write"]})
    );
    token
        .get(kg.url("/folders/reports"))
        .expect(StatusCode::FORBIDDEN)
        .await;
    // API keys hold the same permissions, and cannot create API keys.
    let (key, _) = key_with(
        &kg,
        json!({"name": "integration", "owner": "ada@example.com", "scopes": ["folders.read", "folders.write"]}),
    )
    .await;
    client_with_key(&key)
        .put(kg.url("/folders/reports"))
        .expect(StatusCode::OK)
        .await;
    let refused = client_with_key(&key)
        .post(kg.control_url("/v1/keys"))
        .json(&json!({"name": "another", "scopes": ["folders.read"]}))
        .expect(StatusCode::FORBIDDEN)
        .await;
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("an API key cannot create"),
        "{refused}"
    );
    assert_eq!(rec.requests().len(), 3);
}
