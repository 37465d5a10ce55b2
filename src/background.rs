//! Background work: the shutdown signal every task stops on, the [`Ticker`] that paces the
//! periodic loops (polling for changes, flushing usage, purging tokens), and the process's
//! stop signals.
//!
//! May import: nothing of keygate's. Imported by whatever runs a loop.

use std::time::Duration;

use tokio::sync::watch;

/// Turns true once, when the process starts shutting down.
pub type Shutdown = watch::Receiver<bool>;

/// Paces a periodic loop: `while ticker.tick().await { … }` runs the body every `interval`
/// until shutdown, and returns at once when shutdown comes mid-wait.
pub struct Ticker {
    interval: Duration,
    shutdown: Shutdown,
}

impl Ticker {
    pub fn new(interval: Duration, shutdown: Shutdown) -> Ticker {
        Ticker { interval, shutdown }
    }

    /// Waits one interval; false when the process is shutting down.
    pub async fn tick(&mut self) -> bool {
        if *self.shutdown.borrow() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(self.interval) => true,
            _ = self.shutdown.wait_for(|s| *s) => false,
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// What a serving keygate is asked to do by a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGINT or SIGTERM: drain and exit.
    Shutdown,
    /// SIGQUIT: hand the listening sockets to a new keygate (and go on until it says stop).
    Upgrade,
}

/// The signals of a serving keygate, listened for from start to exit (so that none that
/// arrives while keygate is busy with another is lost).
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// The next signal.
    pub async fn next(&mut self) -> Stop {
        tokio::select! {
            _ = self.term.recv() => Stop::Shutdown,
            _ = self.int.recv() => Stop::Shutdown,
            _ = self.quit.recv() => Stop::Upgrade,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_ticker_ticks_until_shutdown() {
        let (tx, rx) = watch::channel(false);
        let mut ticker = Ticker::new(Duration::from_secs(1), rx);
        assert!(ticker.tick().await);
        assert!(ticker.tick().await);
        tx.send(true).unwrap();
        assert!(!ticker.tick().await);
    }
}
