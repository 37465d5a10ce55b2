//! The integration-test harness: starts storage-backend and keygate as real processes on port 0,
//! a recording upstream, and a database of the test's own (SQLite, or PostgreSQL when
//! `KEYGATE_TEST_POSTGRES_URL` is set).
// Each test binary uses part of this module; the rest would warn as dead code there.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempfile::TempDir;

/// Path of a binary of this workspace, built by `cargo test --workspace`.
pub fn bin(name: &str) -> PathBuf {
    let keygate = PathBuf::from(env!("CARGO_BIN_EXE_keygate"));
    if name == "keygate" {
        return keygate;
    }
    // Another package's binary: cargo does not rebuild it for this test target, so make sure
    // it is current (a no-op when it is), once per test binary.
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "storage-backend",
                "--bin",
                "storage-backend",
            ])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cannot build storage-backend");
    });
    keygate.with_file_name(name)
}

/// A child process killed when dropped; its stderr goes to a file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `cmd`, waits for stdout lines starting with each of `prefixes`, returns the rest of
/// each such line (an address) in order.
fn spawn_and_read(mut cmd: Command, log: PathBuf, prefixes: &[&str]) -> (Proc, Vec<String>) {
    let err = std::fs::File::create(&log).expect("log file");
    cmd.stdout(Stdio::piped()).stderr(err).stdin(Stdio::null());
    let mut child = cmd.spawn().expect("process starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let proc = Proc { child, log };
    let mut found = Vec::new();
    for prefix in prefixes {
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no '{prefix}' line; stderr:\n{}", proc.stderr()));
            if let Some(rest) = line.strip_prefix(prefix) {
                found.push(rest.trim().to_owned());
                break;
            }
        }
    }
    (proc, found)
}

/// A running storage-backend with providers `local` and `other`.
pub struct Backend {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub dir: TempDir,
}

impl Backend {
    pub fn start() -> Backend {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        let mut cmd = Command::new(bin("storage-backend"));
        cmd.arg("--root").arg(&root).args([
            "--listen",
            "127.0.0.1:0",
            "--provider",
            "local",
            "--provider",
            "other",
        ]);
        let (proc, found) = spawn_and_read(
            cmd,
            dir.path().join("backend.log"),
            &["storage-backend listening on http://"],
        );
        Backend {
            proc,
            addr: found[0].parse().expect("address"),
            dir,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// A database of the test's own.
pub enum TestDb {
    Sqlite { dir: TempDir },
    Postgres { admin_url: String, name: String },
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        TestDb::Sqlite {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A fresh PostgreSQL database, or `None` (the test then reports itself skipped) when
    /// `KEYGATE_TEST_POSTGRES_URL` is unset.
    pub async fn postgres() -> Option<TestDb> {
        use sqlx::Connection;
        let Ok(admin_url) = std::env::var("KEYGATE_TEST_POSTGRES_URL") else {
            eprintln!("skipped: KEYGATE_TEST_POSTGRES_URL is not set");
            return None;
        };
        let name = format!("keygate_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("postgres reachable");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create database");
        Some(TestDb::Postgres { admin_url, name })
    }

    pub fn url(&self) -> String {
        match self {
            TestDb::Sqlite { dir } => {
                format!("sqlite://{}", dir.path().join("keygate.db").display())
            }
            TestDb::Postgres { admin_url, name } => {
                let base = admin_url
                    .rsplit_once('/')
                    .map_or(admin_url.as_str(), |(b, _)| b);
                format!("{base}/{name}")
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres { admin_url, name } = self {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Dropping needs a runtime of its own: Drop may run inside or outside one.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    use sqlx::Connection;
                    let mut conn = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await
                        .ok()
                })
            })
            .join();
        }
    }
}

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

/// Where the harness's own settings start in a keygate's config file.
const HARNESS_DEFAULTS: &str = "\n# --- test harness defaults ---\n";

/// The harness's settings, for the sections a test's config leaves out: a per-key rate limit
/// high enough not to interfere, and every decision in an audit file of the test's own.
fn with_harness_defaults(config: &str, dir: &Path) -> String {
    let own = config.split(HARNESS_DEFAULTS).next().unwrap_or_default();
    let mut out = format!("{own}{HARNESS_DEFAULTS}");
    if !own.contains("rate_limit") {
        out.push_str("[rate_limit]\ndefault = \"1000000/min\"\n");
    }
    if !own.contains("[audit]") {
        out.push_str(&format!(
            "[audit]\noutput = {:?}\nallow_sample_rate = 1.0\n",
            dir.join("audit.jsonl").display().to_string()
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
        Keygate::spawn(upstream, config, db, key)
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
        Keygate::spawn(upstream, &config, db, key)
    }

    fn spawn(upstream: &[SocketAddr], config: &str, db: TestDb, key: String) -> Keygate {
        let dir = tempfile::tempdir().expect("tempdir");
        // Each keygate gets its own copy of the shipped policies, so a test may edit them.
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        for entry in std::fs::read_dir(shipped).unwrap() {
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
        let (proc, found) = spawn_and_read(
            cmd,
            dir.path().join("keygate.log"),
            &[
                "keygate data plane listening on http://",
                "keygate control plane listening on http://",
            ],
        );
        Keygate {
            proc,
            scan: SecretScan(dir.path().to_path_buf()),
            data: found[0].parse().expect("address"),
            control: found[1].parse().expect("address"),
            dir,
            db,
            key,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.data, path)
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
        format!("http://{}{}", self.control, path)
    }

    /// A client that sends the fixture's key on every request.
    pub fn client(&self) -> reqwest::Client {
        client_with_key(&self.key)
    }

    /// A client that sends the operator token (for the control plane).
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

/// Sends a request and decodes its JSON body, whatever its status; a test that cares
/// about the status sends the request itself.
#[allow(async_fn_in_trait)]
pub trait SendJson {
    async fn send_json(self) -> serde_json::Value;
}

impl SendJson for reqwest::RequestBuilder {
    async fn send_json(self) -> serde_json::Value {
        self.send().await.unwrap().json().await.unwrap()
    }
}

/// A client that sends `key` in `X-API-Key` on every request.
pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("x-api-key", key.parse().unwrap());
    reqwest::Client::builder()
        .default_headers(h)
        .build()
        .unwrap()
}

/// One request as a recording upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An upstream that records every request it receives and answers 200 `ok`.
pub struct Recorder {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(Seen {
                    method: req.method().to_string(),
                    target: req.uri().to_string(),
                    headers: req
                        .headers()
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.to_string(),
                                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                            )
                        })
                        .collect(),
                });
                "ok"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Recorder {
            addr,
            seen,
            _task: task,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Sends raw bytes and returns the status code and the whole response text. For requests an
/// HTTP client library would normalise (dot segments, odd bytes, conflicting framing).
pub fn raw_request(addr: SocketAddr, bytes: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    // Read until the response is complete (Content-Length) or the peer closes.
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&out);
        if let Some(end) = text.find("\r\n\r\n") {
            let cl = text[..end].lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if let Some(cl) = cl {
                if out.len() >= end + 4 + cl {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A GET for `target` in raw form, with `key` in `X-API-Key`.
pub fn raw_get(addr: SocketAddr, target: &[u8], key: &str) -> (u16, String) {
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: test\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    raw_request(addr, &req)
}

/// The JSON body of a raw response.
pub fn raw_json(response: &str) -> serde_json::Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// A key shaped right, with a valid checksum, that was never issued.
pub fn unissued_key() -> String {
    let body: String = "0123456789abcdefghijABCDEFGHIJ01".to_owned();
    let head = format!("kg_{body}");
    let sum = crc32fast::hash(head.as_bytes());
    let mut v = sum;
    let digits = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = digits[(v % 62) as usize];
        v /= 62;
    }
    head + std::str::from_utf8(&out).unwrap()
}

/// The value of one series (`name{labels}` exactly as exposed) in a Prometheus text page; 0
/// when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn file_under(root: &Path, rel: &str) -> PathBuf {
    rel.split('/')
        .filter(|s| !s.is_empty())
        .fold(root.to_path_buf(), |p, s| p.join(s))
}
