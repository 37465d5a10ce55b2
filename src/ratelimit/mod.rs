//! Stage 4, rate limit: a sliding-window counter per principal and rule.
//!
//! Each principal gets `limit` requests per `window`. Windows are aligned to the Unix epoch, so
//! `X-RateLimit-Reset` is the same instant for every client. A request is admitted while
//!
//! ```text
//!   ⌊previous × (window − elapsed) / window⌋ + current  <  limit
//! ```
//!
//! where `previous` and `current` count the admitted requests of the last and the current
//! window. This is the sliding-window counter (as Cloudflare and Kong's advanced limiter use):
//! no fixed window ever admits more than `limit`, and the boundary burst of a plain fixed window
//! (2 × limit in a moment) is smoothed away. The check and the increment happen under one lock
//! per principal and rule, so concurrent requests on one key cannot overshoot.
//!
//! GCRA (governor) was the alternative; with a burst of `limit` it admits up to 2 × limit in the
//! first window of a fresh key, which breaks the "N per window" promise the headers make.
//!
//! Rules from the config override the default by action, scope, workspace or key; the first
//! rule that matches a request decides its limit and gives it a counter of its own.
//!
//!
//! `failures.rs` holds the failure limiters (per address, per account) both planes use;
//! `shared.rs` shares the windows and the failure limiters of several instances through Redis.
//!
//! May import: `principal`, `refusal`, `telemetry`, `model`, `clock`, `background`. Never
//! `identity` or `policy`.

pub mod failures;
pub mod shared;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::sync::Cache;

use crate::principal::{Principal, PrincipalKind};
use crate::refusal::Refusal;
use crate::telemetry::Metrics;
use shared::{Counted, Shared, SharedConfig, WindowCall};

/// `requests` per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub requests: u32,
    pub window: Duration,
}

impl Limit {
    /// Parses `1000/min`, `20/s`, `5000/hour`, `100/10s`, `50000/day`.
    pub fn parse(raw: &str) -> Result<Limit, String> {
        let bad = || format!("'{raw}' is not a limit such as '1000/min' or '100/10s'");
        let (n, per) = raw.split_once('/').ok_or_else(bad)?;
        let requests: u32 = n.trim().parse().map_err(|_| bad())?;
        if requests == 0 {
            return Err(format!("'{raw}': the limit must be at least 1 request"));
        }
        let per = per.trim();
        let window = match per {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            other => humantime::parse_duration(other).map_err(|_| bad())?,
        };
        if window.as_millis() < 1000 || window.as_millis() % 1000 != 0 {
            return Err(format!("'{raw}': the window must be whole seconds"));
        }
        Ok(Limit { requests, window })
    }
}

/// Which requests a rule applies to; every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleMatch {
    pub action: Option<String>,
    pub scope: Option<String>,
    pub workspace: Option<String>,
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Names the rule in headers (`RateLimit-Policy`) and metrics.
    pub name: String,
    pub matches: RuleMatch,
    pub limit: Limit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// `None`: no per-principal limit.
    pub default: Option<Limit>,
    pub rules: Vec<Rule>,
    /// `backend = "redis"`: limits shared by every instance.
    pub shared: Option<SharedConfig>,
}

impl Default for RateLimitConfig {
    fn default() -> RateLimitConfig {
        RateLimitConfig {
            default: Some(Limit {
                requests: 1000,
                window: Duration::from_secs(60),
            }),
            rules: Vec::new(),
            shared: None,
        }
    }
}

/// Where a principal stands after an admitted request; becomes the rate-limit headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub policy: Arc<str>,
    pub limit: u32,
    pub remaining: u32,
    pub window_secs: u64,
    /// Unix seconds at which the current window ends.
    pub reset_at: u64,
    /// Seconds until then.
    pub reset_in: u64,
}

impl Standing {
    /// `X-RateLimit-*` and the IETF `RateLimit-Policy` / `RateLimit` structured fields,
    /// rendered without the formatting machinery (they go out on every response).
    pub fn headers(&self) -> [(&'static str, http::HeaderValue); 5] {
        let structured = |a: &str, x: u64, b: &str, y: u64| {
            let mut s = String::with_capacity(self.policy.len() + 32);
            let mut n = itoa::Buffer::new();
            s.push('"');
            s.push_str(&self.policy);
            s.push_str(a);
            s.push_str(n.format(x));
            s.push_str(b);
            s.push_str(n.format(y));
            // A policy name is a rule's name from the configuration, checked to be a token.
            http::HeaderValue::try_from(s).unwrap_or(http::HeaderValue::from_static(""))
        };
        [
            ("x-ratelimit-limit", self.limit.into()),
            ("x-ratelimit-remaining", self.remaining.into()),
            ("x-ratelimit-reset", self.reset_at.into()),
            (
                "ratelimit-policy",
                structured("\";q=", self.limit.into(), ";w=", self.window_secs),
            ),
            (
                "ratelimit",
                structured("\";r=", self.remaining.into(), ";t=", self.reset_in),
            ),
        ]
    }
}

/// One principal under one rule: its window on this instance, and its lease of a shared one.
#[derive(Debug, Default)]
struct Slot {
    /// Counted here (without Redis, or while Redis is unreachable).
    local: Window,
    lease: Lease,
}

/// Where this instance stands on a window shared through Redis.
#[derive(Debug, Default)]
struct Lease {
    /// The window of the last round trip (ms since the epoch, by Redis's clock).
    start: u64,
    /// The sliding count Redis answered then.
    known: u64,
    /// Requests admitted here since, not yet added in Redis.
    pending: u64,
    /// Redis refused the last request until then: later ones are refused here, without a round
    /// trip (a client hammering past its limit does not hammer Redis).
    refused_until: Option<std::time::Instant>,
}

/// The counts of one principal under one rule.
#[derive(Debug, Default)]
struct Window {
    /// Start of the current window, in ms since the epoch (a multiple of the window).
    start: u64,
    current: u64,
    previous: u64,
}

impl Window {
    /// Admits one request at `now_ms` or says how many ms to wait.
    fn check(&mut self, limit: u64, window_ms: u64, now_ms: u64) -> Result<u64, u64> {
        let start = now_ms - now_ms % window_ms;
        if start != self.start {
            self.previous = if start == self.start + window_ms {
                self.current
            } else {
                0
            };
            self.current = 0;
            self.start = start;
        }
        let elapsed = now_ms - start;
        let used = self.weighted_previous(window_ms, elapsed) + self.current;
        if used < limit {
            self.current += 1;
            Ok(limit - used - 1)
        } else {
            Err(self.wait_ms(limit, window_ms, elapsed))
        }
    }

    /// The previous window's count, weighted by how much of it the sliding window still
    /// covers, rounded down.
    fn weighted_previous(&self, window_ms: u64, elapsed: u64) -> u64 {
        self.previous * (window_ms - elapsed) / window_ms
    }

    /// The shortest wait after which one more request fits.
    fn wait_ms(&self, limit: u64, window_ms: u64, elapsed: u64) -> u64 {
        let left = window_ms - elapsed;
        // Within this window the previous count's weight shrinks with every ms; one more fits
        // once previous × (left − t) < (limit − current) × window.
        if self.current < limit && self.previous > 0 {
            let room = (limit - self.current) * window_ms - 1;
            let t = left.saturating_sub(room / self.previous);
            if t < left {
                return t.max(1);
            }
        }
        // In the next window this window's count becomes the previous one: one more fits once
        // current × (window − e) < limit × window.
        let next = (limit * window_ms - 1)
            .checked_div(self.current)
            .map_or(0, |fits| window_ms.saturating_sub(fits));
        left + next
    }
}

/// The rate-limit stage.
pub struct RateLimiter {
    config: RateLimitConfig,
    /// The name of each rule, then `default`: what `RateLimit-Policy` and the metrics say.
    policies: Vec<Arc<str>>,
    /// Per principal, one counter per rule and a last one for the default; looked up by the
    /// principal's id without allocating. Idle principals are dropped after two of the longest
    /// windows.
    windows: Cache<String, Arc<[Mutex<Slot>]>>,
    /// Redis, with `backend = "redis"`.
    shared: Option<Arc<Shared>>,
    metrics: Arc<Metrics>,
}

impl RateLimiter {
    /// Applies the cache's deferred bookkeeping now (see `Keygate::run_pending_cache_tasks`).
    pub fn run_pending_cache_tasks(&self) {
        self.windows.run_pending_tasks();
    }

    pub fn new(config: RateLimitConfig, metrics: Arc<Metrics>) -> RateLimiter {
        let longest = config
            .rules
            .iter()
            .map(|r| r.limit.window)
            .chain(config.default.map(|d| d.window))
            .max()
            .unwrap_or(Duration::from_secs(60));
        let policies = config
            .rules
            .iter()
            .map(|r| Arc::from(r.name.as_str()))
            .chain([Arc::from("default")])
            .collect();
        RateLimiter {
            config,
            policies,
            windows: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(longest * 2 + Duration::from_secs(1))
                .build(),
            shared: None,
            metrics,
        }
    }

    /// Shares the windows of every instance through `shared`.
    pub fn with_shared(mut self, shared: Option<Arc<Shared>>) -> RateLimiter {
        self.shared = shared;
        self
    }

    /// The rule a request falls under: the first that matches, else the default.
    fn rule_for(&self, principal: &Principal, action: &str) -> Option<(usize, Limit)> {
        let found = self.config.rules.iter().position(|r| {
            let m = &r.matches;
            m.action.as_deref().is_none_or(|a| a == action)
                && m.workspace
                    .as_deref()
                    .is_none_or(|w| w == principal.workspace)
                && m.key.as_deref().is_none_or(|k| k == principal.key_id)
                && m.scope
                    .as_deref()
                    .is_none_or(|s| principal.scopes.iter().any(|p| p == s))
        });
        match found {
            Some(i) => Some((i, self.config.rules[i].limit)),
            None => self.config.default.map(|d| (self.config.rules.len(), d)),
        }
    }

    /// Counts one request of `principal` for `action`: its standing, or 429 with the wait.
    /// `Ok(None)` when no limit applies.
    pub async fn check(
        &self,
        principal: &Principal,
        action: &str,
    ) -> Result<Option<Standing>, (Refusal, Option<Standing>)> {
        self.check_actions(principal, &[action]).await
    }

    /// Counts one request that needs every one of `actions` (a GraphQL operation's fields):
    /// once against each distinct rule they fall under, so a rule on one action holds whatever
    /// else the request asks for, and the default is charged once. The standing returned is
    /// the tightest; the first rule over its limit refuses.
    pub async fn check_actions(
        &self,
        principal: &Principal,
        actions: &[&str],
    ) -> Result<Option<Standing>, (Refusal, Option<Standing>)> {
        let mut rules: Vec<(usize, Limit)> = Vec::with_capacity(1);
        for action in actions {
            if let Some(found) = self.rule_for(principal, action) {
                if !rules.iter().any(|(r, _)| *r == found.0) {
                    rules.push(found);
                }
            }
        }
        let mut tightest: Option<Standing> = None;
        for (rule, limit) in rules {
            let standing = self.charge(principal, rule, limit).await?;
            if tightest
                .as_ref()
                .is_none_or(|t| standing.remaining < t.remaining)
            {
                tightest = Some(standing);
            }
        }
        Ok(tightest)
    }

    async fn charge(
        &self,
        principal: &Principal,
        rule: usize,
        limit: Limit,
    ) -> Result<Standing, (Refusal, Option<Standing>)> {
        let subject = principal_subject(principal);
        let slots = self.windows.get_with_by_ref(subject, || {
            (0..self.policies.len())
                .map(|_| Mutex::new(Slot::default()))
                .collect()
        });
        let now = u64::try_from(crate::clock::now_millis()).unwrap_or(0);
        let window_ms = limit.window.as_millis() as u64;
        let mut requests = u64::from(limit.requests);
        let mut result = None;
        if let Some(shared) = &self.shared {
            if shared.is_up() {
                result = self
                    .charge_shared(
                        shared,
                        &slots[rule],
                        subject,
                        rule,
                        requests,
                        window_ms,
                        now,
                    )
                    .await;
            }
            if result.is_none() {
                // Redis is unreachable: this instance's share of the limit.
                requests = requests.div_ceil(u64::from(shared.instances)).max(1);
            }
        }
        let result = result.unwrap_or_else(|| {
            let mut s = lock(&slots[rule]);
            if let Some(shared) = &self.shared {
                // Falling back in the middle of a shared window: this instance starts from its
                // share of what the cluster had used, not from nothing.
                let start = now - now % window_ms;
                if s.local.start != start && s.lease.start == start {
                    s.local = Window {
                        start,
                        current: (s.lease.known + s.lease.pending)
                            .div_ceil(u64::from(shared.instances)),
                        previous: 0,
                    };
                }
            }
            s.local.check(requests, window_ms, now)
        });
        let policy = self.policies[rule].clone();
        let reset_ms = now - now % window_ms + window_ms;
        let mut standing = Standing {
            policy,
            limit: requests as u32,
            remaining: 0,
            window_secs: window_ms / 1000,
            reset_at: reset_ms / 1000,
            reset_in: (reset_ms - now).div_ceil(1000),
        };
        match result {
            Ok(remaining) => {
                standing.remaining = remaining.min(requests) as u32;
                Ok(standing)
            }
            Err(wait_ms) => {
                self.metrics
                    .rate_limited
                    .with_label_values(&["principal", &standing.policy])
                    .inc();
                let retry_after_secs = wait_ms.div_ceil(1000).max(1);
                Err((Refusal::RateLimited { retry_after_secs }, Some(standing)))
            }
        }
    }

    /// Counts a request in the window Redis holds: on this instance's own while far from the
    /// limit (`shared.rs` says how far, and what that trades), else by a round trip. `None`
    /// when Redis did not answer.
    #[allow(clippy::too_many_arguments)]
    async fn charge_shared(
        &self,
        shared: &Shared,
        slot: &Mutex<Slot>,
        subject: &str,
        rule: usize,
        limit: u64,
        window_ms: u64,
        now: u64,
    ) -> Option<Result<u64, u64>> {
        let instances = u64::from(shared.instances);
        let batch = limit / (40 * instances);
        let start = now - now % window_ms;
        let (pending_start, pending) = {
            let mut s = lock(slot);
            let lease = &mut s.lease;
            if let Some(until) = lease.refused_until {
                let left = until.saturating_duration_since(std::time::Instant::now());
                if !left.is_zero() {
                    return Some(Err((left.as_millis() as u64).max(1)));
                }
                lease.refused_until = None;
            }
            if batch > 0
                && lease.start == start
                && lease.pending < batch
                && limit.saturating_sub(lease.known + lease.pending) > 2 * instances * batch
            {
                lease.pending += 1;
                return Some(Ok(limit - lease.known - lease.pending));
            }
            (lease.start, std::mem::take(&mut lease.pending))
        };
        let base = format!("{}:rl:{}:{subject}", shared.prefix, self.policies[rule]);
        let counted = shared
            .count_in_window(WindowCall {
                base_key: &base,
                limit,
                window_ms,
                pending,
                pending_start,
                want: true,
            })
            .await;
        let Some(Counted {
            admitted,
            previous,
            current,
            start,
            elapsed,
        }) = counted
        else {
            // Not counted in Redis: kept for the next round trip (or the fallback's seed).
            lock(slot).lease.pending += pending;
            return None;
        };
        let counted = Window {
            start,
            current,
            previous,
        };
        let used = counted.weighted_previous(window_ms, elapsed) + current;
        let mut s = lock(slot);
        s.lease.start = start;
        s.lease.known = used;
        Some(if admitted {
            Ok(limit.saturating_sub(used))
        } else {
            let wait = counted.wait_ms(limit, window_ms, elapsed);
            s.lease.refused_until =
                Some(std::time::Instant::now() + std::time::Duration::from_millis(wait));
            Err(wait)
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whose counters a request uses: the key or token, or for a login the user. Key, token and
/// user ids are all UUIDs, so they never collide.
fn principal_subject(p: &Principal) -> &str {
    match p.kind {
        PrincipalKind::ApiKey | PrincipalKind::ScopedToken => &p.key_id,
        PrincipalKind::Login | PrincipalKind::Operator => &p.user_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_in_the_usual_spellings() {
        let min = Duration::from_secs(60);
        assert_eq!(Limit::parse("1000/min").unwrap().window, min);
        assert_eq!(Limit::parse("1000/minute").unwrap().requests, 1000);
        assert_eq!(
            Limit::parse("100/10s").unwrap().window,
            Duration::from_secs(10)
        );
        assert_eq!(
            Limit::parse("5/hour").unwrap().window,
            Duration::from_secs(3600)
        );
        for bad in ["", "1000", "0/min", "x/min", "10/fortnightish", "10/500ms"] {
            assert!(Limit::parse(bad).is_err(), "{bad} parsed");
        }
    }

    fn run(w: &mut Window, limit: u64, window: u64, at: u64, n: usize) -> usize {
        (0..n)
            .filter(|_| w.check(limit, window, at).is_ok())
            .count()
    }

    #[test]
    fn a_fresh_window_admits_exactly_the_limit() {
        let mut w = Window::default();
        assert_eq!(run(&mut w, 100, 60_000, 60_000 * 10 + 5, 500), 100);
        // Remaining counts down to zero.
        let mut w = Window::default();
        assert_eq!(w.check(3, 1000, 0), Ok(2));
        assert_eq!(w.check(3, 1000, 1), Ok(1));
        assert_eq!(w.check(3, 1000, 2), Ok(0));
        assert!(w.check(3, 1000, 3).is_err());
    }

    #[test]
    fn no_fixed_window_admits_more_than_the_limit_and_a_busy_one_admits_it_all() {
        // A client that asks every ms for ten windows.
        let (limit, window) = (50u64, 1000u64);
        let mut w = Window::default();
        let mut per_window = vec![0u64; 10];
        for t in 0..10_000 {
            if w.check(limit, window, t).is_ok() {
                per_window[(t / window) as usize] += 1;
            }
        }
        for (i, n) in per_window.iter().enumerate() {
            assert_eq!(*n, limit, "window {i}: {per_window:?}");
        }
    }

    #[test]
    fn the_boundary_burst_of_a_fixed_window_is_smoothed() {
        let mut w = Window::default();
        // The whole limit at the very end of one window...
        assert_eq!(run(&mut w, 100, 1000, 999, 100), 100);
        // ...leaves almost nothing at the start of the next.
        assert_eq!(run(&mut w, 100, 1000, 1000, 100), 0);
        assert_eq!(run(&mut w, 100, 1000, 1500, 100), 50);
    }

    #[test]
    fn the_wait_is_exact() {
        let mut w = Window::default();
        run(&mut w, 10, 1000, 200, 10);
        let wait = w.check(10, 1000, 300).unwrap_err();
        // The window is full: wait for the next, where 10 × (1000 − e) / 1000 < 10 from e = 1.
        assert_eq!(wait, 700 + 1);
        assert!(w.clone_at(10, 1000, 300 + wait - 1).is_err());
        assert!(w.clone_at(10, 1000, 300 + wait).is_ok());
        // Inside a window where the previous one is shedding weight.
        assert!(w.check(10, 1000, 1001).is_ok());
        let wait = w.check(10, 1000, 1050).unwrap_err();
        assert_eq!(wait, 51);
        assert!(w.clone_at(10, 1000, 1050 + wait - 1).is_err());
        assert!(w.clone_at(10, 1000, 1050 + wait).is_ok());
    }

    impl Window {
        fn clone_at(&self, limit: u64, window: u64, at: u64) -> Result<u64, u64> {
            let mut copy = Window {
                start: self.start,
                current: self.current,
                previous: self.previous,
            };
            copy.check(limit, window, at)
        }
    }

    fn principal(key: &str, workspace: &str, scopes: &[&str]) -> Principal {
        Principal {
            kind: PrincipalKind::ApiKey,
            key_id: key.into(),
            user_id: "u".into(),
            user_email: "u@example.com".into(),
            workspace_id: "w".into(),
            workspace: workspace.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            grants: None,
            role: None,
            expires_at: None,
            generation: 1,
            usage: Arc::default(),
        }
    }

    #[tokio::test]
    async fn a_request_needing_several_actions_is_charged_once_per_rule() {
        let limit = |n| Limit {
            requests: n,
            window: Duration::from_secs(60),
        };
        let limiter = RateLimiter::new(
            RateLimitConfig {
                default: Some(limit(10)),
                rules: vec![Rule {
                    name: "deletes".into(),
                    matches: RuleMatch {
                        action: Some("deleteFile".into()),
                        ..RuleMatch::default()
                    },
                    limit: limit(2),
                }],
                shared: None,
            },
            Arc::new(Metrics::new()),
        );
        let p = principal("k", "acme", &["admin"]);
        // Three actions under the default: one unit of it.
        let s = limiter
            .check_actions(&p, &["readFile", "listFolder", "browse"])
            .await
            .unwrap()
            .unwrap();
        assert_eq!((s.limit, s.remaining), (10, 9));
        // A delete among them is charged to its own rule too, and shows as the tightest.
        let s = limiter
            .check_actions(&p, &["readFile", "deleteFile"])
            .await
            .unwrap()
            .unwrap();
        assert_eq!((s.limit, s.remaining), (2, 1));
        limiter
            .check_actions(&p, &["deleteFile", "readFile"])
            .await
            .unwrap();
        let (refusal, standing) = limiter
            .check_actions(&p, &["readFile", "deleteFile"])
            .await
            .unwrap_err();
        assert!(matches!(refusal, Refusal::RateLimited { .. }));
        assert_eq!(standing.unwrap().limit, 2);
    }

    #[tokio::test]
    async fn the_first_matching_rule_applies_and_every_field_must_match() {
        let limit = |n| Limit {
            requests: n,
            window: Duration::from_secs(60),
        };
        let rule = |name: &str, m: RuleMatch, n| Rule {
            name: name.into(),
            matches: m,
            limit: limit(n),
        };
        let config = RateLimitConfig {
            default: Some(limit(1000)),
            rules: vec![
                rule(
                    "vip",
                    RuleMatch {
                        key: Some("k1".into()),
                        ..RuleMatch::default()
                    },
                    5000,
                ),
                rule(
                    "acme-uploads",
                    RuleMatch {
                        workspace: Some("acme".into()),
                        action: Some("writeFile".into()),
                        ..RuleMatch::default()
                    },
                    10,
                ),
                rule(
                    "readers",
                    RuleMatch {
                        scope: Some("read".into()),
                        ..RuleMatch::default()
                    },
                    3,
                ),
            ],
            shared: None,
        };
        let limiter = RateLimiter::new(config, Arc::new(Metrics::new()));
        let vip = principal("k1", "acme", &["read"]);
        let reader = principal("k2", "acme", &["read"]);
        let elsewhere = principal("k3", "other", &["write"]);
        let rule_of = |p: &Principal, a: &str| limiter.rule_for(p, a).map(|(_, l)| l.requests);
        assert_eq!(rule_of(&vip, "writeFile"), Some(5000));
        assert_eq!(rule_of(&reader, "writeFile"), Some(10));
        assert_eq!(rule_of(&reader, "readFile"), Some(3));
        assert_eq!(rule_of(&elsewhere, "writeFile"), Some(1000));
        // Rules count on their own: the readers' 3 do not use up the default.
        for _ in 0..3 {
            limiter.check(&reader, "readFile").await.unwrap();
        }
        assert!(limiter.check(&reader, "readFile").await.is_err());
        let s = limiter.check(&reader, "writeFile").await.unwrap().unwrap();
        assert_eq!((&*s.policy, s.remaining), ("acme-uploads", 9));
        // No default, no rule: no limit and no headers.
        let off = RateLimiter::new(
            RateLimitConfig {
                default: None,
                rules: Vec::new(),
                shared: None,
            },
            Arc::new(Metrics::new()),
        );
        assert_eq!(off.check(&reader, "readFile").await, Ok(None));
    }

    #[test]
    fn headers_follow_the_drafts() {
        let s = Standing {
            policy: Arc::from("default"),
            limit: 1000,
            remaining: 998,
            window_secs: 60,
            reset_at: 1_700_000_040,
            reset_in: 40,
        };
        let h = s.headers();
        assert_eq!(h[0], ("x-ratelimit-limit", "1000".parse().unwrap()));
        assert_eq!(h[1], ("x-ratelimit-remaining", "998".parse().unwrap()));
        assert_eq!(h[2], ("x-ratelimit-reset", "1700000040".parse().unwrap()));
        assert_eq!(
            h[3],
            (
                "ratelimit-policy",
                "\"default\";q=1000;w=60".parse().unwrap()
            )
        );
        assert_eq!(
            h[4],
            ("ratelimit", "\"default\";r=998;t=40".parse().unwrap())
        );
    }
}
