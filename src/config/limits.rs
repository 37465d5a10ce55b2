//! `[rate_limit]` and `[audit]`: the per-principal limits and the audit log.

use super::check::{problem, Problem};
use super::file::FileConfig;
use super::routes::check_name;

pub(super) fn rate_limit_config(
    file: &FileConfig,
    problems: &mut Vec<Problem>,
) -> crate::ratelimit::RateLimitConfig {
    use crate::ratelimit::{Limit, RateLimitConfig, Rule, RuleMatch};
    let r = &file.rate_limit;
    let mut config = RateLimitConfig::default();
    match (r.backend.as_deref(), &r.redis_url, r.instances) {
        (None | Some("local"), None, None) if r.redis_prefix.is_none() => {}
        (None | Some("local"), ..) => problem(
            problems,
            "[rate_limit] redis_url",
            "redis_url and instances go with backend = \"redis\"",
        ),
        (Some("redis"), Some(url), Some(instances)) => {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                // The URL may hold a password: it is never repeated.
                problem(
                    problems,
                    "[rate_limit] redis_url",
                    "must start with redis:// or rediss://",
                );
            } else if redis::Client::open(url.as_str()).is_err() {
                problem(
                    problems,
                    "[rate_limit] redis_url",
                    "is not a valid Redis URL",
                );
            }
            if !(1..=1000).contains(&instances) {
                problem(
                    problems,
                    "[rate_limit] instances",
                    "must be between 1 and 1000",
                );
            }
            let prefix = r
                .redis_prefix
                .clone()
                .unwrap_or_else(|| "keygate".to_owned());
            if prefix.is_empty()
                || prefix.len() > 64
                || !prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            {
                problem(
                    problems,
                    "[rate_limit] redis_prefix",
                    "1 to 64 letters, digits, '_', '.' or '-'",
                );
            }
            config.shared = Some(crate::ratelimit::shared::SharedConfig {
                url: url.clone(),
                instances,
                prefix,
            });
        }
        (Some("redis"), ..) => problem(
            problems,
            "[rate_limit] backend",
            "\"redis\" needs redis_url (or KEYGATE_RATE_LIMIT_REDIS_URL) and instances (how many \
             instances share the limits)",
        ),
        (Some(other), ..) => problem(
            problems,
            "[rate_limit] backend",
            format!("'{other}' is neither \"local\" nor \"redis\""),
        ),
    }
    match r.default.as_deref() {
        None => {}
        Some("off") => config.default = None,
        Some(raw) => match Limit::parse(raw) {
            Ok(l) => config.default = Some(l),
            Err(e) => problem(problems, "[rate_limit] default", e),
        },
    }
    for (i, rule) in r.rules.iter().enumerate() {
        let place = format!("[[rate_limit.rule]] #{} ({})", i + 1, rule.name);
        check_name(problems, &place, "rule name", &rule.name);
        if rule.name == "default" || r.rules[..i].iter().any(|o| o.name == rule.name) {
            problem(
                problems,
                &place,
                "rule names must be unique and not 'default'",
            );
        }
        let matches = RuleMatch {
            action: rule.action.clone(),
            scope: rule.scope.clone(),
            workspace: rule.workspace.clone(),
            key: rule.key.clone(),
        };
        if matches == RuleMatch::default() {
            problem(
                problems,
                &place,
                "needs at least one of action, scope, workspace, key (use 'default' for everyone)",
            );
        }
        // Its scope is checked against the policy schema's once the policies load
        // (`server::load_policies`).
        match Limit::parse(&rule.limit) {
            Ok(limit) => config.rules.push(Rule {
                name: rule.name.clone(),
                matches,
                limit,
            }),
            Err(e) => problem(problems, &place, e),
        }
    }
    config
}

pub(super) fn audit_config(
    file: &FileConfig,
    problems: &mut Vec<Problem>,
) -> crate::audit::AuditConfig {
    use crate::audit::{AuditConfig, AuditOutput};
    let a = &file.audit;
    let mut config = AuditConfig::default();
    if let Some(out) = &a.output {
        config.output = AuditOutput::parse(out);
    }
    if let Some(rate) = a.allow_sample_rate {
        if (0.0..=1.0).contains(&rate) {
            config.allow_sample_rate = rate;
        } else {
            problem(
                problems,
                "[audit] allow_sample_rate",
                "must be between 0.0 and 1.0",
            );
        }
    }
    if let Some(q) = a.queue {
        if q == 0 {
            problem(problems, "[audit] queue", "must be at least 1");
        }
        config.queue = q.max(1);
    }
    config
}
