//! Cedar decides every request: scopes, base paths, ownership, role caps, reload, evaluation
//! errors, and the policy tooling, through real processes.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn key_with(kg: &Keygate, body: Value) -> String {
    kg.create_key(body).await["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// (action, method, path, destination)
const ACTIONS: &[(&str, &str, &str, Option<&str>)] = &[
    ("readFile", "GET", "/v1/files/local/docs/a.txt", None),
    ("writeFile", "PUT", "/v1/files/local/docs/a.txt", None),
    ("deleteFile", "DELETE", "/v1/files/local/docs/a.txt", None),
    (
        "moveFile",
        "MOVE",
        "/v1/files/local/docs/a.txt",
        Some("/v1/files/local/docs/b.txt"),
    ),
    (
        "copyFile",
        "COPY",
        "/v1/files/local/docs/a.txt",
        Some("/v1/files/local/docs/c.txt"),
    ),
    ("listFolder", "GET", "/v1/folders/local/docs", None),
    ("createFolder", "POST", "/v1/folders/local/docs/new", None),
    ("searchFiles", "GET", "/v1/search/local/docs?q=a", None),
    ("listTrash", "GET", "/v1/trash/local", None),
    (
        "restoreTrash",
        "POST",
        "/v1/trash/local/0123456789abcdef0123456789abcdef/restore",
        None,
    ),
    ("purgeTrash", "DELETE", "/v1/trash/local", None),
];

/// Which actions each scope allows (the table of the policy model).
fn allowed(scope: &str) -> Vec<&'static str> {
    let read = vec!["readFile", "listFolder", "searchFiles", "listTrash"];
    match scope {
        "read" | "storage.read" | "*.read" => read,
        "write" | "admin" | "storage.write" | "*.write" => ACTIONS.iter().map(|a| a.0).collect(),
        "files:read" | "files.read" => vec!["readFile"],
        // files.write holds files:write and files:delete: moves and copies too.
        "files.write" => vec!["writeFile", "deleteFile", "moveFile", "copyFile"],
        "folders.read" => vec!["listFolder"],
        "folders.write" => vec!["createFolder"],
        "search.read" => vec!["searchFiles"],
        "trash.read" => vec!["listTrash"],
        "trash.write" => vec!["restoreTrash", "purgeTrash"],
        // A move deletes its source, and a move or copy without `Overwrite: F` may replace
        // (delete) its destination: both need files:delete too.
        "files:write" => vec!["writeFile"],
        "files:delete" => vec!["deleteFile"],
        "folders:read" => vec!["listFolder"],
        "folders:write" => vec!["createFolder"],
        "search:read" => vec!["searchFiles"],
        "trash:read" => vec!["listTrash"],
        "trash:write" => vec!["restoreTrash", "purgeTrash"],
        _ => vec![],
    }
}

fn request(
    c: &reqwest::Client,
    kg: &Keygate,
    method: &str,
    path: &str,
    dest: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut r = c.request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        kg.url(path),
    );
    if let Some(d) = dest {
        r = r.header("destination", d);
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scope_against_every_storage_action() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "[keys]\nmax_active_per_user = 50\n");
    // Every scope the policy schema declares (@scope): a new scope is tested as soon as it
    // exists (and fails here until `allowed` says what it allows).
    let scopes = keygate::policy::PolicyEngine::load(
        &kg.policies(),
        std::sync::Arc::new(keygate::telemetry::Metrics::new()),
    )
    .unwrap()
    .scopes();
    assert!(scopes.len() >= 23, "{scopes:?}");
    for scope in &scopes {
        let scope = scope.as_str();
        let key = key_with(
            &kg,
            json!({"name": scope, "scopes": [scope], "owner": "ada@example.com"}),
        )
        .await;
        let c = client_with_key(&key);
        let allow = allowed(scope);
        for (action, method, path, dest) in ACTIONS {
            let before = rec.requests().len();
            let r = request(&c, &kg, method, path, *dest).send().await.unwrap();
            let status = r.status();
            if allow.contains(action) {
                assert_eq!(status, StatusCode::OK, "{scope} {action}");
                assert_eq!(rec.requests().len(), before + 1);
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{scope} {action}");
                let b: Value = r.json().await.unwrap();
                assert_eq!(b["error"]["code"], "FORBIDDEN");
                assert!(
                    b["error"]["details"]["required"].as_str().is_some(),
                    "{scope} {action}: {b}"
                );
                assert_eq!(b["error"]["details"]["granted"], json!([scope]));
                assert_eq!(
                    rec.requests().len(),
                    before,
                    "a denied request reached the backend"
                );
            }
        }
    }
    // A denial names the scope that would have allowed it, and never a policy id.
    let key = key_with(
        &kg,
        json!({"name": "rw", "scopes": ["files:read", "files:write"], "owner": "ada@example.com"}),
    )
    .await;
    let r = client_with_key(&key)
        .delete(kg.url("/v1/files/local/x"))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    let b: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(b["error"]["message"], "permission denied");
    assert_eq!(
        b["error"]["details"],
        json!({"required": "files:delete", "granted": ["files:read", "files:write"]})
    );
    assert!(
        !text.contains("scope-") && !text.contains("policy"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_paths_are_compared_segment_by_segment() {
    let backend = Backend::start();
    let kg = Keygate::start(&[backend.addr], "");
    let full = kg.client();
    for path in [
        "/v1/files/local/backups/2025/db.tar",
        "/v1/files/local/backupsX/a",
        "/v1/files/local/documents/a",
        "/v1/files/other/backups/a",
    ] {
        assert_eq!(
            full.put(kg.url(path))
                .body("x")
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::CREATED
        );
    }
    let key = key_with(
        &kg,
        json!({"name": "backups", "scopes": ["write"], "providers": [{"provider": "local", "basePath": "/backups"}], "owner": "ada@example.com"}),
    )
    .await;
    let c = client_with_key(&key);
    let status = |r: reqwest::Response| r.status();
    // Inside and exactly at the base path.
    assert_eq!(
        status(
            c.get(kg.url("/v1/files/local/backups/2025/db.tar"))
                .send()
                .await
                .unwrap()
        ),
        StatusCode::OK
    );
    assert_eq!(
        status(
            c.get(kg.url("/v1/folders/local/backups"))
                .send()
                .await
                .unwrap()
        ),
        StatusCode::OK
    );
    assert_eq!(
        status(
            c.put(kg.url("/v1/files/local/backups/new.tar"))
                .body("y")
                .send()
                .await
                .unwrap()
        ),
        StatusCode::CREATED
    );
    // A sibling with the same prefix, another folder, the provider root, another provider.
    for (path, restriction) in [
        ("/v1/files/local/backupsX/a", "base_path"),
        ("/v1/files/local/documents/a", "base_path"),
        ("/v1/folders/local", "base_path"),
        ("/v1/files/other/backups/a", "provider"),
    ] {
        let r = c.get(kg.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["error"]["details"]["restriction"], restriction, "{path}");
    }
    // Moves need both ends inside: out and in are refused and move nothing.
    let mv = |from: &str, to: &str| {
        c.request(reqwest::Method::from_bytes(b"MOVE").unwrap(), kg.url(from))
            .header("destination", to.to_owned())
    };
    mv(
        "/v1/files/local/backups/new.tar",
        "/v1/files/local/documents/new.tar",
    )
    .expect(StatusCode::FORBIDDEN)
    .await;
    assert!(
        backend.root().join("local/backups/new.tar").exists()
            && !backend.root().join("local/documents/new.tar").exists()
    );
    mv("/v1/files/local/documents/a", "/v1/files/local/backups/a")
        .expect(StatusCode::FORBIDDEN)
        .await;
    assert!(
        backend.root().join("local/documents/a").exists()
            && !backend.root().join("local/backups/a").exists()
    );
    mv(
        "/v1/files/local/backups/new.tar",
        "/v1/files/local/backups/2025/new.tar",
    )
    .expect(StatusCode::CREATED)
    .await;
    assert!(backend.root().join("local/backups/2025/new.tar").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_across_workspaces_and_role_downgrades() {
    let backend = Backend::start();
    let kg = Keygate::start(&[backend.addr], "");
    // A second workspace with its own provider and member.
    kg.cli(&["workspaces", "add", "globex"]);
    kg.cli(&["providers", "add", "gx", "--workspace", "globex"]);
    cli_ok(
        &kg.db.url(),
        &["users", "add", "hank@example.com", "--password-stdin"],
        Some("hank's long password\n"),
    );
    kg.cli(&[
        "members",
        "add",
        "--workspace",
        "globex",
        "--user",
        "hank@example.com",
        "--role",
        "admin",
    ]);
    std::fs::create_dir_all(backend.root().join("gx")).unwrap();
    std::fs::write(backend.root().join("gx/plans.txt"), "globex only").unwrap();
    let hank = key_with(
        &kg,
        json!({"name": "hank", "scopes": ["admin"], "owner": "hank@example.com"}),
    )
    .await;
    // Providers reach the running keygate within its poll interval.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = client_with_key(&hank)
            .get(kg.url("/v1/files/gx/plans.txt"))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            assert_eq!(r.text().await.unwrap(), "globex only");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new provider never became usable"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ada's full-access key (acme) cannot touch globex's provider, and hank's cannot touch acme's.
    let r = kg
        .client()
        .get(kg.url("/v1/files/gx/plans.txt"))
        .expect(StatusCode::FORBIDDEN)
        .await;
    assert_eq!(r["error"]["details"]["restriction"], "ownership");
    let r = client_with_key(&hank)
        .get(kg.url("/v1/folders/local"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // Downgrading ada to viewer caps her admin-scoped key to reads.
    let put = |n: u32| {
        kg.client()
            .put(kg.url(&format!("/v1/files/local/d{n}.txt")))
            .body("x")
            .send()
    };
    assert_eq!(put(0).await.unwrap().status(), StatusCode::CREATED);
    kg.cli(&[
        "members",
        "add",
        "--workspace",
        "acme",
        "--user",
        "ada@example.com",
        "--role",
        "viewer",
    ]);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut n = 1;
    loop {
        let r = put(n).await.unwrap();
        if r.status() == StatusCode::FORBIDDEN {
            assert_eq!(
                r.json::<Value>().await.unwrap()["error"]["details"]["restriction"],
                "role"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a role downgrade did not take effect"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        kg.client()
            .get(kg.url("/v1/files/local/d0.txt"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_keep_the_last_good_set_and_apply_good_ones_at_once() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "[policies]\nwatch = false\n");
    let key = key_with(
        &kg,
        json!({"name": "reader", "scopes": ["read"], "owner": "ada@example.com"}),
    )
    .await;
    let c = client_with_key(&key);
    let get = || c.get(kg.url("/v1/files/local/a.txt")).send();
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    let status: Value = kg
        .operator()
        .get(kg.control_url("/v1/admin/policy"))
        .send_json()
        .await;
    assert_eq!(status["data"]["epoch"], 1);
    let hash = status["data"]["hash"].as_str().unwrap().to_owned();
    // Every loaded policy is listed with where it is written and a hash of its text.
    let listed = status["data"]["policies"].as_array().unwrap();
    let own = listed
        .iter()
        .find(|p| p["id"] == "manage-own-credentials")
        .expect("the shipped policy is listed");
    assert_eq!(own["place"], "management.cedar:5:1");
    assert_eq!(own["effect"], "permit");
    assert_eq!(own["hash"].as_str().unwrap().len(), 64);
    assert!(listed.iter().any(|p| p["effect"] == "forbid"));

    // A broken file is rejected; the old decisions stand, unchanged.
    std::fs::write(
        kg.policies().join("broken.cedar"),
        "@id(\"oops\")\nforbid (principal, action, resource) when { principal.nope };\n",
    )
    .unwrap();
    let (s, b) = kg.reload_policies().await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("broken.cedar:2"),
        "{b}"
    );
    assert_eq!(b["error"]["details"]["runningEpoch"], 1);
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    let status: Value = kg
        .operator()
        .get(kg.control_url("/v1/admin/policy"))
        .send_json()
        .await;
    assert_eq!(
        (
            status["data"]["epoch"].as_u64(),
            status["data"]["hash"].as_str()
        ),
        (Some(1), Some(hash.as_str()))
    );
    assert!(status["data"]["lastError"]
        .as_str()
        .unwrap()
        .contains("nope"));
    assert!(kg
        .metrics()
        .await
        .contains(r#"keygate_policy_reloads_total{result="error"} 1"#));

    // A good file applies on the next request.
    std::fs::write(
        kg.policies().join("broken.cedar"),
        "@id(\"no-reading-a\")\n@restriction(\"maintenance\")\nforbid (principal, action == Keygate::Action::\"readFile\", resource == Keygate::Path::\"local:/a.txt\");\n",
    )
    .unwrap();
    let (s, b) = kg.reload_policies().await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["data"]["epoch"], 2);
    assert_eq!(b["data"]["lastError"], Value::Null);
    let r = get().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["details"]["restriction"],
        "maintenance"
    );
    assert_eq!(
        c.get(kg.url("/v1/files/local/b.txt"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert!(kg.metrics().await.contains("keygate_policy_epoch 2"));
    // An API key cannot reload policies.
    client_with_key(&key)
        .post(kg.control_url("/v1/admin/policy/reload"))
        .expect(StatusCode::FORBIDDEN)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_picked_up_by_the_watcher() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    let get = || {
        kg.client()
            .get(kg.url("/v1/files/local/watched.txt"))
            .send()
    };
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    std::fs::write(
        kg.policies().join("extra.cedar"),
        "@id(\"no-watched\")\nforbid (principal, action, resource == Keygate::Path::\"local:/watched.txt\");\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while get().await.unwrap().status() != StatusCode::FORBIDDEN {
        assert!(Instant::now() < deadline, "the file watcher did not reload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_denials_are_audited_with_their_policies() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "[policies]\nwatch = false\n");
    let get = || kg.client().get(kg.url("/v1/files/local/hup.txt")).send();
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    std::fs::write(
        kg.policies().join("hup.cedar"),
        "@id(\"no-hup\")\nforbid (principal, action, resource == Keygate::Path::\"local:/hup.txt\");\n",
    )
    .unwrap();
    // Not watched: nothing changes until the signal.
    assert_eq!(get().await.unwrap().status(), StatusCode::OK);
    assert!(Command::new("kill")
        .args(["-HUP", &kg.proc.pid().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while get().await.unwrap().status() != StatusCode::FORBIDDEN {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The audit event names the deciding policy and the policy set; the client never sees
    // them. It is written after the response went out, so wait for it.
    let lines = kg
        .audit_until(|l| l.iter().any(|e| e["decision"] == "deny"))
        .await;
    let deny = lines
        .iter()
        .rfind(|e| e["decision"] == "deny")
        .expect("an audit line for the denial");
    assert_eq!(deny["policies"], json!(["no-hup"]), "{deny}");
    assert_eq!(deny["resources"], json!(["local:/hup.txt"]));
    assert_eq!(deny["action"], "readFile");
    assert_eq!(deny["reason"], "FORBIDDEN");
    assert_eq!(deny["status"], 403);
    assert_eq!(deny["policyEpoch"], 2);
    let status: Value = kg
        .operator()
        .get(kg.control_url("/v1/admin/policy"))
        .send_json()
        .await;
    assert_eq!(deny["policySet"], status["data"]["hash"]);
    // The allowed requests before the reload are there too (the harness samples every allow).
    assert!(lines
        .iter()
        .any(|e| e["decision"] == "allow" && e["policyEpoch"] == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_errors_while_evaluating_denies() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "[policies]\nwatch = false\n");
    assert_eq!(
        kg.client()
            .get(kg.url("/v1/files/local/a"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // Valid in strict mode, but the addition overflows on every evaluation. Cedar skips an
    // erroring policy, which would let this forbid allow; keygate must deny.
    std::fs::write(
        kg.policies().join("overflow.cedar"),
        "@id(\"overflowing-forbid\")\nforbid (principal, action, resource) when { 9223372036854775807 + 1 > 0 };\n",
    )
    .unwrap();
    let (s, b) = kg.reload_policies().await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let before = rec.requests().len();
    let r = kg
        .client()
        .get(kg.url("/v1/files/local/a"))
        .expect(StatusCode::FORBIDDEN)
        .await;
    assert_eq!(r["error"]["details"]["restriction"], "policy_error");
    assert_eq!(rec.requests().len(), before);
    assert!(kg.metrics().await.contains("keygate_policy_errors_total 1"));
}

/// Starts `keygate serve` on the policies in `dir`, which must make it exit by itself with an
/// error (if it is still serving after 30 s, that is the failure); returns its stderr.
fn refused_start(dir: &std::path::Path) -> String {
    let db = TestDb::sqlite();
    let mut child = Command::new(bin("keygate"))
        .args([
            "--database-url",
            &db.url(),
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--control-listen",
            "127.0.0.1:0",
        ])
        .env("KEYGATE_POLICIES_DIR", dir)
        .env("KEYGATE_KEYS_PEPPER", TEST_PEPPER)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("keygate started on the policies in {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn keygate_refuses_to_start_on_an_invalid_policy_set() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        "policies/keygate.cedarschema",
        dir.path().join("keygate.cedarschema"),
    )
    .unwrap();
    std::fs::write(dir.path().join("bad.cedar"), "@id(\"bad\")\npermit (principal, action, resource) when { principal.sc0pes.contains(\"read\") };\n").unwrap();
    let err = refused_start(dir.path());
    assert!(
        err.contains("bad.cedar:2") && err.contains("sc0pes"),
        "{err}"
    );
}

#[test]
fn the_policy_tools_pass_on_the_shipped_policies_and_catch_breakage() {
    let run = |args: &[&str]| {
        Command::new(bin("keygate"))
            .args(args)
            .env_remove("KEYGATE_CONFIG")
            .output()
            .unwrap()
    };
    for args in [
        &["policy", "validate", "policies"][..],
        &["policy", "test", "policies"],
        &["policy", "fmt", "--check", "policies"],
    ] {
        let out = run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run(&["policy", "test", "policies"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" passed, 0 failed"), "{text}");

    // Breaking the base-path policy makes the scenarios fail.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    for entry in std::fs::read_dir("policies")
        .unwrap()
        .chain(std::fs::read_dir("policies/tests").unwrap())
    {
        let p = entry.unwrap().path();
        if p.is_file() {
            let rel = p.strip_prefix("policies").unwrap();
            std::fs::copy(&p, dir.path().join(rel)).unwrap();
        }
    }
    let restrictions = dir.path().join("restrictions.cedar");
    let text = std::fs::read_to_string(&restrictions)
        .unwrap()
        .replace("!(resource in principal.grants)", "false");
    std::fs::write(&restrictions, text).unwrap();
    let out = run(&["policy", "test", dir.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL restrictions.toml"));
    std::fs::write(
        dir.path().join("ugly.cedar"),
        "@id(\"u\") permit(principal,action,resource);",
    )
    .unwrap();
    let out = run(&["policy", "fmt", "--check", dir.path().to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("ugly.cedar"));
    // Formatting rewrites the files; then the check passes.
    assert!(run(&["policy", "fmt", dir.path().to_str().unwrap()])
        .status
        .success());
    assert!(
        run(&["policy", "fmt", "--check", dir.path().to_str().unwrap()])
            .status
            .success()
    );
    assert!(std::fs::read_to_string(dir.path().join("ugly.cedar"))
        .unwrap()
        .contains("permit (principal, action, resource);"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_the_decision_and_the_deciding_policies() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    let r = kg
        .operator()
        .post(kg.control_url("/v1/keys"))
        .json(&json!({"name": "b", "scopes": ["read"], "providers": [{"provider": "local", "basePath": "/backups"}], "owner": "ada@example.com"}))
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["data"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let explain = |path: &str| {
        let out = Command::new(bin("keygate"))
            .args([
                "--database-url",
                &kg.db.url(),
                "policy",
                "explain",
                "--key",
                &id,
                "--method",
                "GET",
                "--path",
                path,
            ])
            .env("KEYGATE_POLICIES_DIR", kg.policies())
            .env("KEYGATE_KEYS_PEPPER", TEST_PEPPER)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let inside = explain("/v1/files/local/backups/x");
    assert!(
        inside.contains("decision: ALLOW") && inside.contains("scope-read"),
        "{inside}"
    );
    let outside = explain("/v1/files/local/documents/x");
    assert!(
        outside.contains("decision: DENY")
            && outside.contains("outside-base-path")
            && outside.contains("base_path"),
        "{outside}"
    );
    let out = Command::new(bin("keygate"))
        .args([
            "--database-url",
            &kg.db.url(),
            "policy",
            "explain",
            "--user",
            "ada@example.com",
            "--method",
            "DELETE",
            "--path",
            "/v1/files/local/x",
        ])
        .env("KEYGATE_POLICIES_DIR", kg.policies())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("decision: ALLOW") && text.contains("login-admin"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The same over HTTP, on the running set: POST /v1/admin/policy/check.
    let check = |client: reqwest::Client, body: Value| {
        let url = kg.control_url("/v1/admin/policy/check");
        async move { client.post(url).json(&body).send().await.unwrap() }
    };
    let r = check(
        kg.operator(),
        json!({"key": id, "method": "GET", "path": "/v1/files/local/documents/x"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let answer: Value = r.json().await.unwrap();
    let data = &answer["data"];
    assert_eq!(data["decision"], "deny", "{answer}");
    assert_eq!(data["action"], "readFile");
    assert_eq!(data["principal"]["kind"], "apiKey");
    assert_eq!(data["principal"]["scopes"], json!(["read"]));
    let decided = &data["resources"][0];
    assert_eq!(decided["resource"], "local:/documents/x");
    assert_eq!(decided["details"]["restriction"], "base_path");
    let deciding = decided["policies"].as_array().unwrap();
    assert!(
        deciding
            .iter()
            .any(|p| p["id"] == "outside-base-path" && p["place"].as_str().is_some()),
        "{answer}"
    );
    let r = check(
        kg.operator(),
        json!({"user": "ada@example.com", "method": "DELETE", "path": "/v1/files/local/x"}),
    )
    .await;
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["data"]["decision"], "allow", "{answer}");
    assert_eq!(answer["data"]["principal"]["role"], "admin");
    // A workspace admin's key may ask; a read-only key may not (and does not learn whether
    // the principal exists).
    let r = check(
        client_with_key(&kg.key),
        json!({"key": id, "method": "GET", "path": "/v1/files/local/backups/x"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let reader = key_with(
        &kg,
        json!({"name": "reader", "scopes": ["read"], "owner": "ada@example.com"}),
    )
    .await;
    for subject in [json!({"key": id}), json!({"key": "no-such-key"})] {
        let mut body = json!({"method": "GET", "path": "/v1/files/local/x"});
        body.as_object_mut()
            .unwrap()
            .extend(subject.as_object().unwrap().clone());
        let r = check(client_with_key(&reader), body).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    // One subject, and a request the route table knows.
    for body in [
        json!({"key": id, "user": "ada@example.com", "method": "GET", "path": "/v1/files/local/x"}),
        json!({"key": id, "method": "GET", "path": "/nowhere"}),
    ] {
        let r = check(kg.operator(), body).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["success"], false);
    }
    assert_eq!(
        check(kg.operator(), json!({"key": id}))
            .await
            .status()
            .as_u16()
            / 100,
        4,
        "a body without method and path is refused"
    );
}

/// The route table's actions must be in the schema: a set that renames one (consistently, so
/// it validates on its own) is refused by `check-config`, at start and on reload, naming the
/// action; the running set stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_set_without_an_action_the_routes_need_is_refused() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "[policies]\nwatch = false\n");
    let policies = kg.dir.path().join("policies");
    let renamed = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&policies).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            renamed.path().join(path.file_name().unwrap()),
            text.replace("searchFiles", "findFiles"),
        )
        .unwrap();
    }
    // On its own the renamed set is valid.
    let out = Command::new(bin("keygate"))
        .args(["policy", "validate"])
        .arg(renamed.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // check-config refuses it for these routes.
    let out = Command::new(bin("keygate"))
        .arg("check-config")
        .env("KEYGATE_POLICIES_DIR", renamed.path())
        .env("KEYGATE_KEYS_PEPPER", TEST_PEPPER)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("names: searchFiles"), "{err}");
    // A reload to it is refused and the running set keeps serving search.
    for entry in std::fs::read_dir(renamed.path()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, policies.join(path.file_name().unwrap())).unwrap();
    }
    let (status, body) = kg.reload_policies().await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("searchFiles"),
        "{body}"
    );
    client_with_key(&kg.key)
        .get(kg.url("/v1/search/local?q=x"))
        .expect(StatusCode::OK)
        .await;
    // And keygate does not start on it.
    assert!(refused_start(renamed.path()).contains("searchFiles"));
}

/// Shadow policies decide every request beside the enforced set and never change an answer:
/// a disagreement is counted and audited (whatever the allow sampling) with both decisions;
/// a shadow policy may replace an enforced one by @id; promoting is a file move and a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_policies_are_counted_and_audited_but_never_enforced() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(
        &[rec.addr],
        "[policies]\nwatch = false\n[audit]\noutput = \"@AUDIT_FILE@\"\nallow_sample_rate = 0.0\n",
    );
    let reader = key_with(
        &kg,
        json!({"name": "reader", "scopes": ["files:read"], "owner": "ada@example.com"}),
    )
    .await;
    let shadow = kg.policies().join("shadow");
    std::fs::create_dir(&shadow).unwrap();
    // Would deny deletes by API keys; would let files:read list folders.
    std::fs::write(
        shadow.join("candidates.cedar"),
        "@id(\"keys-never-delete\")\nforbid (\n  principal is Keygate::ApiKey,\n  action == \
         Keygate::Action::\"deleteFile\",\n  resource\n);\n\n@id(\"readers-list\")\npermit (\n  \
         principal,\n  action == Keygate::Action::\"listFolder\",\n  resource\n)\nwhen { \
         principal.scopes.contains(\"files:read\") };\n",
    )
    .unwrap();
    let (s, b) = kg.reload_policies().await;
    assert_eq!(s, StatusCode::OK, "{b}");

    // Enforced: the fixture's full-access key deletes; the reader cannot list.
    for _ in 0..3 {
        kg.client()
            .delete(kg.url("/v1/files/local/docs/a.txt"))
            .expect(StatusCode::OK)
            .await;
    }
    client_with_key(&reader)
        .get(kg.url("/v1/folders/local/docs"))
        .expect(StatusCode::FORBIDDEN)
        .await;
    // Agreeing requests count nothing.
    client_with_key(&reader)
        .get(kg.url("/v1/files/local/docs/a.txt"))
        .expect(StatusCode::OK)
        .await;
    let m = kg
        .metrics_with(&[
            "keygate_shadow_disagreements_total{direction=\"would_deny\",policy=\"keys-never-delete\"} 3",
            "keygate_shadow_disagreements_total{direction=\"would_allow\",policy=\"readers-list\"} 1",
        ])
        .await;
    assert_eq!(
        metric(
            &m,
            "keygate_shadow_disagreements_total{direction=\"would_deny\",policy=\"keys-never-delete\"}"
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "keygate_shadow_disagreements_total{direction=\"would_allow\",policy=\"readers-list\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        m.matches("keygate_shadow_disagreements_total{").count(),
        2,
        "{m}"
    );
    // Allows are not sampled here, but the disagreeing ones are audited, with both decisions.
    let lines = kg.audit_until(|l| l.len() >= 4).await;
    let deletes: Vec<&Value> = lines
        .iter()
        .filter(|e| e["action"] == "deleteFile")
        .collect();
    assert_eq!(deletes.len(), 3, "{lines:?}");
    assert_eq!(deletes[0]["decision"], "allow");
    assert_eq!(
        deletes[0]["shadow"],
        json!({"decision": "deny", "policy": "keys-never-delete", "policies": ["keys-never-delete"]})
    );
    let list = lines
        .iter()
        .find(|e| e["action"] == "listFolder")
        .expect("the denied listing is audited");
    assert_eq!(list["decision"], "deny");
    assert_eq!(list["shadow"]["decision"], "allow");
    assert_eq!(list["shadow"]["policy"], "readers-list");
    assert!(
        !lines.iter().any(|e| e["action"] == "readFile"),
        "an agreeing allow is sampled as usual: {lines:?}"
    );

    // The listing shows which policies are shadow ones.
    let status: Value = kg
        .operator()
        .get(kg.control_url("/v1/admin/policy"))
        .send_json()
        .await;
    let listed = |id: &str| {
        status["data"]["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(listed("keys-never-delete")["shadow"], true);
    assert!(listed("keys-never-delete")["place"]
        .as_str()
        .unwrap()
        .starts_with("shadow/candidates.cedar:1:"));
    assert_eq!(listed("scope-read")["shadow"], false);

    // A shadow policy with an enforced policy's @id replaces it in the shadow set only: here a
    // scope-files-read that no longer allows anything.
    std::fs::write(
        shadow.join("candidates.cedar"),
        "@id(\"scope-files-read\")\npermit (\n  principal,\n  action in \
         Keygate::Action::\"files:read\",\n  resource\n)\nwhen { \
         principal.scopes.contains(\"files:read\") && false };\n",
    )
    .unwrap();
    let (s, b) = kg.reload_policies().await;
    assert_eq!(s, StatusCode::OK, "{b}");
    client_with_key(&reader)
        .get(kg.url("/v1/files/local/docs/a.txt"))
        .expect(StatusCode::OK)
        .await;
    kg.metrics_with(&[
        "keygate_shadow_disagreements_total{direction=\"would_deny\",policy=\"scope-files-read\"} 1",
    ])
    .await;

    // Promote the first candidates: a file move and a reload. Enforced now, and no longer
    // a shadow (the counters stay where they were).
    std::fs::remove_file(shadow.join("candidates.cedar")).unwrap();
    std::fs::write(
        kg.policies().join("candidates.cedar"),
        "@id(\"keys-never-delete\")\nforbid (\n  principal is Keygate::ApiKey,\n  action == \
         Keygate::Action::\"deleteFile\",\n  resource\n);\n",
    )
    .unwrap();
    let (s, b) = kg.reload_policies().await;
    assert_eq!(s, StatusCode::OK, "{b}");
    kg.client()
        .delete(kg.url("/v1/files/local/docs/a.txt"))
        .expect(StatusCode::FORBIDDEN)
        .await;
    let m = kg.metrics().await;
    assert_eq!(
        metric(
            &m,
            "keygate_shadow_disagreements_total{direction=\"would_deny\",policy=\"keys-never-delete\"}"
        ),
        3.0
    );

    // An invalid shadow policy is refused like an enforced one: the last good set runs.
    std::fs::write(
        shadow.join("broken.cedar"),
        "@id(\"broken\")\npermit (principal, action, resource) when { principal.nope };\n",
    )
    .unwrap();
    let (s, b) = kg.reload_policies().await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert!(b.to_string().contains("shadow/broken.cedar"), "{b}");
}

/// A request no route maps to a storage path (`[routes] default_action`) is decided by the
/// policy files, as a `Keygate::Unmapped` resource: refused by `unmapped-requests` until a
/// security team writes otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmapped_requests_are_decided_by_the_policy_files() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(
        &[rec.addr],
        "[policies]\nwatch = false\n[routes]\ndefault_action = \"readFile\"\n",
    );
    let r = kg
        .client()
        .get(kg.url("/status?verbose=1"))
        .expect(StatusCode::FORBIDDEN)
        .await;
    assert_eq!(r["error"]["details"], json!({"restriction": "no_resource"}));
    let lines = kg
        .audit_until(|l| l.iter().any(|e| e["decision"] == "deny"))
        .await;
    let deny = lines.iter().rfind(|e| e["decision"] == "deny").unwrap();
    assert_eq!(deny["policies"], json!(["unmapped-requests"]), "{deny}");
    assert!(rec.requests().is_empty());

    // The team lets /status through: an exception in the forbid, and a reload.
    let file = kg.policies().join("restrictions.cedar");
    let text = std::fs::read_to_string(&file).unwrap();
    let changed = text.replace(
        "forbid (\n  principal,\n  action,\n  resource is Keygate::Unmapped\n);",
        "forbid (\n  principal,\n  action,\n  resource is Keygate::Unmapped\n)\nunless { resource == \
         Keygate::Unmapped::\"/status\" };",
    );
    assert_ne!(changed, text);
    std::fs::write(&file, changed).unwrap();
    let (s, b) = kg.reload_policies().await;
    assert_eq!(s, StatusCode::OK, "{b}");
    kg.client()
        .get(kg.url("/status?verbose=1"))
        .expect(StatusCode::OK)
        .await;
    assert_eq!(rec.requests().len(), 1);
    kg.client()
        .get(kg.url("/metrics-of-the-backend"))
        .expect(StatusCode::FORBIDDEN)
        .await;
    assert_eq!(rec.requests().len(), 1);
}

/// Reading and reloading the policies and certificates is decided by `operating.cedar`: the
/// operator may; nobody else, not even a workspace admin signed in or with the admin scope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_policies_let_the_operator_operate_keygate() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "[policies]\nwatch = false\n");
    let (s, _) = kg.reload_policies().await;
    assert_eq!(s, StatusCode::OK);
    for (method, path) in [
        ("GET", "/v1/admin/policy"),
        ("POST", "/v1/admin/policy/reload"),
        ("GET", "/v1/admin/tls"),
    ] {
        let r = kg
            .client()
            .request(method.parse().unwrap(), kg.control_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{method} {path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "FORBIDDEN", "{body}");
    }
    // Without operator-operates-keygate, the operator may not either (SIGHUP still reloads).
    let file = kg.policies().join("operating.cedar");
    let text = std::fs::read_to_string(&file).unwrap();
    let cut = text.find("@id(\"operator-operates-keygate\")").unwrap();
    std::fs::write(&file, &text[..cut]).unwrap();
    let (s, b) = kg.reload_policies().await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = kg.reload_policies().await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    let r = kg
        .operator()
        .get(kg.control_url("/v1/admin/policy"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

/// Scopes are data: a deployment that adds a scope and an action to its schema, a permit and
/// a route issues keys with that scope, and keygate checks them and names the scope in 403s,
/// with no code change; a scope the schema does not declare is refused everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scope_added_in_the_policy_files_is_issued_checked_and_named() {
    let rec = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for entry in std::fs::read_dir(&shipped).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, policies.join(path.file_name().unwrap())).unwrap();
        }
    }
    let schema = policies.join("keygate.cedarschema");
    let text = std::fs::read_to_string(&schema).unwrap();
    let (head, _) = text.rsplit_once('}').unwrap();
    std::fs::write(
        &schema,
        format!(
            "{head}\n  @scope\n  action \"read:organize\";\n  action organizeJobs in \
             [\"read:organize\"]\n    appliesTo {{ principal: [ApiKey, ScopedToken, Login], \
             resource: [Path, Unmapped], context: {{}} }};\n}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        policies.join("organize.cedar"),
        "@id(\"scope-read-organize\")\npermit (\n  principal,\n  action in \
         Keygate::Action::\"read:organize\",\n  resource\n)\nwhen { \
         principal.scopes.contains(\"read:organize\") };\n",
    )
    .unwrap();
    let config = dir.path().join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_listen = \"127.0.0.1:0\"\n\
             [upstream]\npeers = [\"{}\"]\n[policies]\ndir = {:?}\nwatch = false\n\
             [rate_limit]\ndefault = \"1000000/min\"\n\
             [[rate_limit.rule]]\nname = \"organizers\"\nscope = \"read:organize\"\nlimit = \"100/s\"\n\
             [[routes.rule]]\nmethods = [\"GET\"]\npath = \"/v1/organize/{{provider}}/{{*path}}\"\n\
             action = \"organizeJobs\"\n",
            rec.addr,
            policies.display().to_string()
        ),
    )
    .unwrap();
    let db = TestDb::sqlite();
    fixture(&db.url());
    let (_proc, data, control) = tokio::task::spawn_blocking({
        let (config, url, log) = (config.clone(), db.url(), dir.path().join("keygate.log"));
        move || spawn_serve(&config, &url, &[], log)
    })
    .await
    .unwrap();
    let operator = |body: Value| {
        reqwest::Client::new()
            .post(format!("http://{control}/v1/keys"))
            .bearer_auth(OPERATOR_TOKEN)
            .json(&body)
            .send()
    };
    let created = |r: reqwest::Response| async move {
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.unwrap();
        body["data"]["key"].as_str().unwrap().to_owned()
    };
    let organizer = created(
        operator(
            json!({"name": "organizer", "scopes": ["read:organize"], "owner": "ada@example.com"}),
        )
        .await
        .unwrap(),
    )
    .await;
    let reader = created(
        operator(json!({"name": "reader", "scopes": ["read"], "owner": "ada@example.com"}))
            .await
            .unwrap(),
    )
    .await;
    let url = format!("http://{data}/v1/organize/local/photos");
    client_with_key(&organizer)
        .get(&url)
        .expect(StatusCode::OK)
        .await;
    let denied = client_with_key(&reader)
        .get(&url)
        .expect(StatusCode::FORBIDDEN)
        .await;
    assert_eq!(
        denied["error"]["details"],
        json!({"required": "read:organize", "granted": ["read"]})
    );
    // A reload that takes @scope off a scope a rate-limit rule names is refused.
    let with_scope = std::fs::read_to_string(&schema).unwrap();
    std::fs::write(
        &schema,
        with_scope.replace(
            "  @scope\n  action \"read:organize\";",
            "  action \"read:organize\";",
        ),
    )
    .unwrap();
    let r = reqwest::Client::new()
        .post(format!("http://{control}/v1/admin/policy/reload"))
        .bearer_auth(OPERATOR_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = r.json().await.unwrap();
    assert!(body.to_string().contains("read:organize"), "{body}");
    std::fs::write(&schema, with_scope).unwrap();
    // A scope no schema declares is refused when a key is made.
    let r =
        operator(json!({"name": "typo", "scopes": ["read:organise"], "owner": "ada@example.com"}))
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'read:organise' is not a scope"),
        "{body}"
    );

    // The shipped schema does not declare it: the same config is refused by check-config,
    // naming the route's action, and without the route, the rate-limit rule's scope.
    let refused_with_shipped_policies = || {
        let out = Command::new(bin("keygate"))
            .arg("--config")
            .arg(&config)
            .arg("check-config")
            .env("KEYGATE_POLICIES_DIR", &shipped)
            .env("KEYGATE_KEYS_PEPPER", TEST_PEPPER)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused_with_shipped_policies();
    assert!(err.contains("organizeJobs"), "{err}");
    let text = std::fs::read_to_string(&config).unwrap();
    let (without_route, _) = text.split_once("[[routes.rule]]").unwrap();
    std::fs::write(&config, without_route).unwrap();
    let err = refused_with_shipped_policies();
    assert!(
        err.contains("names scopes the policy schema does not declare (@scope): read:organize"),
        "{err}"
    );
}

/// A reload that takes away a scope keys still hold is applied (removing a scope only takes
/// access away), and the holders are named in its answer, the policy status and a metric.
#[tokio::test]
async fn a_scope_removed_while_keys_hold_it_grants_nothing_and_its_holders_are_named() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    let trash = key_with(
        &kg,
        json!({"name": "trash reader", "scopes": ["trash:read", "files:read"], "owner": "ada@example.com"}),
    )
    .await;
    let trash_id = kg
        .operator()
        .get(kg.control_url("/v1/keys"))
        .send_json()
        .await["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "trash reader")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    client_with_key(&trash)
        .get(kg.url("/v1/trash/local"))
        .expect(StatusCode::OK)
        .await;
    let schema = kg.policies().join("keygate.cedarschema");
    let shipped = std::fs::read_to_string(&schema).unwrap();
    std::fs::write(
        &schema,
        shipped.replace(
            "  @scope\n  action \"trash:read\"",
            "  action \"trash:read\"",
        ),
    )
    .unwrap();
    // A policy that still tests for the scope would never see it again (a forbid on it would
    // be lifted): the policies must change with the schema.
    let (status, body) = kg.reload_policies().await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body.to_string()
            .contains(r#"scope-trash-read names the scope \"trash:read\""#),
        "{body}"
    );
    let scopes = kg.policies().join("scopes.cedar");
    let shipped_scopes = std::fs::read_to_string(&scopes).unwrap();
    let start = shipped_scopes.find("@id(\"scope-trash-read\")").unwrap();
    let end = start + shipped_scopes[start..].find("};").unwrap() + 2;
    std::fs::write(
        &scopes,
        format!("{}{}", &shipped_scopes[..start], &shipped_scopes[end..]),
    )
    .unwrap();
    let (status, body) = kg.reload_policies().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["inertCredentials"], 1);
    assert_eq!(
        body["data"]["inertScopes"],
        json!([{"credential": "key", "id": trash_id, "scopes": ["trash:read"]}])
    );
    // The scope grants nothing now; the key's other scope still works.
    client_with_key(&trash)
        .get(kg.url("/v1/trash/local"))
        .expect(StatusCode::FORBIDDEN)
        .await;
    client_with_key(&trash)
        .get(kg.url("/v1/files/local/a.txt"))
        .expect(StatusCode::OK)
        .await;
    assert_eq!(
        metric(&kg.metrics().await, "keygate_inert_scope_credentials"),
        1.0
    );
    // Defining it again brings the key back; nothing is inert any more.
    std::fs::write(&schema, &shipped).unwrap();
    std::fs::write(&scopes, &shipped_scopes).unwrap();
    let (status, body) = kg.reload_policies().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["inertCredentials"], 0);
    client_with_key(&trash)
        .get(kg.url("/v1/trash/local"))
        .expect(StatusCode::OK)
        .await;
    assert!(kg
        .proc
        .stderr()
        .contains("1 live credential(s) hold scopes the policies no longer define"));
}

/// A deployment spells a scope its own way (`@scope("read:files")` on `files:read`): keys are
/// made and listed, and 403s name scopes, in that spelling; the policies keep the name.
#[tokio::test]
async fn scopes_in_the_deployments_own_spelling() {
    let rec = Recorder::start().await;
    let kg = Keygate::start(&[rec.addr], "");
    let schema = kg.policies().join("keygate.cedarschema");
    let shipped = std::fs::read_to_string(&schema).unwrap();
    let spelled = |alias: &str| {
        shipped.replace(
            "  @scope\n  action \"files:read\"",
            &format!("  @scope(\"{alias}\")\n  action \"files:read\""),
        )
    };
    std::fs::write(&schema, spelled("read:files")).unwrap();
    let (status, body) = kg.reload_policies().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for given in ["read:files", "files:read"] {
        let created = kg
            .operator()
            .post(kg.control_url("/v1/keys"))
            .json(&json!({"name": given, "scopes": [given], "owner": "ada@example.com"}))
            .expect(StatusCode::CREATED)
            .await;
        assert_eq!(created["data"]["scopes"], json!(["read:files"]));
        let key = created["data"]["key"].as_str().unwrap();
        client_with_key(key)
            .get(kg.url("/v1/files/local/a.txt"))
            .expect(StatusCode::OK)
            .await;
        let denied = client_with_key(key)
            .put(kg.url("/v1/files/local/a.txt"))
            .body("x")
            .expect(StatusCode::FORBIDDEN)
            .await;
        assert_eq!(
            denied["error"]["details"],
            json!({"required": "files:write", "granted": ["read:files"]})
        );
    }
    let listed = kg
        .operator()
        .get(kg.control_url("/v1/keys"))
        .send_json()
        .await;
    assert!(listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["name"] == "files:read")
        .all(|k| k["scopes"] == json!(["read:files"])));
    // A spelling may not be another scope's name.
    std::fs::write(&schema, spelled("read")).unwrap();
    let (status, body) = kg.reload_policies().await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body.to_string()
            .contains("\\\"read\\\" is the name of another scope"),
        "{body}"
    );
}
