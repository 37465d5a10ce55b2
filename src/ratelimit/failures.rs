//! The failure limiters: answer 429 to whoever keeps failing. Per client address for failed
//! authentications and for requests refused 403 (the [`AddressGate`] both planes pass first),
//! per account and per address for failed logins.
//!
//! Shared by several instances through Redis when `[rate_limit] backend = "redis"`
//! (`shared.rs`).
//!
//! May import: `refusal`, `telemetry`, `model`, `clock`. Never `identity` or `policy`.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use super::shared::Shared;
use crate::refusal::{AuthFailure, Refusal};
use crate::telemetry::Metrics;

/// A key of a failure limiter as Redis and the published blocks spell it.
pub trait LimiterKey: Hash + Eq + Clone + Send + Sync + 'static {
    fn text(&self) -> String;
    fn parse(text: &str) -> Option<Self>;
}

impl LimiterKey for IpAddr {
    fn text(&self) -> String {
        self.to_string()
    }
    fn parse(text: &str) -> Option<IpAddr> {
        text.parse().ok()
    }
}

impl LimiterKey for [u8; 16] {
    fn text(&self) -> String {
        crate::model::hex(self)
    }
    fn parse(text: &str) -> Option<[u8; 16]> {
        let mut out = [0u8; 16];
        if text.len() != 32 {
            return None;
        }
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(out)
    }
}

impl LimiterKey for String {
    fn text(&self) -> String {
        self.clone()
    }
    fn parse(text: &str) -> Option<String> {
        Some(text.to_owned())
    }
}

/// Counts failures per key; a key over its quota is answered 429 until the quota refills.
///
/// The counters live in a bounded table: at most `capacity` keys, each idle key dropped once its
/// quota would have refilled anyway, so a flood of fresh keys costs bounded memory. When the
/// table is full the least recently failing key makes room: every new key is counted, and
/// only a flood of more than `capacity` fresh failures between two guesses can reset a
/// partly used count (each of those failures costs its sender a password verification or a
/// lookup, throttled per address). Keys must be of bounded size (an address, or a hash of
/// client-chosen text).
///
/// Shared through Redis (`shared.rs`), failures are counted there against the whole quota and
/// blocks are applied by every instance; the local counters then hold this instance's share of
/// the quota, used while Redis is unreachable.
pub struct FailureLimiter<K: LimiterKey> {
    local: Local<K>,
    shared: Option<SharedFailures>,
    /// Shared through Redis: the whole quota counted here too, at once, so that failures
    /// arriving faster than Redis answers never exceed it on one instance.
    backstop: Option<Local<K>>,
}

/// The counters and blocks of this instance.
struct Local<K: LimiterKey> {
    quota: Quota,
    counters: Cache<K, Arc<DefaultDirectRateLimiter>>,
    blocked: Cache<K, Instant>,
}

impl<K: LimiterKey> Clone for Local<K> {
    fn clone(&self) -> Local<K> {
        Local {
            quota: self.quota,
            counters: self.counters.clone(),
            blocked: self.blocked.clone(),
        }
    }
}

struct SharedFailures {
    name: &'static str,
    shared: Arc<Shared>,
    interval_ms: u64,
    burst: u32,
    /// Failures being counted in Redis at once, at most; more are counted locally.
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// Failures counted in Redis at once, per limiter.
const MAX_SHARED_IN_FLIGHT: usize = 1024;

impl<K: LimiterKey> Local<K> {
    fn block(&self, key: K, wait: Duration) {
        self.blocked
            .insert(key, Instant::now() + wait.max(Duration::from_secs(1)));
    }

    fn fail(&self, key: &K) -> bool {
        let counter = self
            .counters
            .get_with(key.clone(), || Arc::new(RateLimiter::direct(self.quota)));
        match counter.check() {
            Ok(()) => false,
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                self.block(key.clone(), wait);
                true
            }
        }
    }
}

impl<K: LimiterKey> FailureLimiter<K> {
    pub fn new(quota: Quota, capacity: u64) -> FailureLimiter<K> {
        FailureLimiter::with_shared(quota, capacity, None)
    }

    /// A limiter whose failures count across instances through `shared` (under `name`, which
    /// names it in Redis keys and published blocks), when given.
    pub fn with_shared(
        quota: Quota,
        capacity: u64,
        shared: Option<(&'static str, Arc<Shared>)>,
    ) -> FailureLimiter<K> {
        // This instance's share while Redis is unreachable.
        let local_quota = match &shared {
            Some((_, s)) if s.instances > 1 => {
                let burst = (quota.burst_size().get() / s.instances).max(1);
                Quota::with_period(quota.replenish_interval() * s.instances)
                    .unwrap_or(quota)
                    .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN))
            }
            _ => quota,
        };
        let refill = quota.replenish_interval() * quota.burst_size().get();
        let local = Local {
            quota: local_quota,
            // LRU, not moka's default TinyLFU: once full, TinyLFU may refuse to admit a new
            // key, and a key that is never stored is never counted (an attacker would fill
            // the table first, then guess freely). LRU always admits the newest key.
            counters: Cache::builder()
                .max_capacity(capacity)
                .eviction_policy(EvictionPolicy::lru())
                .time_to_idle(
                    (local_quota.replenish_interval() * local_quota.burst_size().get())
                        .max(refill)
                        .max(Duration::from_secs(1)),
                )
                .build(),
            blocked: Cache::builder()
                .max_capacity(capacity)
                .eviction_policy(EvictionPolicy::lru())
                .time_to_live(Duration::from_secs(3600))
                .build(),
        };
        let shared = shared.map(|(name, shared)| {
            let blocks = local.clone();
            shared.register(
                name,
                Arc::new(move |text: &str, until_ms: u64| {
                    if let Some(key) = K::parse(text) {
                        let now = u64::try_from(crate::clock::now_millis()).unwrap_or(0);
                        blocks.block(key, Duration::from_millis(until_ms.saturating_sub(now)));
                    }
                }),
            );
            SharedFailures {
                name,
                shared,
                interval_ms: u64::try_from(quota.replenish_interval().as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
                burst: quota.burst_size().get(),
                in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_SHARED_IN_FLIGHT)),
            }
        });
        let backstop = shared.as_ref().map(|_| Local {
            quota,
            counters: Cache::builder()
                .max_capacity(capacity)
                .eviction_policy(EvictionPolicy::lru())
                .time_to_idle(refill.max(Duration::from_secs(1)))
                .build(),
            blocked: local.blocked.clone(),
        });
        FailureLimiter {
            local,
            shared,
            backstop,
        }
    }

    /// 429 while `key` is blocked.
    pub fn check(&self, key: &K) -> Result<(), Refusal> {
        match self.local.blocked.get(key) {
            Some(until) if until > Instant::now() => Err(Refusal::RateLimited {
                retry_after_secs: (until - Instant::now()).as_secs().max(1),
            }),
            Some(_) => {
                self.local.blocked.invalidate(key);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a failure; returns true when `key` is now blocked. Shared through Redis, the
    /// count is made in the background (the block reaches every instance within a round
    /// trip), and this instance's own count of the whole quota says.
    pub fn fail(&self, key: &K) -> bool {
        if let Some(s) = self.shared.as_ref().filter(|s| s.shared.is_up()) {
            let handle = tokio::runtime::Handle::try_current();
            let permit = s.in_flight.clone().try_acquire_owned();
            if let (Ok(handle), Ok(permit)) = (handle, permit) {
                let blocked = self.backstop.as_ref().is_some_and(|b| b.fail(key));
                let (shared, name, local) = (s.shared.clone(), s.name, self.local.clone());
                let (interval_ms, burst, key) = (s.interval_ms, s.burst, key.clone());
                handle.spawn(async move {
                    let _permit = permit;
                    match shared
                        .count_failure(name, &key.text(), interval_ms, burst)
                        .await
                    {
                        Some(0) => {}
                        Some(wait) => local.block(key, Duration::from_millis(wait)),
                        None => {
                            local.fail(&key);
                        }
                    }
                });
                return blocked;
            }
        }
        self.local.fail(key)
    }

    /// Before an attempt whose failure counts (a login), shared through Redis: takes the failure
    /// now, so that attempts on every instance at once are each counted before any is tried
    /// (429 when the quota is used up). True when taken: give it back with `refund` if the
    /// attempt succeeds. False: nothing taken (Redis is not in use), count a failure with
    /// `fail_now` as without Redis.
    pub async fn take(&self, key: &K) -> Result<bool, Refusal> {
        let Some(s) = self.shared.as_ref().filter(|s| s.shared.is_up()) else {
            return Ok(false);
        };
        // Counted after it, a failure over the quota is still tried (the quota's last attempt
        // is the one that finds it used up); taken before, that attempt takes one more.
        match s
            .shared
            .count_failure(s.name, &key.text(), s.interval_ms, s.burst + 1)
            .await
        {
            Some(0) => Ok(true),
            Some(wait) => {
                let wait = Duration::from_millis(wait);
                self.local.block(key.clone(), wait);
                Err(Refusal::RateLimited {
                    retry_after_secs: wait.as_secs().max(1),
                })
            }
            None => Ok(false),
        }
    }

    /// Gives back a failure `take` took (the attempt succeeded, or never tried the password),
    /// in the background: callable from `Drop`, so that an attempt cut short gives it back too.
    pub fn give_back(&self, key: &K) {
        let Some(s) = &self.shared else { return };
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (shared, name, interval_ms, text) =
            (s.shared.clone(), s.name, s.interval_ms, key.text());
        handle.spawn(async move {
            shared.refund_failure(name, &text, interval_ms).await;
        });
    }

    /// Counts a failure and waits for the count (shared through Redis, the round trip);
    /// returns true when `key` is now blocked.
    pub async fn fail_now(&self, key: &K) -> bool {
        if let Some(s) = self.shared.as_ref().filter(|s| s.shared.is_up()) {
            match s
                .shared
                .count_failure(s.name, &key.text(), s.interval_ms, s.burst)
                .await
            {
                Some(0) => return false,
                Some(wait) => {
                    self.local.block(key.clone(), Duration::from_millis(wait));
                    return true;
                }
                None => {}
            }
        }
        self.local.fail(key)
    }

    /// Keys held (counters and blocks), for the metrics; settles pending evictions first.
    pub fn entries(&self) -> u64 {
        self.run_pending_tasks();
        self.local.counters.entry_count() + self.local.blocked.entry_count()
    }

    /// Applies the caches' deferred bookkeeping now (see `Keygate::run_pending_cache_tasks`).
    pub fn run_pending_tasks(&self) {
        self.local.counters.run_pending_tasks();
        self.local.blocked.run_pending_tasks();
    }
}

/// The bucket an address is counted in: itself for IPv4, its /64 for IPv6 (one subscriber
/// usually holds a whole /64, so counting single IPv6 addresses would be no limit at all).
pub fn address_bucket(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The key of client-chosen text (an email): a fixed-size hash, so the table's memory does not
/// depend on what clients send.
pub fn text_key(text: &str) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(text.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// The per-address gate in front of authentication: an address whose requests were refused
/// 401 or 403 too often lately is answered 429 before any credential is looked at.
pub struct AddressGate {
    failures: FailureLimiter<IpAddr>,
    forbidden: FailureLimiter<IpAddr>,
    metrics: Arc<Metrics>,
}

impl AddressGate {
    /// Applies both limiters' deferred cache bookkeeping now.
    pub fn run_pending_tasks(&self) {
        self.failures.run_pending_tasks();
        self.forbidden.run_pending_tasks();
    }

    /// `failures_per_minute` failed authentications, `forbidden_per_minute` refusals (403),
    /// at most `capacity` addresses tracked by each.
    pub fn new(
        failures_per_minute: u32,
        forbidden_per_minute: u32,
        capacity: u64,
        shared: Option<Arc<Shared>>,
        metrics: Arc<Metrics>,
    ) -> AddressGate {
        let per_minute = |n: u32| Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        let share = |name: &'static str| shared.clone().map(|s| (name, s));
        AddressGate {
            failures: FailureLimiter::with_shared(
                per_minute(failures_per_minute),
                capacity,
                share("address-failures"),
            ),
            forbidden: FailureLimiter::with_shared(
                per_minute(forbidden_per_minute),
                capacity,
                share("address-forbidden"),
            ),
            metrics,
        }
    }

    /// Addresses tracked (failure and 403 counters), for the metrics.
    pub fn entries(&self) -> u64 {
        self.failures.entries() + self.forbidden.entries()
    }

    /// 429 when requests from `addr` have been refused (401, 403) too often lately.
    pub fn check(&self, addr: Option<IpAddr>) -> Result<(), Refusal> {
        let Some(addr) = addr.map(address_bucket) else {
            return Ok(());
        };
        self.failures
            .check(&addr)
            .and_then(|()| self.forbidden.check(&addr))
            .inspect_err(|_| {
                self.metrics
                    .rate_limited
                    .with_label_values(&["address", "failures"])
                    .inc();
            })
    }

    /// Counts a failed authentication against `addr`.
    pub fn record_failure(&self, addr: Option<IpAddr>, reason: AuthFailure) {
        self.metrics
            .auth_failures
            .with_label_values(&[reason.as_str()])
            .inc();
        if let Some(addr) = addr {
            self.failures.fail(&address_bucket(addr));
        }
    }

    /// Counts a request refused 403 against `addr`: an address that keeps probing for paths
    /// it may not touch is answered 429 for a while, like one that guesses keys.
    pub fn record_forbidden(&self, addr: Option<IpAddr>) {
        if let Some(addr) = addr {
            self.forbidden.fail(&address_bucket(addr));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_limiter_blocks_after_its_burst() {
        let limiter = FailureLimiter::new(Quota::per_hour(NonZeroU32::new(2).unwrap()), 100);
        let k = "ada@example.com".to_owned();
        assert!(limiter.check(&k).is_ok());
        assert!(!limiter.fail(&k));
        assert!(!limiter.fail(&k));
        assert!(limiter.fail(&k));
        assert!(matches!(
            limiter.check(&k),
            Err(Refusal::RateLimited { retry_after_secs }) if retry_after_secs > 1
        ));
        assert!(limiter.check(&"bob@example.com".to_owned()).is_ok());
    }

    #[test]
    fn a_flood_of_fresh_keys_stays_within_capacity() {
        let limiter = FailureLimiter::new(Quota::per_hour(NonZeroU32::new(2).unwrap()), 50);
        for i in 0..5_000 {
            limiter.fail(&text_key(&format!("attacker-{i}@example.com")));
        }
        assert!(limiter.entries() <= 2 * 50, "{} entries", limiter.entries());
        // The limiter still counts: a key that keeps failing is blocked at its third failure.
        let victim = text_key("ada@example.com");
        assert!(!limiter.fail(&victim));
        assert!(!limiter.fail(&victim));
        assert!(limiter.fail(&victim));
        assert!(limiter.check(&victim).is_err());
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_bucket(a), address_bucket(b));
        assert_ne!(address_bucket(a), address_bucket(other));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            address_bucket(mapped),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failures_counted_in_redis_at_once_are_bounded_and_the_rest_count_here() {
        use super::super::shared::SharedConfig;
        // A Redis that takes connections and never answers: every count stays in flight (for
        // the 250 ms a call may take).
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let shared = Shared::new(
            &SharedConfig {
                url: format!("redis://{}", silent.local_addr().unwrap()),
                instances: 3,
                prefix: "test".into(),
            },
            Arc::new(Metrics::new()),
        )
        .unwrap();
        shared.mark_up();
        let limiter = FailureLimiter::<String>::with_shared(
            Quota::per_minute(NonZeroU32::new(30).unwrap()),
            10_000,
            Some(("test", shared)),
        );
        for i in 0..MAX_SHARED_IN_FLIGHT {
            assert!(!limiter.fail(&format!("client-{i}")));
        }
        let in_flight = &limiter.shared.as_ref().unwrap().in_flight;
        assert_eq!(in_flight.available_permits(), 0);
        // Every permit is held: the next failures are counted here, against this instance's
        // share of the quota (30 / 3 instances), and the eleventh in a row is blocked.
        let key = "one more".to_owned();
        let blocked: Vec<bool> = (0..11).map(|_| limiter.fail(&key)).collect();
        assert_eq!(blocked.iter().filter(|b| **b).count(), 1, "{blocked:?}");
        assert!(blocked[10]);
        assert!(limiter.check(&key).is_err());
    }
}
