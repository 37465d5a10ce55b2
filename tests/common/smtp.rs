//! A real SMTP server for the reminder tests: aiosmtpd (PyPI), writing every message it
//! accepts into a Maildir. Without it the tests report themselves skipped, unless
//! `KEYGATE_TEST_REQUIRE_SMTP` is set (CI sets it and installs it), when they fail.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// True when `python3 -m aiosmtpd` can run.
pub fn smtp_sink_installed() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var_os("KEYGATE_TEST_REQUIRE_SMTP").is_some() {
            panic!("aiosmtpd is required (python3 -m pip install aiosmtpd)");
        }
        eprintln!("skipped: aiosmtpd is not installed (python3 -m pip install aiosmtpd)");
    }
    found
}

/// aiosmtpd on a free loopback port; stopped when dropped.
pub struct SmtpSink {
    pub addr: SocketAddr,
    child: Child,
    maildir: TempDir,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        let maildir = tempfile::tempdir().unwrap();
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut child = Command::new("python3")
                .args(["-m", "aiosmtpd", "-n", "-l"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["-c", "aiosmtpd.handlers.Mailbox"])
                .arg(maildir.path().join("mail"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3 starts");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return SmtpSink {
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                        child,
                        maildir,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("aiosmtpd did not start");
    }

    /// Every message received so far, as sent (headers and body), oldest first.
    pub fn messages(&self) -> Vec<String> {
        let dir: PathBuf = self.maildir.path().join("mail").join("new");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        files
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
