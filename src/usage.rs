//! Per-key usage (requests, denied, bytes in and out, last used), counted in memory with
//! atomics on the hot path and flushed to the database in batches, never a write per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use crate::clock::{now_millis, today};
use crate::store::{Store, StoreError, UsageDay};

/// Counters of one key since the last flush.
#[derive(Debug, Default)]
pub struct KeyCounters {
    requests: AtomicI64,
    denied: AtomicI64,
    bytes_in: AtomicI64,
    bytes_out: AtomicI64,
    last_used: AtomicI64,
}

impl KeyCounters {
    /// Counts one request made with the key.
    pub fn record(&self, denied: bool, bytes_in: u64, bytes_out: u64) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if denied {
            self.denied.fetch_add(1, Ordering::Relaxed);
        }
        self.bytes_in.fetch_add(bytes_in as i64, Ordering::Relaxed);
        self.bytes_out
            .fetch_add(bytes_out as i64, Ordering::Relaxed);
        self.last_used.fetch_max(now_millis(), Ordering::Relaxed);
    }

    fn take(&self) -> (UsageDay, i64) {
        let u = UsageDay {
            day: String::new(),
            requests: self.requests.swap(0, Ordering::Relaxed),
            denied: self.denied.swap(0, Ordering::Relaxed),
            bytes_in: self.bytes_in.swap(0, Ordering::Relaxed),
            bytes_out: self.bytes_out.swap(0, Ordering::Relaxed),
        };
        (u, self.last_used.load(Ordering::Relaxed))
    }

    fn peek(&self) -> (UsageDay, i64) {
        let u = UsageDay {
            day: String::new(),
            requests: self.requests.load(Ordering::Relaxed),
            denied: self.denied.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
        };
        (u, self.last_used.load(Ordering::Relaxed))
    }

    fn restore(&self, u: &UsageDay) {
        self.requests.fetch_add(u.requests, Ordering::Relaxed);
        self.denied.fetch_add(u.denied, Ordering::Relaxed);
        self.bytes_in.fetch_add(u.bytes_in, Ordering::Relaxed);
        self.bytes_out.fetch_add(u.bytes_out, Ordering::Relaxed);
    }
}

/// The counters of every key used since start.
#[derive(Default)]
pub struct UsageRecorder {
    keys: Mutex<HashMap<String, Arc<KeyCounters>>>,
}

impl UsageRecorder {
    /// The counters of a key; looked up once per principal, not per request.
    pub fn counters(&self, key_id: &str) -> Arc<KeyCounters> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.entry(key_id.to_owned()).or_default().clone()
    }

    /// Writes everything counted since the last flush in one transaction. On failure the counts
    /// are put back, so nothing is lost.
    pub async fn flush(&self, store: &Store) -> Result<usize, StoreError> {
        let day = today();
        let taken: Vec<(String, Arc<KeyCounters>, UsageDay, i64)> = {
            let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            let taken: Vec<_> = keys
                .iter()
                .filter_map(|(id, c)| {
                    let (mut u, last) = c.take();
                    u.day = day.clone();
                    (u.requests > 0 || u.bytes_in > 0 || u.bytes_out > 0)
                        .then(|| (id.clone(), c.clone(), u, last))
                })
                .collect();
            // Counters nobody holds any more (no cached principal) and with nothing to write
            // are dropped: the table holds the keys in use, not every key ever seen.
            keys.retain(|_, c| Arc::strong_count(c) > 1);
            taken
        };
        let batch: Vec<(String, UsageDay, i64)> = taken
            .iter()
            .map(|(id, _, u, last)| (id.clone(), u.clone(), *last))
            .collect();
        match store.add_usage(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                for (_, c, u, _) in &taken {
                    c.restore(u);
                }
                Err(e)
            }
        }
    }

    /// What is counted for a key but not yet flushed: (today's counts, last used).
    pub fn pending(&self, key_id: &str) -> Option<(UsageDay, i64)> {
        let keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.get(key_id).map(|c| {
            let (mut u, last) = c.peek();
            u.day = today();
            (u, last)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counters_nobody_holds_are_dropped_at_the_next_flush() {
        let recorder = UsageRecorder::default();
        let held = recorder.counters("held");
        let rotated_away = recorder.counters("rotated-away");
        drop(rotated_away);
        let keys = || recorder.keys.lock().unwrap().len();
        assert_eq!(keys(), 2);
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("u.db").display());
        let store = Store::open(&url, 1).await.unwrap();
        recorder.flush(&store).await.unwrap();
        assert_eq!(keys(), 1, "a key no principal holds any more is let go");
        assert!(recorder.pending("held").is_some());
        drop(held);
    }
}
