//! The audit log: one JSON line per decision, written off the request threads.
//!
//! The hot path hands a finished [`AuditEvent`] to a bounded queue and moves on; a writer
//! thread serializes and writes the lines, flushing whenever the queue runs dry. When the queue
//! is full the event is dropped and counted (`keygate_audit_dropped_total`), never waited for.
//! Every deny is logged; allows at `allow_sample_rate`. Events name credentials by id, never by
//! secret.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::telemetry::Metrics;

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditOutput {
    Off,
    Stdout,
    Stderr,
    /// Appended to; created if missing.
    File(PathBuf),
}

impl AuditOutput {
    pub fn parse(raw: &str) -> AuditOutput {
        match raw {
            "off" | "" => AuditOutput::Off,
            "stdout" | "-" => AuditOutput::Stdout,
            "stderr" => AuditOutput::Stderr,
            path => AuditOutput::File(PathBuf::from(path)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditConfig {
    pub output: AuditOutput,
    /// Share of allowed requests logged, 0.0 to 1.0. Denies are always logged.
    pub allow_sample_rate: f64,
    /// Events that may wait for the writer before new ones are dropped.
    pub queue: usize,
}

impl Default for AuditConfig {
    fn default() -> AuditConfig {
        AuditConfig {
            output: AuditOutput::Stdout,
            allow_sample_rate: 0.0,
            queue: 16_384,
        }
    }
}

/// Who made the request, by id.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditPrincipal {
    pub kind: &'static str,
    pub key_id: String,
    pub user_id: String,
    pub workspace: String,
}

/// One decision.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// RFC 3339, ms precision, UTC.
    pub time: String,
    pub request_id: String,
    pub client: Option<String>,
    pub principal: Option<AuditPrincipal>,
    pub action: String,
    /// `provider:/path` of each resource decided.
    pub resources: Vec<String>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// `allowed`, or the refusal's code (`UNAUTHORIZED`, `FORBIDDEN`, `RATE_LIMIT_EXCEEDED`, ...).
    pub reason: &'static str,
    /// What the client was told: the 401 reason, the restriction or the required scope.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    /// Ids of the policies that determined the decision.
    pub policies: Vec<String>,
    /// SHA-256 of the policy set that decided.
    pub policy_set: String,
    pub policy_epoch: u64,
    /// The published version of that set (`[policies] source = "database"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<i64>,
    /// When the shadow policies would have decided otherwise: their decision, the shadow
    /// policy held responsible and their determining policies. Such an event is always
    /// written, whatever the sampling of allows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<AuditShadow>,
    pub status: u16,
    pub latency_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditShadow {
    /// `allow` or `deny`.
    pub decision: &'static str,
    pub policy: String,
    pub policies: Vec<String>,
}

pub struct AuditLog {
    tx: Option<SyncSender<AuditEvent>>,
    allow_sample_rate: f64,
    pending: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
}

impl AuditLog {
    /// Opens the output and starts the writer thread.
    pub fn start(config: &AuditConfig, metrics: Arc<Metrics>) -> std::io::Result<AuditLog> {
        let pending = Arc::new(AtomicUsize::new(0));
        let out: Box<dyn Write + Send> = match &config.output {
            AuditOutput::Off => {
                return Ok(AuditLog {
                    tx: None,
                    allow_sample_rate: 0.0,
                    pending,
                    metrics,
                })
            }
            AuditOutput::Stdout => Box::new(std::io::stdout()),
            AuditOutput::Stderr => Box::new(std::io::stderr()),
            AuditOutput::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = sync_channel(config.queue.max(1));
        let writer_pending = pending.clone();
        let writer_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("keygate-audit".into())
            .spawn(move || write_events(rx, out, writer_pending, writer_metrics))?;
        Ok(AuditLog {
            tx: Some(tx),
            allow_sample_rate: config.allow_sample_rate.clamp(0.0, 1.0),
            pending,
            metrics,
        })
    }

    /// Whether a decision with this outcome is logged; ask before building the event.
    pub fn wants(&self, allowed: bool) -> bool {
        self.tx.is_some()
            && (!allowed
                || (self.allow_sample_rate > 0.0 && fastrand::f64() < self.allow_sample_rate))
    }

    /// Queues an event; drops and counts it when the queue is full.
    pub fn record(&self, event: AuditEvent) {
        let Some(tx) = &self.tx else { return };
        self.pending.fetch_add(1, Ordering::AcqRel);
        match tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                self.metrics
                    .audit_dropped
                    .with_label_values(&["queue_full"])
                    .inc();
            }
        }
    }

    /// Waits (up to `limit`) until every queued event is written; for shutdown and tests.
    pub fn drain(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.pending.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn write_events(
    rx: Receiver<AuditEvent>,
    out: Box<dyn Write + Send>,
    pending: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(1024);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut written = 0;
        while let Some(event) = next.take() {
            line.clear();
            let ok = serde_json::to_writer(&mut line, &event).is_ok() && {
                line.push(b'\n');
                out.write_all(&line).is_ok()
            };
            if ok {
                metrics
                    .audit_events
                    .with_label_values(&[event.decision])
                    .inc();
            } else {
                metrics
                    .audit_dropped
                    .with_label_values(&["write_error"])
                    .inc();
            }
            written += 1;
            next = rx.try_recv().ok();
        }
        // The queue ran dry: everything so far reaches the file before `pending` says so.
        if out.flush().is_err() {
            metrics
                .audit_dropped
                .with_label_values(&["write_error"])
                .inc();
        }
        pending.fetch_sub(written, Ordering::AcqRel);
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(decision: &'static str) -> AuditEvent {
        AuditEvent {
            time: "2026-11-22T10:00:00.000Z".into(),
            request_id: "r1".into(),
            client: Some("127.0.0.1".into()),
            principal: None,
            action: "read".into(),
            resources: vec!["local:/a".into()],
            decision,
            reason: if decision == "allow" {
                "allowed"
            } else {
                "FORBIDDEN"
            },
            details: None,
            policies: vec!["p1".into()],
            policy_set: "abc".into(),
            policy_epoch: 1,
            policy_version: None,
            shadow: None,
            status: 403,
            latency_ms: 0.1,
        }
    }

    #[test]
    fn events_become_json_lines_and_allows_are_sampled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let metrics = Arc::new(Metrics::new());
        let config = AuditConfig {
            output: AuditOutput::File(path.clone()),
            allow_sample_rate: 0.0,
            queue: 16,
        };
        let log = AuditLog::start(&config, metrics.clone()).unwrap();
        assert!(log.wants(false));
        assert!(!log.wants(true), "allows are not logged at rate 0");
        log.record(event("deny"));
        log.record(event("deny"));
        log.drain(Duration::from_secs(5));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["requestId"], "r1");
        assert_eq!(lines[0]["policies"][0], "p1");
        assert_eq!(lines[0]["policySet"], "abc");

        let all = AuditLog::start(
            &AuditConfig {
                allow_sample_rate: 1.0,
                ..config
            },
            metrics,
        )
        .unwrap();
        assert!(all.wants(true));
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let metrics = Arc::new(Metrics::new());
        // A queue nobody reads: the sender side alone.
        let (tx, _rx) = sync_channel(2);
        let log = AuditLog {
            tx: Some(tx),
            allow_sample_rate: 0.0,
            pending: Arc::new(AtomicUsize::new(0)),
            metrics: metrics.clone(),
        };
        for _ in 0..5 {
            log.record(event("deny"));
        }
        assert!(metrics
            .render()
            .contains("keygate_audit_dropped_total{reason=\"queue_full\"} 3"));
    }
}
