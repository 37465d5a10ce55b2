//! `[notify]`: key expiry reminders, by email (`[notify.email]`) and by a signed webhook
//! (`[notify.webhook]`). Secrets are read when keygate starts, not here.

use std::time::Duration;

use super::check::{duration, problem, secret, Problem};
use super::file::FileConfig;
use super::SecretSource;
use crate::notify::SmtpSecurity;

/// Shortest webhook secret accepted (inline, or read from its file at start).
pub const MIN_WEBHOOK_SECRET_LEN: usize = 32;

/// Most reminder thresholds.
const MAX_REMINDERS: usize = 8;

/// `[notify]`, checked.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    pub reminders: Vec<Duration>,
    pub check_interval: Duration,
    pub console_url: Option<String>,
    pub email: Option<EmailConfig>,
    pub webhook: Option<WebhookConfig>,
}

#[derive(Debug, Clone)]
pub struct EmailConfig {
    pub host: String,
    pub port: Option<u16>,
    pub security: SmtpSecurity,
    pub from: String,
    pub username: Option<String>,
    pub password: Option<SecretSource>,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub secret: SecretSource,
}

/// True when the URL's host is this machine (`localhost`, `127.0.0.0/8`, `::1`).
fn is_loopback(url: &reqwest::Url) -> bool {
    url.host_str().is_some_and(|h| {
        h.eq_ignore_ascii_case("localhost")
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

pub(super) fn notify_config(
    file: &FileConfig,
    problems: &mut Vec<Problem>,
) -> Option<NotifyConfig> {
    let n = file.notify.as_ref()?;
    let before = problems.len();
    let raw = n.reminders.clone().unwrap_or_else(|| vec!["7d".to_owned()]);
    if raw.is_empty() || raw.len() > MAX_REMINDERS {
        problem(
            problems,
            "[notify] reminders",
            format!("give between 1 and {MAX_REMINDERS} durations, such as [\"7d\", \"1d\"]"),
        );
    }
    let mut reminders: Vec<Duration> = raw
        .iter()
        .map(|r| {
            duration(
                problems,
                "[notify] reminders",
                Some(r),
                Duration::from_secs(1),
            )
        })
        .collect();
    reminders.sort();
    reminders.dedup();
    let email = n.email.as_ref().and_then(|e| {
        let security = match e.security.as_deref().unwrap_or("starttls") {
            "starttls" => SmtpSecurity::StartTls,
            "tls" => SmtpSecurity::Tls,
            "none" => SmtpSecurity::None,
            other => {
                problem(
                    problems,
                    "[notify.email] security",
                    format!("'{other}' is not starttls, tls or none"),
                );
                SmtpSecurity::StartTls
            }
        };
        let password = secret(
            problems,
            "notify.email",
            ("password", &e.password),
            ("password_file", &e.password_file),
            1,
        );
        if password.is_some() != e.username.is_some() {
            problem(
                problems,
                "[notify.email]",
                "give username and password (or password_file) together",
            );
        }
        if security == SmtpSecurity::None && password.is_some() {
            problem(
                problems,
                "[notify.email] security",
                "'none' would send the password in clear: use starttls or tls",
            );
        }
        let (Some(host), Some(from)) = (&e.host, &e.from) else {
            problem(problems, "[notify.email]", "needs host and from");
            return None;
        };
        if from.parse::<lettre::message::Mailbox>().is_err() {
            problem(
                problems,
                "[notify.email] from",
                format!("'{from}' is not an address such as 'keygate <keys@example.com>'"),
            );
        }
        Some(EmailConfig {
            host: host.clone(),
            port: e.port,
            security,
            from: from.clone(),
            username: e.username.clone(),
            password,
        })
    });
    let webhook = n.webhook.as_ref().and_then(|w| {
        let secret = secret(
            problems,
            "notify.webhook",
            ("secret", &w.secret),
            ("secret_file", &w.secret_file),
            MIN_WEBHOOK_SECRET_LEN,
        );
        let Some(url) = &w.url else {
            problem(problems, "[notify.webhook]", "needs url");
            return None;
        };
        // The URL is not repeated in messages: receivers often carry a secret in the path.
        match reqwest::Url::parse(url) {
            Ok(u) if u.scheme() == "https" => {}
            Ok(u) if u.scheme() == "http" && is_loopback(&u) => {}
            Ok(u) if u.scheme() == "http" => problem(
                problems,
                "[notify.webhook] url",
                "must be https:// (plain http only to this machine): events name key owners",
            ),
            _ => problem(problems, "[notify.webhook] url", "is not an https:// URL"),
        }
        let Some(secret) = secret else {
            problem(
                problems,
                "[notify.webhook]",
                "needs secret or secret_file: the receiver verifies every event with it",
            );
            return None;
        };
        Some(WebhookConfig {
            url: url.clone(),
            secret,
        })
    });
    if email.is_none() && webhook.is_none() && problems.len() == before {
        problem(
            problems,
            "[notify]",
            "configures no channel: add [notify.email] or [notify.webhook]",
        );
    }
    Some(NotifyConfig {
        reminders,
        check_interval: duration(
            problems,
            "[notify] check_interval",
            n.check_interval.as_deref(),
            Duration::from_secs(600),
        ),
        console_url: n.console_url.clone(),
        email,
        webhook,
    })
}
