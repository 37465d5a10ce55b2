//! Migrations and the admin CLI through the real binary, on SQLite and on PostgreSQL (when
//! `KEYGATE_TEST_POSTGRES_URL` is set; CI always sets it).

mod common;

use std::process::Command;

use common::{bin, cli, cli_ok, TestDb};
use serde_json::Value;

fn ok(db: &TestDb, args: &[&str], stdin: Option<&str>) -> String {
    cli_ok(&db.url(), args, stdin)
}

fn fails(db: &TestDb, args: &[&str], stdin: Option<&str>, message: &str) {
    let (ok, _, stderr) = cli(&db.url(), args, stdin);
    assert!(!ok, "keygate {args:?} should fail");
    assert!(
        stderr.contains(message),
        "keygate {args:?}: expected '{message}' in: {stderr}"
    );
}

fn json(db: &TestDb, args: &[&str]) -> Value {
    serde_json::from_str(&ok(db, args, None)).unwrap()
}

/// The whole admin flow; the same on both databases.
fn admin_flow(db: &TestDb) {
    let migrated = ok(db, &["migrate"], None);
    assert!(
        migrated.contains("applied 20261122000001 foundation"),
        "{migrated}"
    );
    // Migrating again is a no-op.
    assert_eq!(ok(db, &["migrate"], None), migrated);

    assert!(ok(db, &["workspaces", "add", "acme"], None).contains("created workspace acme"));
    ok(db, &["workspaces", "add", "globex"], None);
    fails(
        db,
        &["workspaces", "add", "acme"],
        None,
        "a workspace named 'acme' already exists",
    );
    fails(
        db,
        &["workspaces", "add", "bad name"],
        None,
        "is not a valid workspace name",
    );
    let list = json(db, &["workspaces", "list", "--json"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme", "globex"]);

    ok(
        db,
        &[
            "users",
            "add",
            "Ada@Example.com",
            "--name",
            "Ada",
            "--password-stdin",
        ],
        Some("correct horse battery\n"),
    );
    fails(
        db,
        &["users", "add", "ada@example.com", "--password-stdin"],
        Some("another password\n"),
        "already exists",
    );
    fails(
        db,
        &["users", "add", "bob@example.com", "--password-stdin"],
        Some("short\n"),
        "at least 8 characters",
    );
    fails(
        db,
        &["users", "add", "not-an-email", "--password-stdin"],
        Some("long enough pw\n"),
        "is not an email address",
    );
    fails(
        db,
        &["users", "add", "bob@example.com"],
        None,
        "--password-stdin",
    );
    let users = json(db, &["users", "list", "--json"]);
    assert_eq!(users[0]["email"], "ada@example.com");
    assert!(
        users[0].get("passwordHash").is_none(),
        "listings never show the hash"
    );

    let m = json(
        db,
        &[
            "members",
            "add",
            "--workspace",
            "acme",
            "--user",
            "ada@example.com",
            "--role",
            "editor",
            "--json",
        ],
    );
    assert_eq!(m["role"], "editor");
    // Changing the role updates the same membership.
    ok(
        db,
        &[
            "members",
            "add",
            "--workspace",
            "acme",
            "--user",
            "ada@example.com",
            "--role",
            "viewer",
        ],
        None,
    );
    let members = json(db, &["members", "list", "--workspace", "acme", "--json"]);
    assert_eq!(members.as_array().unwrap().len(), 1);
    assert_eq!(members[0]["role"], "viewer");
    fails(
        db,
        &[
            "members",
            "add",
            "--workspace",
            "acme",
            "--user",
            "ada@example.com",
            "--role",
            "owner",
        ],
        None,
        "invalid value 'owner'",
    );
    fails(
        db,
        &[
            "members",
            "add",
            "--workspace",
            "nope",
            "--user",
            "ada@example.com",
            "--role",
            "admin",
        ],
        None,
        "no workspace named 'nope'",
    );
    fails(
        db,
        &[
            "members",
            "add",
            "--workspace",
            "acme",
            "--user",
            "eve@example.com",
            "--role",
            "admin",
        ],
        None,
        "no user with email 'eve@example.com'",
    );

    let p = json(
        db,
        &["providers", "add", "local", "--workspace", "acme", "--json"],
    );
    assert_eq!(p["workspace"], "acme");
    fails(
        db,
        &["providers", "add", "local", "--workspace", "globex"],
        None,
        "a provider named 'local' already exists",
    );
    fails(
        db,
        &["providers", "add", "Bad/Name", "--workspace", "acme"],
        None,
        "is not a valid provider name",
    );
    fails(
        db,
        &["providers", "add", "x", "--workspace", "initech"],
        None,
        "no workspace named 'initech'",
    );
    let providers = json(db, &["providers", "list", "--json"]);
    assert_eq!(providers.as_array().unwrap().len(), 1);
}

#[test]
fn migrations_and_admin_cli_on_sqlite() {
    let db = TestDb::sqlite();
    admin_flow(&db);
    // The file was created on first start, in WAL mode.
    let TestDb::Sqlite { dir } = &db else {
        unreachable!()
    };
    assert!(dir.path().join("keygate.db").exists());
    let header = std::fs::read(dir.path().join("keygate.db")).unwrap();
    assert_eq!(
        header[18..20],
        [2, 2],
        "WAL mode is recorded in the database header"
    );
}

#[tokio::test]
async fn migrations_and_admin_cli_on_postgres() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    tokio::task::spawn_blocking(move || admin_flow(&db))
        .await
        .unwrap();
}

#[test]
fn a_bad_database_url_is_a_clear_error() {
    let out = Command::new(bin("keygate"))
        .args(["--database-url", "mysql://x", "migrate"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must start with 'sqlite:' or 'postgres://'")
    );
}
