//! A keygate under test: its config with the harness defaults, the CLI on its database, the
//! fixture (workspace, users, providers, a full-access key), and the secret scan of its output.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::*;

/// The pepper and operator token every keygate under test uses (generated test values).
pub const TEST_PEPPER: &str = "test-pepper-0123456789abcdef0123456789abcdef";
pub const OPERATOR_TOKEN: &str = "op-test-token-0123456789";

/// Runs the keygate CLI on a database with the test environment; returns (success, stdout,
/// stderr).
pub fn cli(db_url: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let mut child = Command::new(bin("keygate"))
        .args(["--database-url", db_url])
        .args(args)
        .env("KEYGATE_KEYS_PEPPER", TEST_PEPPER)
        .env_remove("KEYGATE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keygate runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Like [`cli`], but the command must succeed; returns stdout.
pub fn cli_ok(db_url: &str, args: &[&str], stdin: Option<&str>) -> String {
    let (ok, out, err) = cli(db_url, args, stdin);
    assert!(ok, "keygate {args:?} failed: {err}");
    out
}

/// Workspace `acme`, its admin `ada@example.com`, providers `local` and `other`; returns a
/// full-access key (scope `admin`, every provider).
pub fn fixture(db_url: &str) -> String {
    cli_ok(db_url, &["workspaces", "add", "acme"], None);
    cli_ok(
        db_url,
        &["users", "add", "ada@example.com", "--password-stdin"],
        Some("ada's long password\n"),
    );
    cli_ok(
        db_url,
        &[
            "members",
            "add",
            "--workspace",
            "acme",
            "--user",
            "ada@example.com",
            "--role",
            "admin",
        ],
        None,
    );
    cli_ok(
        db_url,
        &["providers", "add", "local", "--workspace", "acme"],
        None,
    );
    cli_ok(
        db_url,
        &["providers", "add", "other", "--workspace", "acme"],
        None,
    );
    let out = cli_ok(
        db_url,
        &[
            "keys",
            "create",
            "--owner",
            "ada@example.com",
            "--name",
            "full access",
            "--scope",
            "admin",
            "--json",
        ],
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["key"].as_str().unwrap().to_owned()
}

/// The policy folder keygate ships.
pub fn shipped_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// Where the harness's own settings start in a keygate's config file.
const HARNESS_DEFAULTS: &str = "\n# --- test harness defaults ---\n";

/// The harness's settings, for the sections a test's config leaves out: a per-key rate limit
/// high enough not to interfere, and every decision in an audit file of the test's own.
/// A test's own `[audit]` may write `output = "@AUDIT_FILE@"` to keep the harness's file.
fn with_harness_defaults(config: &str, dir: &Path) -> String {
    let audit_file = dir.join("audit.jsonl").display().to_string();
    let own = config.split(HARNESS_DEFAULTS).next().unwrap_or_default();
    let own = own.replace("@AUDIT_FILE@", &audit_file);
    let mut out = format!("{own}{HARNESS_DEFAULTS}");
    if !own.contains("rate_limit") {
        out.push_str("[rate_limit]\ndefault = \"1000000/min\"\n");
    }
    if !own.contains("[audit]") {
        out.push_str(&format!(
            "[audit]\noutput = {audit_file:?}\nallow_sample_rate = 1.0\n"
        ));
    }
    if !own.contains("[auth]") {
        out.push_str("[auth]\nforbidden_per_minute = 1000000\n");
    }
    out
}

/// Fails the test if a secret appears in anything keygate wrote: its log (at debug level) and
/// its audit log. Secrets are the fixture's, and anything shaped like a key or a token.
pub fn assert_no_secrets_in(dir: &Path) {
    let patterns = regex::Regex::new(concat!(
        r"\b[A-Za-z0-9]{1,10}_[0-9A-Za-z]{38}\b",
        r"|\bdrv_[0-9a-f]{40}\b",
        r"|\bfo_[0-9A-Za-z]{12}_[0-9A-Za-z]{32}",
        r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.",
        r"|\bkg[rs]_[A-Za-z0-9_-]{40,}",
    ))
    .unwrap();
    let literals = [TEST_PEPPER, OPERATOR_TOKEN, "ada's long password"];
    for name in ["keygate.log", "audit.jsonl"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            let hit = patterns
                .find(line)
                .map(|m| m.as_str().to_owned())
                .or_else(|| {
                    literals
                        .iter()
                        .find(|l| line.contains(*l))
                        .map(|l| l.to_string())
                });
            if let Some(hit) = hit {
                panic!(
                    "a secret ({}…) is in {name}, line {}:\n{line}",
                    &hit[..hit.len().min(6)],
                    n + 1
                );
            }
        }
    }
}

/// Scans a keygate's output for secrets when the test is done with it.
struct SecretScan(PathBuf);

impl Drop for SecretScan {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert_no_secrets_in(&self.0);
        }
    }
}

/// A running keygate, with the fixture above.
pub struct Keygate {
    pub proc: Proc,
    scan: SecretScan,
    pub data: SocketAddr,
    pub control: SocketAddr,
    /// `[server] metrics_listen`, when the test's config sets it.
    pub metrics_addr: Option<SocketAddr>,
    /// `[tls] plain_listen`, when the test's config sets it.
    pub plain: Option<SocketAddr>,
    /// Both planes speak HTTPS (the config has `[tls]`).
    pub https: bool,
    pub dir: TempDir,
    pub db: TestDb,
    /// The fixture's full-access key.
    pub key: String,
}

impl Keygate {
    /// keygate on SQLite in front of `upstream`, with an optional extra config text.
    pub fn start(upstream: &[SocketAddr], config: &str) -> Keygate {
        Keygate::start_with_db(upstream, config, TestDb::sqlite())
    }

    pub fn start_with_db(upstream: &[SocketAddr], config: &str, db: TestDb) -> Keygate {
        let key = fixture(&db.url());
        Keygate::spawn(upstream, config, db, key, &shipped_policies())
    }

    /// keygate as a preset of `deploy/presets/<name>` configures it (its config, then `extra`,
    /// and a copy of its policies), on SQLite, with the fixture and the providers `providers`
    /// added to workspace `acme`. The fixture's key holds a scope of the shipped policies, so
    /// it may be inert here: make keys through the control plane.
    pub fn start_preset(
        upstream: &[SocketAddr],
        name: &str,
        providers: &[&str],
        extra: &str,
    ) -> Keygate {
        let preset = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/presets")
            .join(name);
        let config =
            std::fs::read_to_string(preset.join("keygate.toml")).expect("the preset's config");
        Keygate::start_with_providers(
            upstream,
            &format!("{config}\n{extra}"),
            providers,
            &preset.join("policies"),
        )
    }

    /// keygate with `config` (its whole text) and the shipped policies, on SQLite, with the
    /// fixture and the providers `providers` added to workspace `acme`.
    pub fn start_config(upstream: &[SocketAddr], config: &str, providers: &[&str]) -> Keygate {
        Keygate::start_with_providers(upstream, config, providers, &shipped_policies())
    }

    fn start_with_providers(
        upstream: &[SocketAddr],
        config: &str,
        providers: &[&str],
        policies: &Path,
    ) -> Keygate {
        let db = TestDb::sqlite();
        let key = fixture(&db.url());
        for p in providers {
            cli_ok(
                &db.url(),
                &["providers", "add", p, "--workspace", "acme"],
                None,
            );
        }
        Keygate::spawn(upstream, config, db, key, policies)
    }

    /// Another keygate on this one's database (PostgreSQL: several instances on one), with the
    /// same fixture key, reaching the database at `db` (this one's, or through a relay).
    pub fn another(&self, upstream: &[SocketAddr], config: &str, db: TestDb) -> Keygate {
        Keygate::spawn(upstream, config, db, self.key.clone(), &shipped_policies())
    }

    /// Stops gracefully (SIGTERM) and starts again on the same database and config.
    pub fn restart(self, upstream: &[SocketAddr]) -> Keygate {
        let Keygate {
            mut proc,
            scan,
            dir,
            db,
            key,
            ..
        } = self;
        let config = std::fs::read_to_string(dir.path().join("keygate.toml")).unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &proc.pid().to_string()])
            .status();
        let status = proc.child.wait().expect("keygate exits");
        assert!(
            status.success(),
            "keygate did not stop cleanly: {}",
            proc.stderr()
        );
        drop(scan);
        drop(dir);
        Keygate::spawn(upstream, &config, db, key, &shipped_policies())
    }

    fn spawn(
        upstream: &[SocketAddr],
        config: &str,
        db: TestDb,
        key: String,
        policy_source: &Path,
    ) -> Keygate {
        let dir = tempfile::tempdir().expect("tempdir");
        // Each keygate gets its own copy of its policies, so a test may edit them.
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        for entry in std::fs::read_dir(policy_source).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, policies.join(path.file_name().unwrap())).unwrap();
            }
        }
        let config_path = dir.path().join("keygate.toml");
        std::fs::write(&config_path, with_harness_defaults(config, dir.path())).expect("config");
        let mut cmd = Command::new(bin("keygate"));
        cmd.arg("--config")
            .arg(&config_path)
            .args(["--database-url", &db.url()])
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--control-listen",
                "127.0.0.1:0",
            ]);
        for peer in upstream {
            cmd.args(["--upstream", &peer.to_string()]);
        }
        cmd.env("RUST_LOG", "keygate=debug,info")
            .env("KEYGATE_POLICIES_DIR", &policies)
            .env("KEYGATE_KEYS_PEPPER", TEST_PEPPER)
            .env("KEYGATE_CONTROL_OPERATOR_TOKEN", OPERATOR_TOKEN);
        let https = config.contains("[tls]");
        let scheme = if https { "https://" } else { "http://" };
        let data_line = format!("keygate data plane listening on {scheme}");
        let control_line = format!("keygate control plane listening on {scheme}");
        let mut prefixes = vec![data_line.as_str(), control_line.as_str()];
        if config.contains("metrics_listen") {
            prefixes.push("keygate metrics listening on http://");
        }
        if config.contains("plain_listen") {
            prefixes.push("keygate plain HTTP listening on http://");
        }
        let (proc, found) = spawn_and_read(cmd, dir.path().join("keygate.log"), &prefixes);
        let mut rest = found[2..].iter();
        Keygate {
            proc,
            scan: SecretScan(dir.path().to_path_buf()),
            data: found[0].parse().expect("address"),
            control: found[1].parse().expect("address"),
            metrics_addr: config
                .contains("metrics_listen")
                .then(|| rest.next().unwrap().parse().expect("address")),
            plain: config
                .contains("plain_listen")
                .then(|| rest.next().unwrap().parse().expect("address")),
            https,
            dir,
            db,
            key,
        }
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{}", self.data, path)
    }

    /// The audit lines written so far (the harness sends them to a file of the test's own).
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each audit line is JSON"))
            .collect()
    }

    /// The audit lines once `done` holds for them (or after 5 s): they are written just after
    /// the response goes out.
    pub async fn audit_until(
        &self,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.audit();
            if done(&lines) || std::time::Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// This keygate's policy folder.
    pub fn policies(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    pub fn control_url(&self, path: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{}", self.control, path)
    }

    /// A client that sends the fixture's key on every request.
    pub fn client(&self) -> reqwest::Client {
        client_with_key(&self.key)
    }

    /// A client that sends the operator token (for the control plane).
    /// `POST /v1/admin/policy/reload` as the operator: the status and the JSON body.
    pub async fn reload_policies(&self) -> (reqwest::StatusCode, serde_json::Value) {
        let r = self
            .operator()
            .post(self.control_url("/v1/admin/policy/reload"))
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    /// Makes a key through the control plane as the operator (`POST /v1/keys` with `body`);
    /// returns the answer's `data` (the key is `data.key`).
    pub async fn create_key(&self, body: serde_json::Value) -> serde_json::Value {
        self.operator()
            .post(self.control_url("/v1/keys"))
            .json(&body)
            .expect(reqwest::StatusCode::CREATED)
            .await["data"]
            .clone()
    }

    pub fn operator(&self) -> reqwest::Client {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            "authorization",
            format!("Bearer {OPERATOR_TOKEN}").parse().unwrap(),
        );
        reqwest::Client::builder()
            .default_headers(h)
            .build()
            .unwrap()
    }

    /// Runs the CLI on this keygate's database.
    pub fn cli(&self, args: &[&str]) -> String {
        cli_ok(&self.db.url(), args, None)
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.control_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The metrics once they contain every one of `lines` (or after 5 s). keygate counts a
    /// request in its logging phase, just after the response has gone out, so a client that
    /// reads the metrics at once can be a moment early.
    pub async fn metrics_with(&self, lines: &[&str]) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let m = self.metrics().await;
            if lines.iter().all(|l| m.contains(l)) || std::time::Instant::now() > deadline {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs `keygate --config <config> --database-url <db> serve <args…>` with the test
/// environment, and waits for its listening lines; returns the process and the addresses
/// (data, control) it printed.
pub fn spawn_serve(
    config: &Path,
    db_url: &str,
    args: &[&str],
    log: PathBuf,
) -> (Proc, SocketAddr, SocketAddr) {
    let mut cmd = Command::new(bin("keygate"));
    cmd.arg("--config")
        .arg(config)
        .args(["--database-url", db_url, "serve"])
        .args(args)
        .env("RUST_LOG", "info")
        .env("KEYGATE_KEYS_PEPPER", TEST_PEPPER)
        .env("KEYGATE_CONTROL_OPERATOR_TOKEN", OPERATOR_TOKEN);
    let (proc, found) = spawn_and_read(
        cmd,
        log,
        &[
            "keygate data plane listening on http://",
            "keygate control plane listening on http://",
        ],
    );
    (
        proc,
        found[0].parse().expect("address"),
        found[1].parse().expect("address"),
    )
}
