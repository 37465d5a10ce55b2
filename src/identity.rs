//! Stage 3, identity: [`Credentials`] → [`Principal`], with its caches.
//!
//! An API key is checked for shape and checksum first (no database work for garbage), then
//! found through a moka cache keyed by its keyed hash, and on a miss by one indexed lookup of
//! that hash, compared in constant time. Unknown keys go to a bounded negative cache. Addresses
//! that keep failing are answered 429 before any database work.
//!
//! Revocation is immediate and race-free through generations: every key row carries one, bumped
//! by each change that must retire cached copies. The in-memory table `generations` holds the
//! newest generation seen per key and only ever grows; a cached principal is used only while its
//! generation equals the table's, and a lookup that raced a revoke is retried.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota};
use moka::sync::Cache;
use subtle::ConstantTimeEq;

use crate::credentials::Credentials;
use crate::deny::{AuthFailure, Refusal};
use crate::keys::{Grant, KeyStyle, Pepper};
use crate::store::{now_millis, KeyRecord, Role, Store};
use crate::telemetry::Metrics;
use crate::usage::{KeyCounters, UsageRecorder};

/// What kind of credential a principal came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrincipalKind {
    #[default]
    ApiKey,
    ScopedToken,
    Login,
}

/// Who is making a request, as the later stages need it.
#[derive(Debug)]
pub struct Principal {
    pub kind: PrincipalKind,
    /// The credential's id (an API key's id).
    pub key_id: String,
    pub user_id: String,
    pub user_email: String,
    pub workspace_id: String,
    pub workspace: String,
    pub scopes: Vec<String>,
    /// `None`: every provider.
    pub grants: Option<Vec<Grant>>,
    /// The owner's role in the key's workspace; `None` when no longer a member.
    pub role: Option<Role>,
    pub expires_at: Option<i64>,
    pub generation: i64,
    pub usage: Arc<KeyCounters>,
}

impl Principal {
    /// The principal of a stored API key.
    pub fn from_key(r: KeyRecord, usage: Arc<KeyCounters>) -> Principal {
        Principal {
            kind: PrincipalKind::ApiKey,
            usage,
            key_id: r.id,
            user_id: r.owner_id,
            user_email: r.owner_email,
            workspace_id: r.workspace_id,
            workspace: r.workspace,
            scopes: r.scopes,
            grants: r.grants,
            role: r.role,
            expires_at: r.expires_at,
            generation: r.generation,
        }
    }

    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at.is_some_and(|e| e <= now_ms)
    }
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub style: KeyStyle,
    pub cache_ttl: Duration,
    pub cache_capacity: u64,
    /// Failed authentications per address and minute before the address is answered 429.
    pub failures_per_minute: u32,
    /// Requests refused 403 per address and minute before the address is answered 429.
    pub forbidden_per_minute: u32,
}

pub struct Identity {
    store: Store,
    style: KeyStyle,
    pepper: Pepper,
    principals: Cache<[u8; 32], Arc<Principal>>,
    unknown: Cache<[u8; 32], ()>,
    generations: Cache<String, i64>,
    failures: DefaultKeyedRateLimiter<IpAddr>,
    forbidden: DefaultKeyedRateLimiter<IpAddr>,
    blocked: Cache<IpAddr, Instant>,
    usage: Arc<UsageRecorder>,
    metrics: Arc<Metrics>,
}

impl Identity {
    pub fn new(
        store: Store,
        pepper: Pepper,
        config: &IdentityConfig,
        usage: Arc<UsageRecorder>,
        metrics: Arc<Metrics>,
    ) -> Identity {
        let per_minute = |n: u32| Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        Identity {
            store,
            style: config.style.clone(),
            pepper,
            principals: Cache::builder()
                .max_capacity(config.cache_capacity)
                .time_to_live(config.cache_ttl)
                .build(),
            unknown: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
            generations: Cache::builder().max_capacity(1_000_000).build(),
            failures: DefaultKeyedRateLimiter::keyed(per_minute(config.failures_per_minute)),
            forbidden: DefaultKeyedRateLimiter::keyed(per_minute(config.forbidden_per_minute)),
            blocked: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            usage,
            metrics,
        }
    }

    pub fn style(&self) -> &KeyStyle {
        &self.style
    }

    pub fn pepper(&self) -> &Pepper {
        &self.pepper
    }

    /// 429 when requests from `addr` have been refused (401, 403) too often lately.
    pub fn check_address(&self, addr: Option<IpAddr>) -> Result<(), Refusal> {
        let Some(addr) = addr else { return Ok(()) };
        match self.blocked.get(&addr) {
            Some(until) => {
                let now = Instant::now();
                if until > now {
                    self.metrics
                        .rate_limited
                        .with_label_values(&["address", "failures"])
                        .inc();
                    Err(Refusal::RateLimited {
                        retry_after_secs: (until - now).as_secs().max(1),
                    })
                } else {
                    self.blocked.invalidate(&addr);
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// Counts a failed authentication against `addr`.
    pub fn record_failure(&self, addr: Option<IpAddr>, reason: AuthFailure) {
        self.metrics
            .auth_failures
            .with_label_values(&[reason.as_str()])
            .inc();
        if let Some(addr) = addr {
            self.throttle(addr, &self.failures);
        }
    }

    /// Counts a request refused 403 against `addr`: an address that keeps probing for paths
    /// it may not touch is answered 429 for a while, like one that guesses keys.
    pub fn record_forbidden(&self, addr: Option<IpAddr>) {
        if let Some(addr) = addr {
            self.throttle(addr, &self.forbidden);
        }
    }

    fn throttle(&self, addr: IpAddr, limiter: &DefaultKeyedRateLimiter<IpAddr>) {
        if let Err(not_until) = limiter.check_key(&addr) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            self.blocked
                .insert(addr, Instant::now() + wait.max(Duration::from_secs(1)));
        }
    }

    /// The identity stage.
    pub async fn authenticate(&self, creds: &Credentials) -> Result<Arc<Principal>, Refusal> {
        let Credentials::ApiKey(key) = creds;
        if !self.style.is_well_formed(key) {
            return Err(Refusal::Unauthorized(AuthFailure::Malformed));
        }
        let hash = self.pepper.hash(key);
        if let Some(p) = self.principals.get(&hash) {
            if self.generations.get(&p.key_id) == Some(p.generation) {
                self.metrics
                    .identity_cache
                    .with_label_values(&["hit"])
                    .inc();
                return self.admit(p);
            }
            self.principals.invalidate(&hash);
        }
        if self.unknown.contains_key(&hash) {
            self.metrics
                .identity_cache
                .with_label_values(&["negative_hit"])
                .inc();
            return Err(Refusal::Unauthorized(AuthFailure::Unknown));
        }
        self.metrics
            .identity_cache
            .with_label_values(&["miss"])
            .inc();
        // A lookup that raced a change (the table moved past what we read) is read again.
        for _ in 0..3 {
            self.metrics.identity_db_lookups.inc();
            let found = self
                .store
                .key_by_hash(&crate::keys::hex(&hash))
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "identity lookup failed");
                    Refusal::Unavailable("keygate cannot check credentials right now".into())
                })?;
            let Some((record, stored)) = found else {
                self.unknown.insert(hash, ());
                return Err(Refusal::Unauthorized(AuthFailure::Unknown));
            };
            if !bool::from(stored.as_bytes().ct_eq(crate::keys::hex(&hash).as_bytes())) {
                return Err(Refusal::Unauthorized(AuthFailure::Unknown));
            }
            if record.revoked_at.is_some() {
                return Err(Refusal::Unauthorized(AuthFailure::Revoked));
            }
            let current = self.observe(&record.id, record.generation);
            if current != record.generation {
                continue;
            }
            let principal = Arc::new(self.principal(record));
            self.principals.insert(hash, principal.clone());
            return self.admit(principal);
        }
        Err(Refusal::Unavailable(
            "the credential is changing; try again".into(),
        ))
    }

    fn admit(&self, p: Arc<Principal>) -> Result<Arc<Principal>, Refusal> {
        if p.is_expired(now_millis()) {
            return Err(Refusal::Unauthorized(AuthFailure::Expired));
        }
        Ok(p)
    }

    /// True while `p` is still the current version of its key (checked again just before a
    /// request is forwarded, so a revoke that returned has stopped every later forward).
    pub fn is_current(&self, p: &Principal) -> bool {
        self.generations.get(&p.key_id) == Some(p.generation) && !p.is_expired(now_millis())
    }

    /// Records that `key_id` has reached `generation`; returns the newest generation known.
    pub fn observe(&self, key_id: &str, generation: i64) -> i64 {
        *self
            .generations
            .entry(key_id.to_owned())
            .and_upsert_with(|old| old.map_or(generation, |o| (*o.value()).max(generation)))
            .value()
    }

    fn principal(&self, r: KeyRecord) -> Principal {
        let usage = self.usage.counters(&r.id);
        Principal::from_key(r, usage)
    }

    /// Follows key changes made by other processes (the CLI, other instances) by polling,
    /// every `interval`, until `shutdown` turns true.
    pub async fn follow_changes(
        self: Arc<Self>,
        interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        // Re-read a window before the newest change seen: a transaction that committed late
        // with an earlier timestamp is still picked up. Applying a generation twice is harmless.
        const OVERLAP_MS: i64 = 5_000;
        let mut since = now_millis() - OVERLAP_MS;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            match self.store.keys_changed_since(since - OVERLAP_MS).await {
                Ok((changes, newest)) => {
                    for (id, generation) in changes {
                        self.observe(&id, generation);
                    }
                    since = since.max(newest);
                }
                Err(e) => tracing::warn!(error = %e, "cannot poll key changes"),
            }
        }
    }
}
