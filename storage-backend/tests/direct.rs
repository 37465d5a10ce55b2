//! storage-backend called directly, with no keygate in front: it must never read or write
//! outside its data root, whatever it is sent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Backend {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Backend {
    fn start() -> Backend {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_storage-backend"))
            .arg("--root")
            .arg(dir.path().join("data"))
            .args(["--listen", "127.0.0.1:0", "--provider", "local"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("storage-backend listening on http://")
            .unwrap()
            .parse()
            .unwrap();
        // A secret beside the data root, and a symlink inside a provider that points at it.
        std::fs::write(dir.path().join("secret.txt"), "top secret").unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("data/local/escape")).unwrap();
        Backend { child, addr, dir }
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

fn raw(addr: SocketAddr, req: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, out)
}

fn request(addr: SocketAddr, method: &str, target: &str, extra: &str, body: &str) -> (u16, String) {
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: b\r\nConnection: close\r\nContent-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    );
    raw(addr, req.as_bytes())
}

#[test]
fn traversal_is_refused_for_every_operation() {
    let b = Backend::start();
    let reads = [
        "/v1/files/local/../secret.txt",
        "/v1/files/local/%2e%2e/secret.txt",
        "/v1/files/local/..%2fsecret.txt",
        "/v1/files/local/..%5csecret.txt",
        "/v1/files/..%2fsecret.txt",
        "/v1/files/%2e%2e/secret.txt",
        "/v1/files/local/escape/secret.txt",
        "/v1/folders/local/..",
        "/v1/folders/local/escape",
        "/v1/search/local/escape?q=secret",
        "/v1/files/.store/x",
    ];
    for target in reads {
        let (status, text) = request(b.addr, "GET", target, "", "");
        assert!(
            (400..500).contains(&status) && !text.contains("top secret"),
            "{target} → {text}"
        );
    }
    let writes = [
        ("PUT", "/v1/files/local/../pwned.txt", ""),
        ("PUT", "/v1/files/local/%2e%2e/pwned.txt", ""),
        ("PUT", "/v1/files/local/escape/pwned.txt", ""),
        ("POST", "/v1/folders/local/%2e%2e/pwned", ""),
        ("DELETE", "/v1/files/local/escape/secret.txt", ""),
        (
            "MOVE",
            "/v1/files/local/escape/secret.txt",
            "Destination: /v1/files/local/stolen.txt\r\n",
        ),
        (
            "COPY",
            "/v1/files/local/escape/secret.txt",
            "Destination: /v1/files/local/stolen.txt\r\n",
        ),
    ];
    for (method, target, extra) in writes {
        let (status, text) = request(b.addr, method, target, extra, "pwned");
        assert!((400..500).contains(&status), "{method} {target} → {text}");
    }
    // A destination that climbs out.
    std::fs::write(b.dir.path().join("data/local/mine.txt"), "mine").unwrap();
    for dest in [
        "/v1/files/local/../moved.txt",
        "/v1/files/local/%2e%2e/moved.txt",
        "/v1/files/local/escape/moved.txt",
    ] {
        let (status, text) = request(
            b.addr,
            "COPY",
            "/v1/files/local/mine.txt",
            &format!("Destination: {dest}\r\n"),
            "",
        );
        assert!((400..500).contains(&status), "COPY to {dest} → {text}");
    }
    let outside: Vec<_> = std::fs::read_dir(b.outside())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut outside = outside;
    outside.sort();
    assert_eq!(
        outside,
        ["data", "secret.txt"],
        "nothing was written outside the data root"
    );
    assert_eq!(
        std::fs::read_to_string(b.outside().join("secret.txt")).unwrap(),
        "top secret"
    );
}

#[test]
fn uploads_are_atomic_and_errors_are_json() {
    let b = Backend::start();
    // A body that ends early: the connection closes after 5 of the 100 promised bytes.
    raw(
        b.addr,
        b"PUT /v1/files/local/partial.bin HTTP/1.1\r\nHost: b\r\nContent-Length: 100\r\n\r\nhello",
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !b.dir.path().join("data/local/partial.bin").exists(),
        "a broken upload left a file"
    );
    let tmp = b.dir.path().join("data/.store/local/tmp");
    let leftovers = std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "a broken upload left a temporary file");

    let (status, text) = request(b.addr, "GET", "/v1/files/local/missing.txt", "", "");
    assert_eq!(status, 404);
    assert!(text.contains(r#""code":"NOT_FOUND""#), "{text}");
    let (status, _) = request(b.addr, "PUT", "/v1/files/local/a.txt", "", "1");
    assert_eq!(status, 201);
    let (status, text) = request(
        b.addr,
        "COPY",
        "/v1/files/local/a.txt",
        "Destination: /v1/files/local/b.txt\r\n",
        "",
    );
    assert_eq!(status, 201, "{text}");
    let (status, text) = request(
        b.addr,
        "COPY",
        "/v1/files/local/a.txt",
        "Destination: /v1/files/local/b.txt\r\n",
        "",
    );
    assert_eq!(status, 409, "{text}");
    assert!(text.contains(r#""code":"CONFLICT""#), "{text}");
    let (status, _) = request(
        b.addr,
        "COPY",
        "/v1/files/local/a.txt",
        "Destination: /v1/files/local/b.txt\r\nOverwrite: T\r\n",
        "",
    );
    assert_eq!(status, 200);
    // What was replaced, by the copy and by a second upload, can be found in the trash.
    let (status, _) = request(b.addr, "PUT", "/v1/files/local/a.txt", "", "2");
    assert_eq!(status, 200);
    let (status, text) = request(b.addr, "GET", "/v1/trash/local", "", "");
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        text.matches(r#""originalPath":"/b.txt""#).count(),
        1,
        "{text}"
    );
    assert_eq!(
        text.matches(r#""originalPath":"/a.txt""#).count(),
        1,
        "{text}"
    );
    let (_, now) = request(b.addr, "GET", "/v1/files/local/a.txt", "", "");
    assert!(now.ends_with('2'), "{now}");
    let (status, _) = request(
        b.addr,
        "GET",
        "/v1/files/local/a.txt",
        "Range: bytes=5-\r\n",
        "",
    );
    assert_eq!(status, 416);
    let (status, _) = request(b.addr, "GET", "/v1/files/nope/a.txt", "", "");
    assert_eq!(status, 404);
}
