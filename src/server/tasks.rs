//! The background tasks of a running keygate: reloading policies (SIGHUP, file changes),
//! flushing usage, purging old tokens, expiry reminders (following changes made elsewhere is
//! `cluster::ChangeFeed`). Each stops on the shutdown signal.

use std::sync::Arc;
use std::time::Duration;

use crate::background::{Shutdown, Ticker};
use crate::clock::now_millis;
use crate::model::EXPIRY_WARNING_MS;
use crate::notify::{Email, EmailSettings, Reminders, Webhook, WebhookSettings};
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::usage::UsageRecorder;

/// Deletes token rows a week after they expired, hourly.
pub async fn purge_tokens(store: Store, shutdown: Shutdown) {
    const GRACE_MS: i64 = 7 * 86_400_000;
    let mut ticker = Ticker::new(Duration::from_secs(3600), shutdown);
    loop {
        match store.purge_expired_tokens(GRACE_MS).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tokens = n, "purged expired tokens"),
            Err(e) => tracing::warn!(error = %e, "cannot purge expired tokens"),
        }
        if !ticker.tick().await {
            return;
        }
    }
}

/// Something reloaded on SIGHUP or on a change of its files (it logs its own outcome).
pub type Reload = Arc<dyn Fn() + Send + Sync>;

/// Runs every reload on SIGHUP, off the runtime's threads.
pub async fn reload_on_signal(reloads: Vec<Reload>, mut shutdown: Shutdown) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload through the control plane instead");
        return;
    };
    loop {
        let hupped = tokio::select! {
            got = hup.recv() => got.is_some(),
            _ = shutdown.wait_for(|s| *s) => false,
        };
        if !hupped {
            return;
        }
        for reload in &reloads {
            let reload = reload.clone();
            let _ = tokio::task::spawn_blocking(move || reload()).await;
        }
    }
}

/// Runs `reload` when a file in one of `dirs` (or below, without `names`) changes (after 200 ms
/// of quiet); `what` names it in messages. With `names`, only changes to files of those names count (and to Kubernetes'
/// `..data`-style entries, which a mounted secret swaps on update).
pub async fn reload_on_change(
    what: &'static str,
    dirs: Vec<std::path::PathBuf>,
    names: Option<Vec<std::ffi::OsString>>,
    reload: Reload,
    mut shutdown: Shutdown,
) {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // A whole folder (the policies) is watched with its subfolders (`shadow/`; `tests/` too,
    // harmlessly: an unchanged set reloads as `unchanged`); named files (certificates) alone.
    let mode = if names.is_none() {
        notify::RecursiveMode::Recursive
    } else {
        notify::RecursiveMode::NonRecursive
    };
    let relevant = move |e: &notify::Event| {
        let Some(names) = &names else { return true };
        e.paths.iter().any(|p| {
            p.file_name().is_some_and(|n| {
                names.iter().any(|w| w == n) || n.as_encoded_bytes().starts_with(b"..")
            })
        })
    };
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access() && relevant(&e)) {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, what, "cannot watch for changes; reload with SIGHUP or the control plane");
            return;
        }
    };
    for dir in &dirs {
        if let Err(e) = watcher.watch(dir, mode) {
            tracing::warn!(error = %e, what, dir = %dir.display(), "cannot watch for changes; reload with SIGHUP or the control plane");
            return;
        }
    }
    loop {
        let changed = tokio::select! {
            got = rx.recv() => got.is_some(),
            _ = shutdown.wait_for(|s| *s) => false,
        };
        if !changed {
            return;
        }
        // Let an editor (or a renewal tool) finish writing: wait for 200 ms without events.
        while let Ok(Some(())) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
        }
        let reload = reload.clone();
        let _ = tokio::task::spawn_blocking(move || reload()).await;
    }
}

/// Writes usage counters every `interval` until shutdown (the last flush is `Running::shutdown`'s).
pub async fn flush_usage(
    usage: Arc<UsageRecorder>,
    store: Store,
    interval: Duration,
    shutdown: Shutdown,
) {
    let mut ticker = Ticker::new(interval, shutdown);
    while ticker.tick().await {
        if let Err(e) = usage.flush(&store).await {
            tracing::warn!(error = %e, "cannot write usage counts; keeping them for the next try");
        }
    }
}

/// Keeps the gauge of keys expiring within 7 days current, every `interval`: `/metrics` is
/// served from memory, never a query per scrape (scrapes are not authenticated).
pub async fn count_expiring_keys(
    store: Store,
    metrics: Arc<Metrics>,
    interval: Duration,
    shutdown: Shutdown,
) {
    let mut ticker = Ticker::new(interval, shutdown);
    loop {
        let until = now_millis() + EXPIRY_WARNING_MS;
        match store.count_keys_expiring(until).await {
            Ok(n) => metrics.keys_expiring_soon.set(n),
            Err(e) => tracing::warn!(error = %e, "cannot count expiring keys"),
        }
        if !ticker.tick().await {
            return;
        }
    }
}

/// The expiry-reminder loop of `[notify]`, with its secrets read and its channels set up: a
/// password or secret that cannot be read stops keygate from starting, like any other.
pub fn reminders(
    config: &crate::config::NotifyConfig,
    store: Store,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Reminders> {
    use anyhow::Context;
    let email = match &config.email {
        None => None,
        Some(e) => {
            let credentials = match (&e.username, &e.password) {
                (Some(user), Some(password)) => Some((
                    user.clone(),
                    password
                        .load()
                        .context("cannot read the [notify.email] password")?,
                )),
                _ => None,
            };
            Some(Email::new(EmailSettings {
                host: e.host.clone(),
                port: e.port,
                security: e.security,
                from: e.from.clone(),
                credentials,
            })?)
        }
    };
    let webhook = match &config.webhook {
        None => None,
        Some(w) => {
            let secret = w
                .secret
                .load()
                .context("cannot read the [notify.webhook] secret")?;
            if secret.chars().count() < crate::config::MIN_WEBHOOK_SECRET_LEN {
                anyhow::bail!(
                    "the [notify.webhook] secret must have at least {} characters",
                    crate::config::MIN_WEBHOOK_SECRET_LEN
                );
            }
            Some(Webhook::new(WebhookSettings {
                url: w.url.clone(),
                secret,
            })?)
        }
    };
    Ok(Reminders {
        store,
        metrics,
        thresholds: config.reminders.clone(),
        console_url: config.console_url.clone(),
        email,
        webhook,
        backoff: config.check_interval,
    })
}
