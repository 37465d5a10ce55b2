//! Following the changes other instances (and the CLI) make to keys, tokens, providers and
//! signing keys, so that a revocation made anywhere refuses the credential everywhere.
//!
//! On PostgreSQL two loops run side by side. The *listener* applies each notice as its
//! transaction commits (milliseconds). The *reader* reads every change above its horizon
//! (`store/changes.rs`) once per poll interval, and at once whenever the listener has just
//! (re)connected: so a notice lost while the connection was down is never lost, whatever the
//! clocks or the order in which transactions committed. On SQLite the reader alone runs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::background::Shutdown;
use crate::clock::now_millis;
use crate::identity::jwt::Tokens;
use crate::identity::Identity;
use crate::policy::PolicyEngine;
use crate::store::{Backend, CredentialChange, Notice, Store};
use crate::telemetry::Metrics;

/// How far back the SQLite reader re-reads before the newest change it saw: a writer that
/// stamped its change and then waited for SQLite's write lock (at most its 5-second busy
/// timeout) commits with an older stamp.
const SQLITE_OVERLAP_MS: i64 = 6_000;

/// Where this instance stands on the changes it follows (`GET /v1/admin/cluster`).
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeedStatus {
    /// `notify` (PostgreSQL: notices, and polling as the safety net) or `poll` (SQLite).
    pub mechanism: &'static str,
    /// Listening for notices right now.
    pub listening: bool,
    /// PostgreSQL: the oldest transaction that may still hold changes this instance has not
    /// read; SQLite: the newest change time read.
    pub horizon: Option<i64>,
    /// When the newest change this instance applied was written (unix ms, the writer's clock).
    pub newest_change_at: Option<i64>,
    /// When this instance applied it (unix ms).
    pub newest_applied_at: Option<i64>,
    /// Changes that were news to this instance, since it started.
    pub changes_applied: u64,
    pub notices: u64,
    pub last_notice_at: Option<i64>,
    /// The last successful read of the changes (poll or catch-up).
    pub last_read_at: Option<i64>,
    /// Times the listener lost its connection and made it again.
    pub reconnects: u64,
    /// The last error reading or listening, until the next success.
    pub last_error: Option<String>,
}

/// The change follower of one instance.
pub struct ChangeFeed {
    store: Store,
    identity: Arc<Identity>,
    policy: Arc<PolicyEngine>,
    tokens: Arc<Tokens>,
    metrics: Arc<Metrics>,
    interval: Duration,
    started_at: i64,
    status: Mutex<FeedStatus>,
    /// Wakes the reader for a catch-up (the listener has just connected).
    catch_up: tokio::sync::Notify,
    /// One policy install at a time; the last version refused (not tried again).
    policy_turn: tokio::sync::Mutex<Option<i64>>,
    /// PostgreSQL: the horizon read before the instance served anything (`prime`).
    first_horizon: Mutex<Option<i64>>,
}

impl ChangeFeed {
    pub fn new(
        store: Store,
        identity: Arc<Identity>,
        policy: Arc<PolicyEngine>,
        tokens: Arc<Tokens>,
        metrics: Arc<Metrics>,
        interval: Duration,
    ) -> ChangeFeed {
        let mechanism = match store.backend() {
            Backend::Postgres => "notify",
            Backend::Sqlite => "poll",
        };
        metrics
            .change_feed_listening
            .with_label_values(&[mechanism])
            .set(0);
        ChangeFeed {
            store,
            identity,
            policy,
            tokens,
            metrics,
            interval,
            started_at: now_millis(),
            status: Mutex::new(FeedStatus {
                mechanism,
                ..FeedStatus::default()
            }),
            catch_up: tokio::sync::Notify::new(),
            policy_turn: tokio::sync::Mutex::new(None),
            first_horizon: Mutex::new(None),
        }
    }

    pub fn status(&self) -> FeedStatus {
        self.lock().clone()
    }

    /// The poll interval (the safety net's period).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads where the change feed starts (PostgreSQL), before the instance serves anything: a
    /// change committed after a credential is cached is then never older than the horizon.
    pub async fn prime(&self) -> Result<(), crate::store::StoreError> {
        if self.store.backend() == Backend::Postgres {
            let horizon = self.store.change_horizon().await?;
            *self.first_horizon.lock().unwrap_or_else(|e| e.into_inner()) = Some(horizon);
            self.read_ok(horizon);
        }
        Ok(())
    }

    /// Follows changes until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        match self.store.backend() {
            Backend::Postgres => {
                tokio::join!(
                    self.clone().listen(shutdown.clone()),
                    self.clone().read_by_horizon(shutdown.clone()),
                    self.clone().refresh(shutdown),
                );
            }
            Backend::Sqlite => {
                tokio::join!(
                    self.clone().read_by_time(shutdown.clone()),
                    self.clone().refresh(shutdown),
                );
            }
        }
    }

    /// Every poll interval, what is read whole rather than by change (a slow JWKS fetch or
    /// policy install never delays reading the credentials' changes).
    async fn refresh(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            self.refresh_the_rest().await;
        }
    }

    /// Applies changes; counts and times those that were news here.
    fn apply(&self, changes: &[CredentialChange], via: &'static str) {
        let now = now_millis();
        let mut news = 0;
        let mut newest = None;
        for c in changes {
            if !self.identity.apply_change(&c.id, c.generation) {
                continue;
            }
            news += 1;
            newest = newest.max(Some(c.changed_at));
            // Changes written before this instance started were never cached here: their age
            // is no lag.
            if c.changed_at >= self.started_at {
                let lag = (now - c.changed_at).max(0) as f64 / 1000.0;
                self.metrics
                    .change_lag
                    .with_label_values(&[via])
                    .observe(lag);
            }
        }
        if news == 0 {
            return;
        }
        let mut status = self.lock();
        status.changes_applied += news;
        if newest > status.newest_change_at {
            status.newest_change_at = newest;
            status.newest_applied_at = Some(now);
            if let Some(at) = newest {
                self.metrics.change_newest_applied.set(at as f64 / 1000.0);
            }
        }
    }

    async fn reload_providers(&self) {
        match self.store.provider_directory().await {
            Ok(d) => self.policy.set_providers(d),
            Err(e) => tracing::warn!(error = %e, "cannot read the providers"),
        }
    }

    /// What every poll does besides credentials: the providers (a small table), the signing
    /// keys and external issuers' key sets when due, and a newer published policy version.
    async fn refresh_the_rest(&self) {
        self.reload_providers().await;
        self.tokens.refresh().await;
        self.follow_policy().await;
    }

    /// With published policies, installs the newest version when it is not the one running
    /// (newer, or older after someone deleted rows: the database is the truth). An invalid
    /// version is refused and the last good one keeps running (`/v1/admin/policy` says why).
    pub async fn follow_policy(&self) {
        if !self.policy.is_published() {
            return;
        }
        let mut refused = self.policy_turn.lock().await;
        let newest = match self.store.newest_policy_version().await {
            Ok(Some(v)) => v,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the published policy versions");
                return;
            }
        };
        if self.policy.current().version == Some(newest) || *refused == Some(newest) {
            return;
        }
        let published = match self.store.policy_version(newest).await {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, version = newest, "cannot read a published policy version");
                return;
            }
        };
        // Parsing and validating a set takes milliseconds of CPU: off the runtime's threads.
        let policy = self.policy.clone();
        let installed = tokio::task::spawn_blocking(move || {
            policy.install(published.version, &published.files)
        })
        .await;
        match installed {
            Ok(Ok(epoch)) => {
                tracing::info!(
                    version = newest,
                    epoch,
                    "running the newest published policy version"
                );
            }
            // The engine logged why; the version is not tried again until a newer one.
            _ => *refused = Some(newest),
        }
    }

    fn read_ok(&self, horizon: i64) {
        let now = now_millis();
        let mut status = self.lock();
        status.horizon = Some(horizon);
        status.last_read_at = Some(now);
        status.last_error = None;
        self.metrics.change_feed_last_read.set(now as f64 / 1000.0);
    }

    fn read_failed(&self, e: &dyn std::fmt::Display) {
        tracing::warn!(error = %e, "cannot read the changes made by other instances");
        self.lock().last_error = Some(format!("reading changes: {e}"));
    }

    /// PostgreSQL's reader: every poll interval, and at once on a catch-up.
    async fn read_by_horizon(self: Arc<Self>, mut shutdown: Shutdown) {
        let primed = self
            .first_horizon
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let mut horizon = if let Some(h) = primed {
            h
        } else {
            loop {
                match self.store.change_horizon().await {
                    Ok(h) => break h,
                    Err(e) => self.read_failed(&e),
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.interval) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        };
        self.read_ok(horizon);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = self.catch_up.notified() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            match self.store.credentials_changed_after(horizon).await {
                Ok((changes, next)) => {
                    self.apply(&changes, "poll");
                    horizon = next;
                    self.read_ok(horizon);
                }
                Err(e) => self.read_failed(&e),
            }
        }
    }

    /// SQLite's reader: by change time, every poll interval.
    async fn read_by_time(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut since = now_millis() - SQLITE_OVERLAP_MS;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            match self
                .store
                .credentials_changed_since(since - SQLITE_OVERLAP_MS)
                .await
            {
                Ok((changes, newest)) => {
                    self.apply(&changes, "poll");
                    since = since.max(newest);
                    self.read_ok(since);
                }
                Err(e) => self.read_failed(&e),
            }
        }
    }

    fn set_listening(&self, listening: bool) {
        let mut status = self.lock();
        status.listening = listening;
        self.metrics
            .change_feed_listening
            .with_label_values(&[status.mechanism])
            .set(i64::from(listening));
    }

    /// PostgreSQL's listener: applies notices as they come; connects again after a loss (waiting
    /// up to 5 s between attempts), and has the reader catch up each time it has connected.
    async fn listen(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut backoff = Duration::from_millis(100);
        let mut connected_before = false;
        loop {
            let listener = tokio::select! {
                l = self.store.listen() => l,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            match listener {
                Ok(None) => return,
                Ok(Some(mut listener)) => {
                    backoff = Duration::from_millis(100);
                    if connected_before {
                        self.lock().reconnects += 1;
                    }
                    connected_before = true;
                    self.set_listening(true);
                    tracing::info!("listening for changes made by other instances");
                    self.catch_up_everything();
                    loop {
                        let next = tokio::select! {
                            n = listener.next() => n,
                            _ = shutdown.wait_for(|s| *s) => return,
                        };
                        match next {
                            Ok(notice) => self.clone().on_notice(notice).await,
                            Err(e) => {
                                tracing::warn!(error = %e, "lost the change notices; polling until they are back");
                                self.lock().last_error = Some(format!("listening: {e}"));
                                break;
                            }
                        }
                    }
                    self.set_listening(false);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for changes; polling meanwhile");
                    self.lock().last_error = Some(format!("listening: {e}"));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// After notices may have been missed: the credentials at once (the reader), and the
    /// providers and the published policies too, without holding up the listener.
    fn catch_up_everything(self: &Arc<Self>) {
        self.catch_up.notify_one();
        let feed = self.clone();
        tokio::spawn(async move {
            feed.reload_providers().await;
            feed.follow_policy().await;
        });
    }

    async fn on_notice(self: Arc<Self>, notice: Notice) {
        if notice != Notice::Reconnected {
            let mut status = self.lock();
            status.notices += 1;
            status.last_notice_at = Some(now_millis());
        }
        match notice {
            // The notice names the credential; its generation is read from the row.
            Notice::Credential(change) => match self.store.credential_now(&change.id).await {
                Ok(Some(now)) => self.apply(&[now], "notice"),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a changed credential; catching up");
                    self.lock().last_error = Some(format!("reading a change: {e}"));
                    self.catch_up.notify_one();
                }
            },
            Notice::Providers => self.reload_providers().await,
            // Installing a set takes a while (and waits for an install the poll started): the
            // listener goes on meanwhile.
            Notice::Policy(_) => {
                tokio::spawn(async move { self.follow_policy().await });
            }
            Notice::SigningKeys => {
                if let Err(e) = self.tokens.reload_keys().await {
                    tracing::warn!(error = %e, "cannot reload the signing keys");
                }
            }
            Notice::Reconnected => {
                self.lock().reconnects += 1;
                tracing::info!("listening for changes again; catching up");
                self.catch_up_everything();
            }
            // A newer keygate's notice: reading the changes covers whatever it meant.
            Notice::Other(_) => self.catch_up.notify_one(),
        }
    }
}
