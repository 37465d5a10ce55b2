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
