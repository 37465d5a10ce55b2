//! Telling owners their keys are about to expire: a reminder by email (SMTP) and by a signed
//! webhook, once per key, threshold and channel (`store/reminders.rs` holds the claims that
//! make it once across restarts and instances), checked by one background loop. A reminder
//! names the key (name, display prefix, workspace, expiry), never its secret.
//!
//! May import: `store`, `clock`, `telemetry`, `background`, `model`.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::Sha256;

use crate::background::{Shutdown, Ticker};
use crate::clock::{format_time, now_millis};
use crate::store::{DueReminder, ReminderId, Store};
use crate::telemetry::Metrics;

/// Longest one email or webhook delivery may take before it counts as failed.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Reminders sent per threshold and channel in one check: a backlog (a first start with many
/// keys near their expiry) drains over the next checks instead of holding this one.
pub const BATCH: i64 = 100;

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS, which must succeed (port 587 by default).
    StartTls,
    /// TLS from the first byte (port 465 by default).
    Tls,
    /// No TLS: only for a relay on this machine or a trusted network (port 25 by default).
    None,
}

/// `[notify.email]`, with its password read.
#[derive(Clone)]
pub struct EmailSettings {
    pub host: String,
    pub port: Option<u16>,
    pub security: SmtpSecurity,
    /// `keygate <keys@example.com>`.
    pub from: String,
    pub credentials: Option<(String, String)>,
}

/// `[notify.webhook]`, with its secret read.
#[derive(Clone)]
pub struct WebhookSettings {
    pub url: String,
    pub secret: String,
}

/// Sends email through one SMTP server.
pub struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Email {
    pub fn new(s: EmailSettings) -> anyhow::Result<Email> {
        use anyhow::Context;
        let from: Mailbox = s
            .from
            .parse()
            .with_context(|| format!("[notify.email] from: '{}' is not an address", s.from))?;
        let tls = || TlsParameters::new(s.host.clone());
        let (security, default_port) = match s.security {
            SmtpSecurity::StartTls => (Tls::Required(tls()?), 587),
            SmtpSecurity::Tls => (Tls::Wrapper(tls()?), 465),
            SmtpSecurity::None => (Tls::None, 25),
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&s.host)
            .port(s.port.unwrap_or(default_port))
            .tls(security)
            .timeout(Some(DELIVERY_TIMEOUT));
        if let Some((user, password)) = s.credentials {
            builder = builder.credentials(Credentials::new(user, password));
        }
        Ok(Email {
            transport: builder.build(),
            from,
        })
    }

    async fn send(&self, to: &str, subject: &str, body: String) -> Result<(), String> {
        let to: Mailbox = to
            .parse()
            .map_err(|e| format!("the owner's address: {e}"))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| e.to_string())?;
        let sent = tokio::time::timeout(DELIVERY_TIMEOUT, self.transport.send(message)).await;
        match sent {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the SMTP server did not answer in time".to_owned()),
        }
    }
}

/// Posts signed JSON events to one URL.
pub struct Webhook {
    url: reqwest::Url,
    secret: Vec<u8>,
    client: reqwest::Client,
}

impl Webhook {
    pub fn new(s: WebhookSettings) -> anyhow::Result<Webhook> {
        use anyhow::Context;
        let url = reqwest::Url::parse(&s.url).context("[notify.webhook] url is not a URL")?;
        let client = reqwest::Client::builder()
            .timeout(DELIVERY_TIMEOUT)
            // Events go straight to the receiver, never through a proxy of the environment.
            .no_proxy()
            // A redirect would send the signed event somewhere the operator never named.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Webhook {
            url,
            secret: s.secret.into_bytes(),
            client,
        })
    }

    async fn send(&self, event: &str, id: &str, body: Vec<u8>) -> Result<(), String> {
        let timestamp = now_millis() / 1000;
        let answer = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("x-keygate-event", event)
            .header("x-keygate-delivery", id)
            .header(
                "x-keygate-signature",
                signature(&self.secret, timestamp, &body),
            )
            .body(body)
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if answer.status().is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {}", answer.status()))
        }
    }
}

/// The `X-Keygate-Signature` of a webhook body sent at `timestamp` (unix seconds):
/// `t=<timestamp>,v1=<hex HMAC-SHA-256 of "<timestamp>.<body>" under the secret>`. The
/// receiver recomputes it and refuses an old timestamp, so a captured event cannot be replayed
/// later.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        crate::model::hex(&mac.finalize().into_bytes())
    )
}

/// The reminder loop and what it sends through.
pub struct Reminders {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// How long before expiry each reminder goes out (`7d` by default).
    pub thresholds: Vec<Duration>,
    /// The console's address, linked from the email.
    pub console_url: Option<String>,
    pub email: Option<Email>,
    pub webhook: Option<Webhook>,
    /// A failed delivery's next try waits this times the square of its attempts.
    pub backoff: Duration,
}

impl Reminders {
    /// Checks every `interval` until shutdown, the first time at once.
    pub async fn run(self, interval: Duration, shutdown: Shutdown) {
        let stop = shutdown.clone();
        let mut ticker = Ticker::new(interval, shutdown);
        loop {
            self.check(&stop).await;
            if !ticker.tick().await {
                return;
            }
        }
    }

    /// Sends the reminders due now that no one has sent; stops between two deliveries when
    /// keygate is told to stop (a delivery is never cut off between sending and recording).
    pub async fn check(&self, stop: &Shutdown) {
        // Each threshold covers the keys not yet within the next smaller one.
        let mut ranges = Vec::new();
        let mut after_ms = 0;
        for threshold in &self.thresholds {
            let threshold_ms = i64::try_from(threshold.as_millis()).unwrap_or(i64::MAX);
            ranges.push((after_ms, threshold_ms));
            after_ms = threshold_ms;
        }
        for range in ranges {
            for (channel, on) in [
                ("email", self.email.is_some()),
                ("webhook", self.webhook.is_some()),
            ] {
                if on && !self.channel(range, channel, stop).await {
                    return;
                }
            }
        }
    }

    /// Sends what is due on `channel` for one threshold; false when told to stop.
    async fn channel(&self, range: (i64, i64), channel: &'static str, stop: &Shutdown) -> bool {
        let threshold_ms = range.1;
        let due = match self
            .store
            .keys_due_reminder(now_millis(), range, channel, BATCH)
            .await
        {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for keys due an expiry reminder");
                return true;
            }
        };
        for key in due {
            if *stop.borrow() {
                return false;
            }
            let id = ReminderId {
                key_id: &key.key_id,
                threshold_ms,
                channel,
                expires_at: key.expires_at,
            };
            let claim = uuid::Uuid::new_v4().to_string();
            match self.store.claim_reminder(id, &claim, now_millis()).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim an expiry reminder");
                    return true;
                }
            }
            let sent = match channel {
                "email" => self.email(&key, threshold_ms).await,
                _ => self.webhook(&key, threshold_ms).await,
            };
            let recorded = match sent {
                Ok(()) => {
                    self.metrics
                        .reminders
                        .with_label_values(&[channel, "sent"])
                        .inc();
                    tracing::info!(key = %key.key_id, channel, "sent an expiry reminder");
                    self.store.reminder_sent(id, &claim, now_millis()).await
                }
                Err(error) => {
                    self.metrics
                        .reminders
                        .with_label_values(&[channel, "failed"])
                        .inc();
                    tracing::warn!(key = %key.key_id, channel, %error,
                        "an expiry reminder failed; it will be tried again later");
                    let backoff = i64::try_from(self.backoff.as_millis()).unwrap_or(i64::MAX);
                    self.store
                        .reminder_failed(id, &claim, now_millis(), backoff)
                        .await
                }
            };
            if let Err(e) = recorded {
                tracing::warn!(error = %e, "cannot record an expiry reminder");
            }
        }
        true
    }

    async fn email(&self, key: &DueReminder, threshold_ms: i64) -> Result<(), String> {
        let Some(email) = &self.email else {
            return Ok(());
        };
        let expires = format_time(key.expires_at);
        let day = expires.get(..10).unwrap_or(&expires);
        let subject = format!("Your API key \"{}\" expires on {day}", key.name);
        let link = self
            .console_url
            .as_deref()
            .map(|u| format!(" in the console:\n\n  {u}\n"))
            .unwrap_or_else(|| ".\n".to_owned());
        let body = format!(
            "Hello,\n\nYour API key \"{name}\" ({prefix}...)\nin the workspace {workspace} \
             expires at {expires}, in {left}.\n\nFrom then on every request made with it is \
             refused. To keep access,\nrotate it (the new key keeps its scopes and base paths) \
             or create another{link}\nThis reminder is sent once, {threshold} before the expiry.\n\
             keygate never sends a key by email.\n",
            name = key.name,
            prefix = key.display_prefix,
            workspace = key.workspace,
            left = humanize(key.expires_at - now_millis()),
            threshold = humanize(threshold_ms),
        );
        email.send(&key.owner_email, &subject, body).await
    }

    async fn webhook(&self, key: &DueReminder, threshold_ms: i64) -> Result<(), String> {
        let Some(webhook) = &self.webhook else {
            return Ok(());
        };
        let id = uuid::Uuid::new_v4().to_string();
        let event = serde_json::json!({
            "type": "key.expiring",
            "id": id,
            "createdAt": format_time(now_millis()),
            "data": {
                "key": {
                    "id": key.key_id,
                    "name": key.name,
                    "displayPrefix": key.display_prefix,
                    "owner": key.owner_email,
                    "workspace": key.workspace,
                    "expiresAt": format_time(key.expires_at),
                },
                "threshold": humantime::format_duration(Duration::from_secs(
                    u64::try_from(threshold_ms / 1000).unwrap_or(0))).to_string(),
            },
        });
        let body = serde_json::to_vec(&event).map_err(|e| e.to_string())?;
        webhook.send("key.expiring", &id, body).await
    }
}

/// `ms` in whole days (or hours, under two days), for people.
fn humanize(ms: i64) -> String {
    let hours = (ms.max(0) + 1_800_000) / 3_600_000;
    match hours {
        h if h >= 48 => format!("{} days", (h + 12) / 24),
        1 => "1 hour".to_owned(),
        h => format!("{h} hours"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_the_timestamp_and_the_body() {
        let s = signature(b"secret", 1_700_000_000, b"{\"a\":1}");
        // As a receiver computes it (Python: hmac.new(secret, b"1700000000." + body, sha256)).
        assert_eq!(
            s,
            "t=1700000000,v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
        assert_ne!(s, signature(b"secret", 1_700_000_001, b"{\"a\":1}"));
        assert_ne!(s, signature(b"secret", 1_700_000_000, b"{\"a\":2}"));
        assert_ne!(s, signature(b"other", 1_700_000_000, b"{\"a\":1}"));
    }

    #[test]
    fn times_left_read_as_days_or_hours() {
        assert_eq!(humanize(7 * 86_400_000), "7 days");
        assert_eq!(humanize(30 * 3_600_000), "30 hours");
        assert_eq!(humanize(3_600_000), "1 hour");
        assert_eq!(humanize(-5), "0 hours");
        // A key made to expire in 5 days is, a moment later, still "5 days" away.
        assert_eq!(humanize(5 * 86_400_000 - 60_000), "5 days");
    }
}
