//! Upgrades and crashes under load, through real processes: clients keep uploading and
//! downloading checksummed files (small and large, over kept-alive and fresh connections)
//! while keygate is upgraded ten times in a row (`serve --upgrade`: the listening sockets are
//! handed over), then killed with SIGKILL three times and started again on the same database.
//! Then what a SIGKILL can lose: the usage counted since the last flush, and nothing else.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

const WORKERS: usize = 6;

/// What the clients sent and saw.
#[derive(Default)]
struct Ledger {
    /// Every content ever sent for a path (a request in flight during a crash may or may not
    /// have landed; either way the file must be one whole version).
    attempted: Mutex<HashMap<String, HashSet<[u8; 32]>>>,
    /// The content of each path's last acknowledged upload.
    confirmed: Mutex<HashMap<String, [u8; 32]>>,
    ok: AtomicU64,
    tolerated: AtomicU64,
    failures: Mutex<Vec<String>>,
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// One client: upload a file, read it back, over and over, until `stop`. Failures are
/// recorded, or only counted while `tolerate` (the crash phase) is set.
async fn client_loop(
    id: usize,
    base: String,
    key: String,
    ledger: Arc<Ledger>,
    stop: Arc<AtomicBool>,
    tolerate: Arc<AtomicBool>,
) {
    // Idle pooled connections are dropped by the client before the server's keep-alive
    // timeout would close them (the usual HTTP/1.1 rule; not what this test is about).
    let pooled = reqwest::Client::builder()
        .pool_idle_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let client = if n % 3 == 0 {
            reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap()
        } else {
            pooled.clone()
        };
        let size = if n % 8 == 0 {
            3 * 1024 * 1024 + fastrand::usize(..1024 * 1024)
        } else {
            1 + fastrand::usize(..64 * 1024)
        };
        let mut bytes = vec![0u8; size];
        fastrand::fill(&mut bytes);
        let path = format!("upgrade/w{id}/f{}.bin", n % 5);
        let digest = sha(&bytes);
        ledger
            .attempted
            .lock()
            .unwrap()
            .entry(path.clone())
            .or_default()
            .insert(digest);
        let url = format!("{base}/v1/files/local/{path}");
        let outcome: Result<(), String> = async {
            let r = client
                .put(&url)
                .header("x-api-key", &key)
                .body(bytes.clone())
                .send()
                .await
                .map_err(|e| format!("PUT {path} ({size} B): {e:?}"))?;
            if !matches!(r.status(), StatusCode::CREATED | StatusCode::OK) {
                return Err(format!("PUT {path}: {}", r.status()));
            }
            ledger
                .confirmed
                .lock()
                .unwrap()
                .insert(path.clone(), digest);
            ledger.ok.fetch_add(1, Ordering::Relaxed);
            let r = client
                .get(&url)
                .header("x-api-key", &key)
                .send()
                .await
                .map_err(|e| format!("GET {path}: {e:?}"))?;
            if r.status() != StatusCode::OK {
                return Err(format!("GET {path}: {}", r.status()));
            }
            let got = r
                .bytes()
                .await
                .map_err(|e| format!("GET {path} body: {e:?}"))?;
            if sha(&got) != digest {
                return Err(format!("GET {path}: other bytes ({} B)", got.len()));
            }
            ledger.ok.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            if tolerate.load(Ordering::Relaxed) {
                ledger.tolerated.fetch_add(1, Ordering::Relaxed);
            } else {
                ledger.failures.lock().unwrap().push(e);
            }
        }
    }
}

fn write_config(dir: &Path, usage_flush: &str, backend: SocketAddr) -> PathBuf {
    let run = dir.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let config = dir.join("keygate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncontrol_listen = \"127.0.0.1:0\"\n\
             upgrade_socket = {:?}\npid_file = {:?}\nkeepalive_timeout = \"5s\"\n\
             shutdown_timeout = \"30s\"\n\
             [upstream]\npeers = [\"{backend}\"]\n\
             [keys]\nusage_flush_interval = {usage_flush:?}\n\
             [policies]\ndir = {:?}\nwatch = false\n\
             [rate_limit]\ndefault = \"1000000/min\"\n\
             [audit]\noutput = \"off\"\n",
            run.join("upgrade.sock").display().to_string(),
            run.join("keygate.pid").display().to_string(),
            policies.display().to_string(),
        ),
    )
    .unwrap();
    config
}

/// Starts keygate (blocking work off the runtime's threads).
async fn serve(config: &Path, db: &str, args: Vec<String>, log: PathBuf) -> (Proc, SocketAddr) {
    let (config, db) = (config.to_path_buf(), db.to_owned());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (proc, data, _) = spawn_serve(&config, &db, &args, log);
        (proc, data)
    })
    .await
    .unwrap()
}

fn signal(proc: &Proc, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn wait_exit(mut proc: Proc) -> std::process::ExitStatus {
    tokio::task::spawn_blocking(move || {
        let status = proc.child.wait().unwrap();
        (status, proc)
    })
    .await
    .unwrap()
    .0
}

/// The key's usage totals as the control plane reports them (flushed plus pending).
async fn usage_requests(control: SocketAddr, key_id: &str) -> i64 {
    let body = reqwest::Client::new()
        .get(format!("http://{control}/v1/keys/{key_id}/usage"))
        .bearer_auth(OPERATOR_TOKEN)
        .expect(StatusCode::OK)
        .await;
    body["data"]["totals"]["requests"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_upgrades_under_load_lose_nothing_and_sigkill_leaves_nothing_half_written() {
    let backend = Backend::start();
    let db = TestDb::sqlite();
    let key = fixture(&db.url());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "1s", backend.addr);
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let any_port = |addr: &str| {
        vec![
            "--listen".to_owned(),
            addr.to_owned(),
            "--control-listen".to_owned(),
            "127.0.0.1:0".to_owned(),
        ]
    };

    let (mut current, data) = serve(&config, &db.url(), any_port("127.0.0.1:0"), log("k0")).await;
    let base = format!("http://{data}");
    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let tolerate = Arc::new(AtomicBool::new(false));
    let spawn_clients = || {
        (0..WORKERS)
            .map(|id| {
                tokio::spawn(client_loop(
                    id,
                    base.clone(),
                    key.clone(),
                    ledger.clone(),
                    stop.clone(),
                    tolerate.clone(),
                ))
            })
            .collect::<Vec<_>>()
    };
    let mut clients = spawn_clients();

    // Ten upgrades in a row, each while the clients are busy.
    let mut draining = Vec::new();
    for i in 1..=10 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let before = ledger.ok.load(Ordering::Relaxed);
        let (next, inherited) = serve(
            &config,
            &db.url(),
            vec!["--upgrade".to_owned()],
            log(&format!("k{i}")),
        )
        .await;
        assert_eq!(inherited, data, "the new keygate serves the same socket");
        draining.push(std::mem::replace(&mut current, next));
        // The clients keep making progress on the new keygate.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while ledger.ok.load(Ordering::Relaxed) < before + WORKERS as u64 {
            assert!(
                std::time::Instant::now() < deadline,
                "the clients stalled after upgrade {i}: {:?}",
                ledger
                    .failures
                    .lock()
                    .unwrap()
                    .iter()
                    .take(5)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "upgrade {i}: {} requests completed so far",
            ledger.ok.load(Ordering::Relaxed)
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients.drain(..) {
        c.await.unwrap();
    }
    // Every replaced keygate drained and exited cleanly.
    for (i, old) in draining.into_iter().enumerate() {
        let log_text = old.stderr();
        let status = wait_exit(old).await;
        assert!(
            status.success(),
            "keygate {i} exited with {status}:\n{log_text}"
        );
        assert!(
            log_text.contains("listening sockets handed to the new keygate"),
            "keygate {i}:\n{log_text}"
        );
    }
    let failures = ledger.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "requests failed across upgrades: {failures:#?}"
    );
    let ok = ledger.ok.load(Ordering::Relaxed);
    assert!(
        ok >= 100,
        "only {ok} requests completed: the load was too light"
    );
    // Every acknowledged upload is in the backend, whole.
    for (path, digest) in ledger.confirmed.lock().unwrap().iter() {
        let stored = std::fs::read(backend.root().join("local").join(path)).unwrap();
        assert_eq!(&sha(&stored), digest, "{path}");
    }
    eprintln!("upgrades: {ok} requests completed across 10 upgrades, none failed");

    // Three SIGKILLs under the same load: requests in flight may fail, nothing half-written
    // ever appears, and keygate starts again on the same database and serves at once.
    stop.store(false, Ordering::Relaxed);
    tolerate.store(true, Ordering::Relaxed);
    clients = spawn_clients();
    for i in 1..=3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        signal(&current, "-KILL");
        let status = wait_exit(current).await;
        assert!(!status.success());
        let (next, again) = serve(
            &config,
            &db.url(),
            any_port(&data.to_string()),
            log(&format!("killed{i}")),
        )
        .await;
        assert_eq!(again, data);
        current = next;
        reqwest::Client::new()
            .get(format!("{base}/v1/folders/local"))
            .header("x-api-key", &key)
            .expect(StatusCode::OK)
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients.drain(..) {
        c.await.unwrap();
    }
    let attempted = ledger.attempted.lock().unwrap().clone();
    let root = backend.root().join("local/upgrade");
    let mut checked = 0;
    for worker in std::fs::read_dir(&root).unwrap() {
        for file in std::fs::read_dir(worker.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let rel = path
                .strip_prefix(backend.root().join("local"))
                .unwrap()
                .display()
                .to_string();
            let stored = std::fs::read(&path).unwrap();
            assert!(
                attempted
                    .get(&rel)
                    .is_some_and(|s| s.contains(&sha(&stored))),
                "{rel} ({} B) is not any whole version that was sent",
                stored.len()
            );
            checked += 1;
        }
    }
    assert_eq!(checked, WORKERS * 5, "every client's files are there");
    eprintln!(
        "sigkill: {} requests failed in flight across 3 kills; {checked} files all whole",
        ledger.tolerated.load(Ordering::Relaxed)
    );

    // What a SIGKILL loses: the usage counted since the last flush. With a flush interval
    // longer than the test, 25 requests are counted in memory, a graceful stop writes them,
    // a SIGKILL loses exactly them.
    signal(&current, "-TERM");
    assert!(wait_exit(current).await.success());
    let config = write_config(dir.path(), "1h", backend.addr);
    let start = |name: &'static str| {
        let (config, db, log) = (config.clone(), db.url(), log(name));
        async move {
            tokio::task::spawn_blocking(move || {
                spawn_serve(
                    &config,
                    &db,
                    &["--listen", "127.0.0.1:0", "--control-listen", "127.0.0.1:0"],
                    log,
                )
            })
            .await
            .unwrap()
        }
    };
    let (proc, data, control) = start("usage1").await;
    let keys = reqwest::Client::new()
        .get(format!("http://{control}/v1/keys"))
        .bearer_auth(OPERATOR_TOKEN)
        .expect(StatusCode::OK)
        .await;
    let key_id = keys["data"][0]["id"].as_str().unwrap().to_owned();
    let client = client_with_key(&key);
    let burst = |data: SocketAddr| {
        let client = client.clone();
        async move {
            for _ in 0..25 {
                client
                    .get(format!("http://{data}/v1/folders/local"))
                    .expect(StatusCode::OK)
                    .await;
            }
        }
    };
    let flushed = usage_requests(control, &key_id).await;
    burst(data).await;
    assert_eq!(usage_requests(control, &key_id).await, flushed + 25);
    signal(&proc, "-TERM");
    assert!(wait_exit(proc).await.success());
    let (proc, data, control) = start("usage2").await;
    assert_eq!(
        usage_requests(control, &key_id).await,
        flushed + 25,
        "a graceful stop writes the counts"
    );
    burst(data).await;
    assert_eq!(usage_requests(control, &key_id).await, flushed + 50);
    signal(&proc, "-KILL");
    assert!(!wait_exit(proc).await.success());
    let (_proc, _, control) = start("usage3").await;
    assert_eq!(
        usage_requests(control, &key_id).await,
        flushed + 25,
        "a SIGKILL loses the counts since the last flush, and only those"
    );
}

/// The reload command of the shipped systemd unit, run as systemd would run it (with this
/// test's binary and config in place of the installed paths): the new process takes over,
/// the old one drains and exits 0, and requests are served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_units_reload_command_performs_the_upgrade() {
    let backend = Backend::start();
    let db = TestDb::sqlite();
    let key = fixture(&db.url());
    let dir = tempfile::tempdir().unwrap();
    // The database is given on the running keygate's command line only (`--database-url`):
    // the upgrade carries it over (a fresh database would make the key unknown: 401 below).
    let config = write_config(dir.path(), "1s", backend.addr);

    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/keygate.service"),
    )
    .unwrap();
    let reload: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecReload="))
        .expect("the unit has ExecReload")
        .replace(
            "/usr/local/bin/keygate",
            &bin("keygate").display().to_string(),
        )
        .replace("/etc/keygate/keygate.toml", &config.display().to_string())
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let exec_start = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert_eq!(
        exec_start,
        "/usr/local/bin/keygate --config /etc/keygate/keygate.toml serve"
    );

    let (old, data) = serve(
        &config,
        &db.url(),
        vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--control-listen".into(),
            "127.0.0.1:0".into(),
        ],
        dir.path().join("old.log"),
    )
    .await;
    let pid_file = dir.path().join("run/keygate.pid");
    let old_pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(old_pid, old.pid().to_string());

    let run_reload = |log: &str| {
        std::process::Command::new(&reload[0])
            .args(&reload[1..])
            .env("KEYGATE_KEYS_PEPPER", TEST_PEPPER)
            .env("KEYGATE_CONTROL_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(log)).unwrap())
            .status()
            .unwrap()
    };
    let client = client_with_key(&key);

    // A new keygate that fails after it has the sockets (a listener it cannot bind): the
    // reload fails and the old keygate never stops serving.
    let good_config = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        good_config.replace(
            "[server]\n",
            &format!("[server]\nmetrics_listen = \"{}\"\n", backend.addr),
        ),
    )
    .unwrap();
    let status = run_reload("failed.log");
    assert!(!status.success(), "an upgrade that cannot bind succeeded");
    let failed = std::fs::read_to_string(dir.path().join("failed.log")).unwrap();
    assert!(failed.contains("cannot listen on"), "{failed}");
    for _ in 0..5 {
        client
            .get(format!("http://{data}/v1/folders/local"))
            .expect(StatusCode::OK)
            .await;
    }
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        old_pid,
        "the old keygate is still the one"
    );
    assert!(old.stderr().contains("serving until it takes over"));
    std::fs::write(&config, good_config).unwrap();

    let status = run_reload("new.log");
    assert!(status.success(), "the reload command failed");
    let old_log = old.stderr();
    let exited = wait_exit(old).await;
    assert!(exited.success(), "the old keygate: {exited}\n{old_log}");
    let new_log = dir.path().join("new.log");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let new_pid = loop {
        let named = std::fs::read_to_string(&pid_file).unwrap_or_default();
        if !named.trim().is_empty() && named.trim() != old_pid {
            break named.trim().to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no new keygate:\n{}",
            std::fs::read_to_string(&new_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(new_pid, old_pid, "the pid file names the new keygate");
    // On failure, both keygates' logs: what the new one did after taking over.
    let answer = client
        .get(format!("http://{data}/v1/folders/local"))
        .send()
        .await;
    assert!(
        answer.as_ref().is_ok_and(|r| r.status() == StatusCode::OK),
        "the new keygate ({new_pid}, alive: {}) does not serve: {answer:?}\n--- new ---\n{}\n--- old ---\n{old_log}",
        std::path::Path::new(&format!("/proc/{new_pid}")).exists(),
        std::fs::read_to_string(&new_log).unwrap_or_default()
    );
    // The new keygate is not this test's child: stop it by its pid file.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &new_pid])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{new_pid}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the new keygate did not stop"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
