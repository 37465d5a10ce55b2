//! The log stage's bookkeeping for one request: its audit event. Runs for every request,
//! refused or forwarded, from `logging()`.

use std::time::Instant;

use super::context::RequestCtx;
use super::Keygate;
use crate::audit::{AuditEvent, AuditPrincipal, AuditShadow};
use crate::clock::{format_time, now_millis};
use crate::refusal::Refusal;

impl Keygate {
    /// The audit event of a request that reached a decision: authentication failed, the rate
    /// limit or a policy refused it, keygate could not decide, or it was allowed (sampled).
    pub(super) fn audit_decision(&self, ctx: &RequestCtx, status: u16, now: Instant) {
        let denied_by = match &ctx.refusal {
            Some(
                r @ (Refusal::Unauthorized(_)
                | Refusal::Forbidden(_)
                | Refusal::RateLimited { .. }
                | Refusal::Unavailable(_)),
            ) => Some(r),
            // Malformed requests and unknown routes decide nothing; an upstream failure after
            // an allow is still an allow.
            _ => None,
        };
        let allowed = denied_by.is_none()
            && !ctx.verdicts.is_empty()
            && ctx.verdicts.iter().all(|v| v.allowed);
        // A shadow disagreement is always written: it is what the shadow policies are for.
        if (denied_by.is_none() && !allowed) || (ctx.shadow.is_none() && !self.audit.wants(allowed))
        {
            return;
        }
        let loaded = self.policy.current();
        let details = match &ctx.refusal {
            Some(Refusal::Unauthorized(f)) => Some(serde_json::json!({ "reason": f.as_str() })),
            Some(Refusal::Forbidden(d)) if !d.is_empty() => {
                Some(serde_json::Value::Object(d.clone()))
            }
            _ => None,
        };
        self.audit.record(AuditEvent {
            time: format_time(now_millis()),
            request_id: ctx.request_id.clone(),
            client: ctx.client.map(|c| c.to_string()),
            principal: ctx.principal.as_ref().map(|p| AuditPrincipal {
                kind: p.kind.as_str(),
                key_id: p.key_id.clone(),
                user_id: p.user_id.clone(),
                workspace: p.workspace.clone(),
            }),
            action: ctx.action().to_owned(),
            // Every target decided (`provider:/path`, or `unmapped:<name>`), once each.
            resources: ctx.route.as_ref().map_or_else(Vec::new, |r| {
                let mut targets = crate::policy::decided_targets(r);
                let mut seen = std::collections::HashSet::new();
                targets.retain(|t| seen.insert(t.clone()));
                targets
            }),
            decision: if allowed { "allow" } else { "deny" },
            reason: denied_by.map_or("allowed", Refusal::code),
            details,
            policies: ctx
                .verdicts
                .iter()
                .flat_map(|v| v.policies.iter().cloned())
                .collect(),
            policy_set: loaded.hash.clone(),
            policy_epoch: loaded.epoch,
            policy_version: loaded.version,
            shadow: ctx.shadow.as_ref().map(|s| AuditShadow {
                decision: if s.direction == "would_allow" {
                    "allow"
                } else {
                    "deny"
                },
                policy: s.policy.clone(),
                policies: s.policies.clone(),
            }),
            status,
            latency_ms: now.duration_since(ctx.arrived).as_secs_f64() * 1000.0,
        });
    }
}
