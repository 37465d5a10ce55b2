//! The processes under test: binaries of the workspace, a child process killed on drop, the
//! storage-backend.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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

    /// CPU time the process has used so far (user and system), in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // The fields after the command name (which is in parentheses and may hold spaces).
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; Linux
        // counts them in 100ths of a second.
        (ticks(11) + ticks(12)) / 100.0
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
pub fn spawn_and_read(mut cmd: Command, log: PathBuf, prefixes: &[&str]) -> (Proc, Vec<String>) {
    let err = std::fs::File::create(&log).expect("log file");
    cmd.stdout(Stdio::piped()).stderr(err).stdin(Stdio::null());
    let mut child = cmd.spawn().expect("process starts");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end even when nobody waits for lines any more: a closed pipe would make
        // the process's next print fail (the demo prints its banner line by line).
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
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
