//! Real WebDAV servers as upstreams (nginx with its DAV modules, `rclone serve webdav`), started
//! from the files in `deploy/webdav/`, and the tools that speak WebDAV to them (litmus, rclone).
//! Without the Debian packages the tests report themselves skipped, unless
//! `KEYGATE_TEST_REQUIRE_WEBDAV` is set (CI sets it), when they fail.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process::Proc;

/// The path of a program, or `None` (the test is then skipped, or fails under CI).
pub fn webdav_tool(name: &str, package: &str) -> Option<PathBuf> {
    let found = ["/usr/bin", "/usr/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists());
    if found.is_none() {
        if std::env::var_os("KEYGATE_TEST_REQUIRE_WEBDAV").is_some() {
            panic!("{name} is required (apt-get install {package})");
        }
        eprintln!("skipped: {name} is not installed (apt-get install {package})");
    }
    found
}

fn deploy(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/webdav")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replaces `from` in a deploy file's text, which must be there: the test runs the file as
/// shipped, with only its address and directories moved.
fn moved(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "the deploy file says '{from}' once"
    );
    text.replace(from, to)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(addr: SocketAddr, proc: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!("the server exited ({status}):\n{}", proc.stderr());
        }
        assert!(
            Instant::now() < deadline,
            "the server does not listen:\n{}",
            proc.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Which WebDAV server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DavKind {
    Nginx,
    Rclone,
}

/// A WebDAV server serving `root()`.
pub struct DavServer {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub kind: DavKind,
    pub dir: TempDir,
}

impl DavServer {
    /// The server of `kind`, or `None` when it is not installed (and CI does not require it).
    pub fn start(kind: DavKind) -> Option<DavServer> {
        match kind {
            DavKind::Nginx => DavServer::nginx(),
            DavKind::Rclone => DavServer::rclone(),
        }
    }

    /// nginx as `deploy/webdav/nginx.conf` configures it.
    pub fn nginx() -> Option<DavServer> {
        let nginx = webdav_tool("nginx", "nginx libnginx-mod-http-dav-ext")?;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        let port = free_port();
        let conf = deploy("nginx.conf");
        let conf = moved(
            &conf,
            "listen 127.0.0.1:8081;",
            &format!("listen 127.0.0.1:{port};"),
        );
        let conf = moved(
            &conf,
            "root /srv/dav;",
            &format!("root {};", root.display()),
        );
        let conf = moved(
            &conf,
            "pid /run/nginx-dav.pid;",
            &format!(
                "pid {}/nginx.pid;\n{}",
                dir.path().display(),
                // Running as root (CI), the workers keep the test's user.
                if is_root() { "user root;" } else { "" }
            ),
        );
        let conf = moved(
            &conf,
            "access_log off;",
            &format!(
                "access_log off;\n    client_body_temp_path {}/tmp;",
                dir.path().display()
            ),
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = dir.path().join("nginx.log");
        let mut cmd = Command::new(nginx);
        cmd.arg("-e")
            .arg(&log)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("nginx.stderr")).unwrap());
        let mut proc = Proc {
            child: cmd.spawn().expect("nginx starts"),
            log,
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_listening(addr, &mut proc);
        Some(DavServer {
            proc,
            addr,
            kind: DavKind::Nginx,
            dir,
        })
    }

    /// `rclone serve webdav` as `deploy/webdav/rclone-webdav.service` runs it.
    pub fn rclone() -> Option<DavServer> {
        webdav_tool("rclone", "rclone")?;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let unit = deploy("rclone-webdav.service");
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("the unit has an ExecStart line");
        let exec = moved(exec, "/srv/dav", &root.display().to_string());
        let exec = moved(&exec, "--addr 127.0.0.1:8081", "--addr 127.0.0.1:0");
        let mut words = exec.split_whitespace();
        let log = dir.path().join("rclone.log");
        let mut cmd = Command::new(words.next().unwrap());
        cmd.args(words)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("rclone starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(log_path).unwrap();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                use std::io::Write;
                let _ = writeln!(file, "{line}");
                if let Some((_, url)) = line.split_once("WebDav Server started on http://") {
                    let _ = tx.send(url.trim_end_matches('/').to_owned());
                }
            }
        });
        let proc = Proc { child, log };
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("rclone does not serve:\n{}", proc.stderr()));
        Some(DavServer {
            proc,
            addr: addr.parse().expect("address"),
            kind: DavKind::Rclone,
            dir,
        })
    }

    /// The folder the server serves.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// One litmus test's outcome: (suite, test name with its number) → pass, FAIL, SKIPPED, …
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LitmusResult {
    pub suite: String,
    pub test: String,
    pub outcome: String,
}

/// Runs every litmus suite against `url` (with Basic credentials when given), in a fresh
/// working directory. `None` when litmus is not installed (and CI does not require it).
pub fn litmus(url: &str, credentials: Option<(&str, &str)>) -> Option<Vec<LitmusResult>> {
    let litmus = webdav_tool("litmus", "litmus")?;
    let work = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(litmus);
    cmd.arg("-k").arg(url).current_dir(work.path());
    if let Some((user, pass)) = credentials {
        cmd.args([user, pass]);
    }
    let out = cmd.output().expect("litmus runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut suite = String::new();
    let mut results: Vec<LitmusResult> = Vec::new();
    // "\r 3. put_get....... \r 3. put_get....... pass", or "WARNING: …" there with the
    // outcome on a later line of dots: "    ........ pass".
    let test_line = regex::Regex::new(r"^\s*(\d+)\. (\w+)[. ]+(\S+)").unwrap();
    let mut warned = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("-> running `") {
            suite = rest.trim_end_matches("':").to_owned();
            continue;
        }
        let last = line.rsplit('\r').next().unwrap_or_default();
        if last.contains("WARNING") {
            println!("litmus {url}: {}", last.trim());
        }
        if let Some(c) = test_line.captures(last) {
            let outcome = c[3].to_owned();
            warned = outcome == "WARNING:";
            results.push(LitmusResult {
                suite: suite.clone(),
                test: format!("{}. {}", &c[1], &c[2]),
                outcome,
            });
        } else if warned && last.trim_start().starts_with("...") {
            let outcome = last
                .trim_start()
                .trim_start_matches('.')
                .split_whitespace()
                .next();
            if let (Some(r), Some(outcome)) = (results.last_mut(), outcome) {
                r.outcome = format!("{outcome} (warned)");
            }
            warned = false;
        }
    }
    assert!(
        !results.is_empty(),
        "litmus printed no results:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(results)
}

/// Runs rclone as a WebDAV client of `url` with `env` (its `RCLONE_WEBDAV_*` settings); returns
/// (success, stdout and stderr).
pub fn rclone(url: &str, env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("rclone");
    cmd.args([
        "--config",
        "/dev/null",
        "--low-level-retries",
        "1",
        "--retries",
        "1",
    ])
    .args(args)
    .env("RCLONE_WEBDAV_URL", url)
    .env("RCLONE_WEBDAV_VENDOR", "other");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("rclone runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A password as rclone's config wants it (`rclone obscure`).
pub fn rclone_obscure(secret: &str) -> String {
    let out = Command::new("rclone")
        .args(["obscure", secret])
        .output()
        .expect("rclone runs");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
