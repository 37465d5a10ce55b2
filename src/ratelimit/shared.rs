//! Limits shared by several instances through Redis (`[rate_limit] backend = "redis"`): the
//! per-principal windows and the failure limiters count once for the whole cluster.
//!
//! **Windows.** The counts of a principal's window live in Redis, one key per window, and a Lua
//! script checks and counts a request in one step, so concurrent requests on any instances never
//! overshoot. To spare most requests the round trip, an instance may admit a few requests on its
//! own (the *fast path*) while the budget is far from exhausted, and adds them to Redis with its
//! next round trip: at most `batch` = ⌊limit / (40 × instances)⌋ at a time, and only while more
//! than 2 × instances × batch of the budget was left at its last round trip. Requests admitted on
//! the fast path and not yet in Redis are therefore at most `instances × batch` in the current
//! window and as many in the previous one: a window admits at most 5 % more than its limit, and
//! near the limit every request pays the round trip and the count is exact. A limit under
//! 40 × instances has no fast path.
//!
//! **Failure limiters.** Each failure is counted in Redis (GCRA, the algorithm of the local
//! limiters); when a client address or an account goes over its quota, the script publishes the
//! block and every instance applies it at once. Checking a block stays local: no round trip on
//! any request that does not fail.
//!
//! **When Redis is unreachable** each instance falls back to limits of its own, divided by
//! `[rate_limit] instances` (never open: a principal keeps at most its limit across the cluster
//! while the load is spread evenly; never closed: no request is refused because Redis blinked).
//! A call that fails or takes over 250 ms marks Redis down; it is pinged every 500 ms until it
//! answers, and shared limits resume. `keygate_rate_limit_backend_up`, a log line and `/readyz`
//! say which is in force.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::background::Shutdown;
use crate::telemetry::Metrics;

/// How long a call may take before Redis counts as down.
const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// How often Redis is pinged while down (and checked while up).
const PING_EVERY: Duration = Duration::from_millis(500);

/// `[rate_limit] backend = "redis"`.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedConfig {
    /// `redis://…` or `rediss://…`; may hold a password: never logged.
    pub url: String,
    /// How many instances share the limits: the fast path's batch and the fallback's share.
    pub instances: u32,
    /// Begins every key and the channel of blocks (`keygate`), so that several clusters may
    /// share one Redis.
    pub prefix: String,
}

impl std::fmt::Debug for SharedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedConfig")
            .field("url", &"<redacted>")
            .field("instances", &self.instances)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("instances", &self.instances)
            .field("up", &self.is_up())
            .finish()
    }
}

/// Counts a request in a window of the principal whose keys begin with KEYS[1], by Redis's clock
/// (so instances whose clocks differ still share each window): adds the requests an instance
/// admitted on its own (ARGV[3], to the window starting at ARGV[4] they were admitted in), then
/// admits one more (ARGV[5] = 1) if the sliding count is under the limit ARGV[1] (window ARGV[2]
/// ms). Returns {admitted, previous, current, window start, elapsed ms}.
const WINDOW_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local start = now - (now % window)
local elapsed = now - start
local ttl = window * 2 + 1000
local pending = tonumber(ARGV[3])
if pending > 0 then
  local k = KEYS[1] .. ':' .. ARGV[4]
  redis.call('INCRBY', k, pending)
  redis.call('PEXPIRE', k, ttl)
end
local ckey = KEYS[1] .. ':' .. string.format('%.0f', start)
local pkey = KEYS[1] .. ':' .. string.format('%.0f', start - window)
local current = tonumber(redis.call('GET', ckey) or '0')
local previous = tonumber(redis.call('GET', pkey) or '0')
local used = math.floor(previous * (window - elapsed) / window) + current
if ARGV[5] == '1' and used < limit then
  redis.call('INCR', ckey)
  redis.call('PEXPIRE', ckey, ttl)
  current = current + 1
  return {1, previous, current, start, elapsed}
end
return {0, previous, current, start, elapsed}
";

/// GCRA over one key (KEYS[1] holds the theoretical arrival time, ms, by Redis's clock): takes
/// one failure with emission interval ARGV[1] ms and burst ARGV[2]. Over the quota nothing is
/// taken, the block is published on ARGV[3] as ARGV[4] and the time it ends, and the ms to wait
/// are returned; 0 when within the quota.
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local next_tat = tat + interval
local allowed_at = next_tat - interval * burst
if allowed_at > now then
  local wait = allowed_at - now
  redis.call('PUBLISH', ARGV[3], ARGV[4] .. ' ' .. string.format('%.0f', now + wait))
  return wait
end
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil(next_tat - now) + 1000)
return 0
";

/// Gives back one failure taken by GCRA_SCRIPT (an attempt that succeeded): KEYS[1], interval
/// ARGV[1] ms.
const REFUND_SCRIPT: &str = r"
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat == 0 then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local back = tat - tonumber(ARGV[1])
if back <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.0f', back), 'PX', math.ceil(back - now) + 1000)
end
return 1
";

/// Applies a block published by any instance: (key as text, until unix ms).
pub type BlockSink = Arc<dyn Fn(&str, u64) + Send + Sync>;

/// The connection to Redis and whether it is in force.
pub struct Shared {
    client: redis::Client,
    conn: ConnectionManager,
    up: AtomicBool,
    pub instances: u32,
    /// `[rate_limit] redis_prefix`.
    pub prefix: String,
    /// The channel blocks are published on.
    blocks: String,
    window: redis::Script,
    gcra: redis::Script,
    refund: redis::Script,
    /// The failure limiters, by name, that apply published blocks.
    sinks: Mutex<HashMap<&'static str, BlockSink>>,
    metrics: Arc<Metrics>,
}

impl Shared {
    /// Prepares the connection (made on first use: keygate starts, on per-instance limits,
    /// when Redis is down).
    pub fn new(config: &SharedConfig, metrics: Arc<Metrics>) -> Result<Arc<Shared>, String> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| format!("[rate_limit] redis_url: {:?}", e.kind()))?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = client
            .get_connection_manager_lazy(manager)
            .map_err(|e| format!("[rate_limit] redis_url: {:?}", e.kind()))?;
        metrics
            .rate_limit_backend_up
            .with_label_values(&["redis"])
            .set(0);
        Ok(Arc::new(Shared {
            client,
            conn,
            up: AtomicBool::new(false),
            instances: config.instances.max(1),
            prefix: config.prefix.clone(),
            blocks: format!("{}:blocks", config.prefix),
            window: redis::Script::new(WINDOW_SCRIPT),
            gcra: redis::Script::new(GCRA_SCRIPT),
            refund: redis::Script::new(REFUND_SCRIPT),
            sinks: Mutex::default(),
            metrics,
        }))
    }

    /// Marks Redis up without asking it (tests of what happens while calls are in flight).
    #[cfg(test)]
    pub(super) fn mark_up(&self) {
        self.set_up(true);
    }

    /// Shared limits are in force (else each instance counts on its own).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn set_up(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            self.metrics
                .rate_limit_backend_up
                .with_label_values(&["redis"])
                .set(i64::from(up));
            if up {
                tracing::info!("Redis answers: rate limits are shared by every instance again");
            } else {
                tracing::warn!(
                    instances = self.instances,
                    "Redis is unreachable: each instance limits on its own, to its share of each limit"
                );
            }
        }
    }

    fn failed(&self, e: &dyn std::fmt::Display) {
        self.metrics.rate_limit_backend_errors.inc();
        if self.is_up() {
            tracing::debug!(error = %e, "a call to Redis failed");
        }
        self.set_up(false);
    }

    /// Runs `invocation` within the call timeout; `None` (and Redis marked down) when it fails.
    async fn call<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Option<T> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                self.failed(&e);
                None
            }
            Err(_) => {
                self.failed(&"no answer within 250 ms");
                None
            }
        }
    }

    /// Runs the window script; `None` (and Redis marked down) when it fails.
    pub(super) async fn count_in_window(&self, call: WindowCall<'_>) -> Option<Counted> {
        let mut invocation = self.window.key(call.base_key);
        invocation
            .arg(call.limit)
            .arg(call.window_ms)
            .arg(call.pending)
            .arg(call.pending_start)
            .arg(if call.want { "1" } else { "0" });
        let (admitted, previous, current, start, elapsed) =
            self.call::<(u8, u64, u64, u64, u64)>(&invocation).await?;
        Some(Counted {
            admitted: admitted == 1,
            previous,
            current,
            start,
            elapsed,
        })
    }

    fn failure_key(&self, name: &str, key: &str) -> String {
        format!("{}:fail:{name}:{key}", self.prefix)
    }

    /// Takes a failure of `key` (its text) for the limiter `name`: the ms to wait when it is
    /// over its quota (and then every instance applies the block), 0 when within it; `None`
    /// (and Redis marked down) when the call fails.
    pub(super) async fn count_failure(
        &self,
        name: &str,
        key: &str,
        interval_ms: u64,
        burst: u32,
    ) -> Option<u64> {
        let mut invocation = self.gcra.key(self.failure_key(name, key));
        invocation
            .arg(interval_ms)
            .arg(burst)
            .arg(&self.blocks)
            .arg(format!("{name} {key}"));
        self.call::<u64>(&invocation).await
    }

    /// Gives back a failure taken with `count_failure` (the attempt succeeded).
    pub(super) async fn refund_failure(&self, name: &str, key: &str, interval_ms: u64) {
        let mut invocation = self.refund.key(self.failure_key(name, key));
        invocation.arg(interval_ms);
        let _ = self.call::<u8>(&invocation).await;
    }

    /// Has the limiter `name` apply the blocks published for it.
    pub fn register(&self, name: &'static str, sink: BlockSink) {
        self.sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, sink);
    }

    fn apply_block(&self, message: &str) {
        let mut words = message.split(' ');
        let (Some(name), Some(key), Some(until), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return;
        };
        let Ok(until) = until.parse::<u64>() else {
            return;
        };
        let sink = self
            .sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned();
        if let Some(sink) = sink {
            sink(key, until);
        }
    }

    /// Pings Redis (marking it up or down), and listens for published blocks, until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        tokio::join!(
            self.clone().watch(shutdown.clone()),
            self.subscribe(shutdown)
        );
    }

    async fn watch(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            let mut conn = self.conn.clone();
            let ping = tokio::time::timeout(
                CALL_TIMEOUT,
                redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await;
            match ping {
                Ok(Ok(_)) => self.set_up(true),
                Ok(Err(e)) => self.failed(&e),
                Err(_) => self.failed(&"no answer within 250 ms"),
            }
            tokio::select! {
                _ = tokio::time::sleep(PING_EVERY) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    async fn subscribe(self: Arc<Self>, mut shutdown: Shutdown) {
        use futures_util::StreamExt;
        loop {
            let subscribed = async {
                let mut pubsub = tokio::time::timeout(CALL_TIMEOUT, self.client.get_async_pubsub())
                    .await
                    .map_err(|_| "no answer")?
                    .map_err(|_| "cannot connect")?;
                pubsub
                    .subscribe(&self.blocks)
                    .await
                    .map_err(|_| "cannot subscribe")?;
                Ok::<_, &str>(pubsub)
            };
            let subscribed = tokio::select! {
                s = subscribed => s,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            if let Ok(pubsub) = subscribed {
                let mut messages = pubsub.into_on_message();
                loop {
                    let message = tokio::select! {
                        m = messages.next() => m,
                        _ = shutdown.wait_for(|s| *s) => return,
                    };
                    let Some(message) = message else { break };
                    if let Ok(text) = message.get_payload::<String>() {
                        self.apply_block(&text);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(PING_EVERY) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

/// One call of the window script.
pub(super) struct WindowCall<'a> {
    /// What every key of this principal's windows under this rule begins with.
    pub base_key: &'a str,
    pub limit: u64,
    pub window_ms: u64,
    /// Requests admitted on this instance's own, and the start of the window they belong to.
    pub pending: u64,
    pub pending_start: u64,
    pub want: bool,
}

/// What the window script answered.
pub(super) struct Counted {
    pub admitted: bool,
    pub previous: u64,
    pub current: u64,
    /// The window's start and how far into it Redis's clock is (ms).
    pub start: u64,
    pub elapsed: u64,
}
