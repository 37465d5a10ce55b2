//! The failure limiters: answer 429 to whoever keeps failing. Per client address for failed
//! authentications and for requests refused 403 (the [`AddressGate`] both planes pass first),
//! per account and per address for failed logins.
//!
//! May import: `refusal`, `telemetry`, `model`. Never `identity` or `policy`.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota};
use moka::sync::Cache;

use crate::refusal::{AuthFailure, Refusal};
use crate::telemetry::Metrics;

/// Counts failures per key; a key over its quota is answered 429 until the quota refills.
pub struct FailureLimiter<K: Hash + Eq + Clone + Send + Sync + 'static> {
    limiter: DefaultKeyedRateLimiter<K>,
    blocked: Cache<K, Instant>,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> FailureLimiter<K> {
    pub fn new(quota: Quota) -> FailureLimiter<K> {
        FailureLimiter {
            limiter: DefaultKeyedRateLimiter::keyed(quota),
            blocked: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }

    /// 429 while `key` is blocked.
    pub fn check(&self, key: &K) -> Result<(), Refusal> {
        match self.blocked.get(key) {
            Some(until) if until > Instant::now() => Err(Refusal::RateLimited {
                retry_after_secs: (until - Instant::now()).as_secs().max(1),
            }),
            Some(_) => {
                self.blocked.invalidate(key);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a failure; returns true when `key` is now blocked.
    pub fn fail(&self, key: &K) -> bool {
        match self.limiter.check_key(key) {
            Ok(()) => false,
            Err(not_until) => {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                self.blocked.insert(
                    key.clone(),
                    Instant::now() + wait.max(Duration::from_secs(1)),
                );
                true
            }
        }
    }
}

/// The per-address gate in front of authentication: an address whose requests were refused
/// 401 or 403 too often lately is answered 429 before any credential is looked at.
pub struct AddressGate {
    failures: FailureLimiter<IpAddr>,
    forbidden: FailureLimiter<IpAddr>,
    metrics: Arc<Metrics>,
}

impl AddressGate {
    /// `failures_per_minute` failed authentications, `forbidden_per_minute` refusals (403).
    pub fn new(
        failures_per_minute: u32,
        forbidden_per_minute: u32,
        metrics: Arc<Metrics>,
    ) -> AddressGate {
        let per_minute = |n: u32| Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        AddressGate {
            failures: FailureLimiter::new(per_minute(failures_per_minute)),
            forbidden: FailureLimiter::new(per_minute(forbidden_per_minute)),
            metrics,
        }
    }

    /// 429 when requests from `addr` have been refused (401, 403) too often lately.
    pub fn check(&self, addr: Option<IpAddr>) -> Result<(), Refusal> {
        let Some(addr) = addr else { return Ok(()) };
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
            self.failures.fail(&addr);
        }
    }

    /// Counts a request refused 403 against `addr`: an address that keeps probing for paths
    /// it may not touch is answered 429 for a while, like one that guesses keys.
    pub fn record_forbidden(&self, addr: Option<IpAddr>) {
        if let Some(addr) = addr {
            self.forbidden.fail(&addr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_limiter_blocks_after_its_burst() {
        let limiter = FailureLimiter::new(Quota::per_hour(NonZeroU32::new(2).unwrap()));
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
}
