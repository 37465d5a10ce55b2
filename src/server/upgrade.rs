//! Zero-downtime upgrades: the running keygate hands its listening sockets to a new one over a
//! Unix socket (pingora's `Fds`, SCM_RIGHTS), so the kernel's accept queues are never closed:
//! a connection waiting in a queue is accepted by the new process, none is refused or reset.
//!
//! 1. `keygate serve --upgrade` starts, checks and loads everything (config, database,
//!    policies, certificates), then waits on `[server] upgrade_socket` for the sockets (5 s).
//! 2. The running keygate gets SIGQUIT (`[server] pid_file` lets the new one send it), sends
//!    its sockets, stops accepting, finishes its open requests and exits 0.
//!
//! The socket's folder must not be writable by other users: whoever can bind that path could
//! receive the listening sockets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use pingora::server::Fds;
use tokio::net::TcpListener;

/// The listening sockets of a running keygate, by name (`data`, `control`, `metrics`, `plain`).
#[derive(Debug, Clone, Default)]
pub struct Sockets(Arc<Vec<(String, RawFd)>>);

impl Sockets {
    /// Sends the sockets to the keygate waiting on `path` (blocking: retries for about 5 s).
    pub fn send(&self, path: &Path) -> anyhow::Result<()> {
        check_folder(path)?;
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

/// The folder of the upgrade socket must exist and be writable by its owner only.
fn check_folder(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let meta = std::fs::metadata(folder)
        .with_context(|| format!("the upgrade socket's folder {}", folder.display()))?;
    if meta.mode() & 0o022 != 0 {
        anyhow::bail!(
            "the upgrade socket's folder {} is writable by other users (mode {:o}); whoever can \
             bind there could take keygate's listening sockets: use a folder of keygate's own \
             with mode 0700 or 0755",
            folder.display(),
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

/// Receives the running keygate's sockets on `path`; a wanted listener it did not have is bound
/// anew, and one it had that is no longer wanted is closed.
pub async fn receive(
    path: &Path,
    wanted: &[(&str, SocketAddr)],
    pid_file: Option<&Path>,
) -> anyhow::Result<(HashMap<String, TcpListener>, Sockets)> {
    check_folder(path)?;
    if let Some(pid_file) = pid_file {
        signal_running(pid_file)?;
    }
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
                let listener = adopt(*fd)?;
                let local = listener.local_addr()?;
                if addr.port() != 0 && local != *addr {
                    tracing::warn!(listener = %name, inherited = %local, configured = %addr, "an upgrade keeps the listening address; restart to change it");
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
    Ok((listeners, Sockets(Arc::new(sockets))))
}

/// Asks the keygate named in `pid_file` to hand its sockets over (SIGQUIT).
fn signal_running(pid_file: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(pid_file)
        .with_context(|| format!("cannot read the running keygate's {}", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 1)
        .with_context(|| format!("{} does not hold a process id", pid_file.display()))?;
    if pid as u32 == std::process::id() {
        anyhow::bail!("{} names this process", pid_file.display());
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGQUIT,
    )
    .with_context(|| format!("cannot signal the running keygate (pid {pid})"))
}

/// A listening socket received over SCM_RIGHTS, as a tokio listener.
#[allow(unsafe_code)]
fn adopt(fd: RawFd) -> anyhow::Result<TcpListener> {
    use std::os::fd::FromRawFd;
    // SAFETY: `fd` was received over SCM_RIGHTS a moment ago: the kernel installed it as a new
    // descriptor of this process, nothing else owns it, and it is adopted exactly once (each
    // name maps to one descriptor).
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    listener.set_nonblocking(true)?;
    Ok(TcpListener::from_std(listener)?)
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

/// Writes this process's id to `[server] pid_file` (atomically: a new file, then a rename).
pub fn write_pid_file(path: &Path) -> anyhow::Result<()> {
    let tmp = path.with_extension("pid.tmp");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
