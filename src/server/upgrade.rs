//! Zero-downtime upgrades: the running keygate hands its listening sockets to a new one over a
//! Unix socket (pingora's `Fds`, SCM_RIGHTS), so the kernel's accept queues are never closed:
//! a connection waiting in a queue is accepted by one process or the other, none is refused or
//! reset. The hand-over has two phases, so that no failure leaves nothing serving:
//!
//! 1. `keygate serve --upgrade` checks and loads everything (config, database, policies,
//!    certificates), sends SIGQUIT to the keygate named in `[server] pid_file`, and receives its
//!    sockets on `[server] upgrade_socket` (within 5 s). The old one keeps accepting.
//! 2. Once the new one serves on every listener, it writes the pid file, tells systemd it is
//!    the service (`MAINPID`), and sends the old one SIGTERM: that one stops accepting,
//!    finishes its open requests and exits 0. If the new one fails before that, the old one
//!    simply goes on.
//!
//! The upgrade socket's folder must belong to keygate's user with mode 0700: whoever could
//! reach that path could send a new keygate sockets of their own, or receive the listening
//! ones. The pid file's folder must not be writable by anyone else either, and the process it
//! names is signalled only if it is a keygate of the same user.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pingora::server::Fds;
use tokio::net::TcpListener;

/// The listening sockets of a running keygate, by name (`data`, `control`, `metrics`, `plain`).
#[derive(Debug, Clone, Default)]
pub struct Sockets(Arc<Vec<(String, RawFd)>>);

impl Sockets {
    /// Sends the sockets to the keygate waiting on `path` (blocking: retries for about 5 s).
    /// This keygate keeps accepting until the new one tells it to stop (SIGTERM).
    pub fn send(&self, path: &Path) -> anyhow::Result<()> {
        check_folder(path, 0o077)?;
        let mut fds = Fds::new();
        for (name, fd) in self.0.iter() {
            fds.add(name.clone(), *fd);
        }
        let path = path
            .to_str()
            .context("the upgrade socket's path is not UTF-8")?;
        fds.send_to_sock(path)
            .map_err(|e| anyhow::anyhow!("no new keygate took the sockets at {path}: {e}"))?;
        Ok(())
    }
}

/// The folder of `path` must exist, belong to this process's user and grant none of the
/// `forbidden` mode bits.
fn check_folder(path: &Path, forbidden: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let meta =
        std::fs::metadata(folder).with_context(|| format!("the folder of {}", path.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me || meta.mode() & forbidden != 0 {
        anyhow::bail!(
            "{} must be a folder of keygate's own user (uid {me}) that no one else may write{}; \
             it is uid {} with mode {:o}",
            folder.display(),
            if forbidden & 0o005 != 0 {
                " or enter (mode 0700)"
            } else {
                ""
            },
            meta.uid(),
            meta.mode() & 0o777
        );
    }
    Ok(())
}

/// Binds every wanted listener.
pub async fn bind(
    wanted: &[(&str, SocketAddr)],
) -> anyhow::Result<(HashMap<String, TcpListener>, Sockets)> {
    let mut listeners = HashMap::new();
    let mut sockets = Vec::new();
    for (name, addr) in wanted {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ({name})"))?;
        sockets.push((name.to_string(), listener.as_raw_fd()));
        listeners.insert(name.to_string(), listener);
    }
    Ok((listeners, Sockets(Arc::new(sockets))))
}

/// What `serve --upgrade` took over: the listeners, and the keygate to retire once serving.
pub struct Inherited {
    pub listeners: HashMap<String, TcpListener>,
    pub sockets: Sockets,
    pub previous: i32,
}

/// Asks the keygate named in `pid_file` for its sockets and receives them on `path`; a wanted
/// listener it did not have is bound anew, one it had that is no longer wanted is closed.
/// Nothing here stops the old keygate: [`retire`] does, once this one serves.
pub async fn receive(
    path: &Path,
    wanted: &[(&str, SocketAddr)],
    pid_file: &Path,
) -> anyhow::Result<Inherited> {
    check_folder(path, 0o077)?;
    let previous = running_keygate(pid_file)?;
    kill(Pid::from_raw(previous), Signal::SIGQUIT)
        .with_context(|| format!("cannot signal the running keygate (pid {previous})"))?;
    let text = path
        .to_str()
        .context("the upgrade socket's path is not UTF-8")?
        .to_owned();
    let names: std::collections::HashSet<String> =
        wanted.iter().map(|(n, _)| n.to_string()).collect();
    let received = tokio::task::spawn_blocking(move || {
        let mut fds = Fds::new();
        fds.get_from_sock(text.as_str())
            .map_err(|e| anyhow::anyhow!("no running keygate sent its sockets to {text}: {e}"))?;
        for closed in fds.close_unclaimed(&names) {
            tracing::warn!(listener = %closed, "the previous keygate's listener is not in this config: closed");
        }
        Ok::<_, anyhow::Error>(fds)
    })
    .await
    .context("receiving the sockets did not finish")??;
    let mut listeners = HashMap::new();
    let mut sockets = Vec::new();
    for (name, addr) in wanted {
        let listener = match received.get(name) {
            Some(fd) => {
                let listener =
                    adopt(*fd).with_context(|| format!("the inherited {name} socket"))?;
                let local = listener.local_addr()?;
                if addr.port() != 0 && local != *addr {
                    anyhow::bail!(
                        "the running keygate's {name} listener is on {local}, this config says \
                         {addr}: an upgrade keeps the listening addresses (restart to change them)"
                    );
                }
                listener
            }
            None => TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} ({name})"))?,
        };
        sockets.push((name.to_string(), listener.as_raw_fd()));
        listeners.insert(name.to_string(), listener);
    }
    Ok(Inherited {
        listeners,
        sockets: Sockets(Arc::new(sockets)),
        previous,
    })
}

/// The process named in `pid_file`, checked to be a keygate of this user (so that a stale or
/// forged pid file cannot make keygate signal another program).
fn running_keygate(pid_file: &Path) -> anyhow::Result<i32> {
    use std::os::unix::fs::MetadataExt;
    check_folder(pid_file, 0o022)?;
    let text = std::fs::read_to_string(pid_file)
        .with_context(|| format!("cannot read the running keygate's {}", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 1 && *p as u32 != std::process::id())
        .with_context(|| format!("{} does not name another process", pid_file.display()))?;
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let owner = std::fs::metadata(&proc_dir)
        .with_context(|| format!("no process {pid} (from {})", pid_file.display()))?
        .uid();
    let exe = std::fs::read_link(proc_dir.join("exe")).unwrap_or_default();
    let is_keygate = exe
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("keygate"));
    if owner != nix::unistd::geteuid().as_raw() || !is_keygate {
        anyhow::bail!(
            "process {pid} (from {}) is not a keygate of this user",
            pid_file.display()
        );
    }
    Ok(pid)
}

/// A listening TCP socket received over SCM_RIGHTS, checked, as a tokio listener.
#[allow(unsafe_code)]
fn adopt(fd: RawFd) -> anyhow::Result<TcpListener> {
    use nix::sys::socket::{getsockopt, sockopt};
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: `fd` was received over SCM_RIGHTS a moment ago: the kernel installed it as a new
    // descriptor of this process, nothing else owns it, and it is adopted exactly once (each
    // name maps to one descriptor).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let listening = getsockopt(&owned, sockopt::AcceptConn).unwrap_or(false);
    let stream = getsockopt(&owned, sockopt::SockType)
        .is_ok_and(|t| t == nix::sys::socket::SockType::Stream);
    if !listening || !stream {
        anyhow::bail!("not a listening stream socket");
    }
    let listener = std::net::TcpListener::from(owned);
    // Only an IPv4 or IPv6 socket has a TCP address.
    listener.local_addr().context("not a TCP socket")?;
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener)?)
}

/// Tells the replaced keygate to stop accepting, finish and exit (SIGTERM).
pub fn retire(previous: i32) {
    match kill(Pid::from_raw(previous), Signal::SIGTERM) {
        Ok(()) => tracing::info!(pid = previous, "serving; the previous keygate is draining"),
        Err(e) => tracing::warn!(pid = previous, error = %e, "cannot stop the previous keygate"),
    }
}

/// Tells systemd (when it started keygate with `Type=notify`) that this process is the service
/// now and is ready; a no-op elsewhere.
pub fn notify_ready() {
    let pid = std::process::id();
    let _ = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::MainPid(pid),
            sd_notify::NotifyState::Ready,
        ],
    );
}

/// Writes this process's id to `[server] pid_file`: a new file (never through a symlink), then
/// a rename.
pub fn write_pid_file(path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    check_folder(path, 0o022)?;
    let tmp = path.with_extension("pid.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    writeln!(file, "{}", std::process::id())?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `keygate upgrade`: starts `keygate serve --upgrade` with the caller's global options (and
/// the running keygate's own command-line overrides and working folder, so that relative
/// paths and `--upstream` mean what they mean to it), detached, and waits until the pid file
/// names it: it serves on every listener and is retiring the old one. One upgrade at a time
/// (a lock beside the pid file).
///
/// Its log goes to the journal when systemd runs this (`JOURNAL_STREAM`); otherwise it is
/// relayed to this command's standard error until the outcome is known. It is never killed
/// from here: if it has not taken over within `within`, this says so and leaves it (a keygate
/// told to stop while starting would never take over, and one that did must not be stopped).
pub fn run_upgrade(
    global: &[std::ffi::OsString],
    pid_file: &Path,
    within: std::time::Duration,
) -> anyhow::Result<u32> {
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::process::CommandExt;
    let lock_path = pid_file.with_extension("lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| anyhow::anyhow!("another upgrade is in progress ({})", lock_path.display()))?;
    let previous = running_keygate(pid_file)?;
    let (old_cwd, old_args) = process_context(previous);
    let exe = std::env::current_exe().context("cannot find keygate's own binary")?;
    let mut command = std::process::Command::new(exe);
    command.args(global);
    if !global.iter().any(|a| a == "--database-url") {
        command.args(flag_values(&old_args, "--database-url"));
    }
    command.args(["serve", "--upgrade"]);
    for flag in ["--listen", "--control-listen", "--upstream"] {
        command.args(flag_values(&old_args, flag));
    }
    if let Some(dir) = old_cwd {
        command.current_dir(dir);
    }
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(if journal {
            std::process::Stdio::inherit()
        } else {
            std::process::Stdio::piped()
        })
        .process_group(0);
    let mut child = command.spawn().context("cannot start the new keygate")?;
    // Told when the relay has read the new keygate's last line (its standard error closed).
    let (relayed, all_relayed) = std::sync::mpsc::channel::<()>();
    if let Some(err) = child.stderr.take() {
        // Relayed while this command waits; afterwards the new keygate's writes fail quietly.
        std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            drop(relayed);
        });
    } else {
        drop(relayed);
    }
    let pid = child.id();
    let deadline = std::time::Instant::now() + within;
    loop {
        let named = std::fs::read_to_string(pid_file).unwrap_or_default();
        if named.trim() == pid.to_string() {
            return Ok(pid);
        }
        if let Some(status) = child.try_wait()? {
            // Its last words (why it stopped) come before this command's own: the relay may
            // not have read them yet when the exit is seen.
            let _ = all_relayed.recv_timeout(std::time::Duration::from_secs(2));
            anyhow::bail!(
                "the new keygate exited ({status}) before taking over; the running one goes on"
            );
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "the new keygate (pid {pid}) has not taken over after {within:?}; it is still \
                 starting (see its log): the running one serves until it does"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The working folder and command line of process `pid` (same user: checked by the caller).
fn process_context(pid: i32) -> (Option<PathBuf>, Vec<String>) {
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    let args = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default();
    (cwd, args)
}

/// Every `flag value` and `flag=value` of `args`, as arguments to pass on.
fn flag_values(args: &[String], flag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == flag {
            if let Some(v) = it.next() {
                out.push(flag.to_owned());
                out.push(v.clone());
            }
        } else if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
            out.push(format!("{flag}={v}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_carried_over_in_both_spellings() {
        let args: Vec<String> = [
            "keygate",
            "--config",
            "/etc/k.toml",
            "serve",
            "--upstream",
            "10.0.0.1:7070",
            "--upstream=10.0.0.2:7070",
            "--listen",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            flag_values(&args, "--upstream"),
            ["--upstream", "10.0.0.1:7070", "--upstream=10.0.0.2:7070"]
        );
        // A flag without its value is not carried.
        assert!(flag_values(&args, "--listen").is_empty());
        assert!(flag_values(&args, "--database-url").is_empty());
    }
}
