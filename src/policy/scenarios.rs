//! Policy scenarios: data-driven tests of a policy folder, run by `keygate policy test` and by
//! the test suite. A scenario file (`<policies>/tests/*.toml`) names providers and principals
//! in keygate's own terms and requests as a method and a path; each request goes through the
//! real route table (the config's: `keygate --config FILE policy test`; the storage-backend
//! preset without one) and entity builder, and its decision and determining policies are
//! compared with what the file expects. A request to a GraphQL route carries its `body`.
//!
//! ```toml
//! [[provider]]
//! name = "local"
//! workspace = "acme"
//!
//! [[principal]]
//! name = "backups-reader"
//! workspace = "acme"
//! role = "editor"                 # the owner's role there: viewer, editor, admin, none
//! scopes = ["read"]
//! providers = [{ provider = "local", basePath = "/backups" }]   # leave out for all
//!
//! [[request]]
//! principal = "backups-reader"
//! method = "GET"
//! path = "/v1/files/local/backups/2025/db.tar"
//! decision = "allow"
//! policies = ["scope-read"]       # the determining policies, in any order
//! ```

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::config::{Config, Overrides};
use crate::model::Grant;
use crate::model::Role;
use crate::policy::{PolicyEngine, Target};
use crate::principal::{Principal, PrincipalKind};
use crate::route::{graphql, RouteInput, RouteTable};
use crate::telemetry::Metrics;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, rename = "provider")]
    pub providers: Vec<ProviderDef>,
    #[serde(default, rename = "principal")]
    pub principals: Vec<PrincipalDef>,
    #[serde(default, rename = "request")]
    pub requests: Vec<RequestDef>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderDef {
    pub name: String,
    pub workspace: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalDef {
    pub name: String,
    /// `api-key` (default), `scoped-token`, `login` or `operator`.
    #[serde(default)]
    pub kind: Option<String>,
    /// Required, except for the operator (a member of no workspace).
    #[serde(default)]
    pub workspace: Option<String>,
    /// Required, except for the operator.
    #[serde(default)]
    pub role: Option<String>,
    /// A login's and the operator's are empty: they hold no scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub providers: Option<Vec<Grant>>,
}

/// A storage request (`method` and `path`), or a management `action` on a credential owned by
/// `owner` (the owner of the named principal) in `workspace`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestDef {
    pub principal: String,
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub action: Option<String>,
    /// The principal whose owner owns the credential (default: the requesting principal).
    #[serde(default)]
    pub owner: Option<String>,
    /// The credential's workspace (default: the requesting principal's).
    #[serde(default)]
    pub workspace: Option<String>,
    /// The credential acted on is the requesting one itself (default: another of its owner's).
    #[serde(default)]
    pub itself: bool,
    /// `keygate`: the action is an operating one, on keygate itself (`readPolicies`, ...).
    #[serde(default)]
    pub target: Option<String>,
    /// `provider:/path`: the action is decided on that storage path (an action no route of
    /// the table maps to, such as `traverse`).
    #[serde(default)]
    pub on: Option<String>,
    #[serde(default)]
    pub destination: Option<String>,
    /// The `Overwrite` header of a move or copy (`T`, the default, or `F`).
    #[serde(default)]
    pub overwrite: Option<String>,
    /// The `Depth` header of a WebDAV request (`0`, `1`, `infinity`).
    #[serde(default)]
    pub depth: Option<String>,
    /// The body of a request to a GraphQL route (`{"query": …}`).
    #[serde(default)]
    pub body: Option<String>,
    /// For a deny by missing scope: the `details.granted` expected (in the deployment's
    /// spelling).
    #[serde(default)]
    pub granted: Option<Vec<String>>,
    /// `allow` or `deny`.
    pub decision: String,
    #[serde(default)]
    pub policies: Vec<String>,
    /// For a deny: the `details.restriction` expected, if any.
    #[serde(default)]
    pub restriction: Option<String>,
    /// For a deny by missing scope: the `details.required` expected.
    #[serde(default)]
    pub required: Option<String>,
}

/// What running the scenarios found.
#[derive(Debug, Default)]
pub struct Report {
    pub files: usize,
    pub passed: usize,
    pub failures: Vec<String>,
}

/// A scenario's principal. Its scopes are written as clients write them (names or the
/// deployment's `@scope("…")` spellings).
fn principal_of(def: &PrincipalDef, engine: &PolicyEngine) -> Result<Principal, String> {
    let scopes = if def.scopes.is_empty() {
        Vec::new()
    } else {
        engine
            .parse_scopes(&def.scopes)
            .map_err(|e| format!("principal '{}': {e}", def.name))?
    };
    let kind = match def.kind.as_deref() {
        None | Some("api-key") => PrincipalKind::ApiKey,
        Some("scoped-token") => PrincipalKind::ScopedToken,
        Some("login") => PrincipalKind::Login,
        Some("operator") => return Ok(Principal::operator()),
        Some(other) => return Err(format!("principal '{}': unknown kind '{other}'", def.name)),
    };
    let (Some(workspace), Some(role)) = (&def.workspace, &def.role) else {
        return Err(format!(
            "principal '{}': a workspace and a role are required",
            def.name
        ));
    };
    let role = match role.as_str() {
        "none" => None,
        r => Some(
            r.parse::<Role>()
                .map_err(|e| format!("principal '{}': {e}", def.name))?,
        ),
    };
    let grants = def
        .providers
        .as_deref()
        .map(crate::model::parse_grants)
        .transpose()
        .map_err(|e| format!("principal '{}': {e}", def.name))?;
    Ok(Principal {
        kind,
        key_id: def.name.clone(),
        user_id: format!("owner-of-{}", def.name),
        user_email: format!("{}@example.com", def.name),
        workspace_id: workspace.clone(),
        workspace: workspace.clone(),
        scopes,
        grants,
        role,
        expires_at: None,
        generation: 0,
        usage: Default::default(),
    })
}

/// Runs every scenario file in `<dir>/tests` against the policies in `dir`, routing requests
/// with `routes` (the storage-backend preset when `None`).
pub fn run(dir: &Path, routes: Option<&RouteTable>) -> Result<Report, String> {
    let engine = PolicyEngine::load(dir, Arc::new(Metrics::new())).map_err(|e| e.to_string())?;
    let preset;
    let routes = match routes {
        Some(r) => r,
        None => {
            preset = Config::from_toml("", "scenarios", std::iter::empty(), &Overrides::default())
                .map_err(|e| e.to_string())?
                .routes;
            &preset
        }
    };
    let tests = dir.join("tests");
    let mut paths: Vec<_> = std::fs::read_dir(&tests)
        .map_err(|e| format!("cannot read {}: {e}", tests.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut report = Report::default();
    for path in paths {
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{name}: {e}"))?;
        let scenario: Scenario = toml::from_str(&text).map_err(|e| format!("{name}: {e}"))?;
        report.files += 1;
        engine.set_providers(
            scenario
                .providers
                .iter()
                .map(|p| (p.name.clone(), p.workspace.clone()))
                .collect(),
        );
        let mut principals = HashMap::new();
        for def in &scenario.principals {
            principals.insert(
                def.name.clone(),
                principal_of(def, &engine).map_err(|e| format!("{name}: {e}"))?,
            );
        }
        for (n, req) in scenario.requests.iter().enumerate() {
            let what = match &req.action {
                Some(a) if req.on.is_some() => {
                    format!("{a} on {}", req.on.as_deref().unwrap_or(""))
                }
                Some(a) => format!(
                    "{a} on a key of {}",
                    req.owner.as_deref().unwrap_or(&req.principal)
                ),
                None => format!("{} {}", req.method, req.path),
            };
            let label = format!("{name}: request #{} ({what} as {})", n + 1, req.principal);
            let Some(principal) = principals.get(&req.principal) else {
                report
                    .failures
                    .push(format!("{label}: no principal named '{}'", req.principal));
                continue;
            };
            let verdicts = if let (Some(action), Some(on)) = (&req.action, &req.on) {
                let Some((provider, path)) = on.split_once(':').filter(|(_, p)| p.starts_with('/'))
                else {
                    report
                        .failures
                        .push(format!("{label}: 'on' must be provider:/path, not '{on}'"));
                    continue;
                };
                let resource = crate::route::Resource {
                    role: crate::route::ResourceRole::Source,
                    provider: provider.into(),
                    path: path.to_owned(),
                };
                vec![engine.decide_on(principal, action, Target::Path(&resource))]
            } else if let (Some(action), Some(target)) = (&req.action, &req.target) {
                if target != "keygate" {
                    report.failures.push(format!(
                        "{label}: unknown target '{target}' (the one target is 'keygate')"
                    ));
                    continue;
                }
                vec![engine.decide_on(principal, action, Target::Service)]
            } else if let Some(action) = &req.action {
                let owner = match req.owner.as_deref().map(|o| principals.get(o)) {
                    None => principal,
                    Some(Some(p)) => p,
                    Some(None) => {
                        report
                            .failures
                            .push(format!("{label}: no principal named '{:?}'", req.owner));
                        continue;
                    }
                };
                let workspace = req.workspace.as_deref().unwrap_or(&principal.workspace_id);
                let id = if req.itself {
                    principal.key_id.as_str()
                } else {
                    "scenario-key"
                };
                vec![engine.decide_on(
                    principal,
                    action,
                    Target::Credential {
                        id,
                        owner: &owner.user_id,
                        workspace,
                    },
                )]
            } else {
                let routed = routes
                    .route(RouteInput {
                        method: &req.method,
                        raw_target: req.path.as_bytes(),
                        destination: req.destination.as_deref().map(str::as_bytes),
                        overwrite: req.overwrite.as_deref().map(str::as_bytes),
                        depth: req.depth.as_deref().map(str::as_bytes),
                        if_header: None,
                        host: Some("scenario"),
                    })
                    .and_then(|mut route| {
                        if let Some(rules) = route.graphql.clone() {
                            let body = req.body.as_deref().unwrap_or_default();
                            let op = graphql::authorize(
                                &rules,
                                body.as_bytes(),
                                route.provider.as_ref(),
                            )?;
                            route.apply_graphql(op);
                        }
                        Ok(route)
                    });
                let route = match routed {
                    Ok(r) => r,
                    Err(e) => {
                        report
                            .failures
                            .push(format!("{label}: the request does not route: {}", e.code()));
                        continue;
                    }
                };
                let verdicts = engine.decide_uncached(principal, &route);
                // As the data plane does: denied, the request is decided as its route's
                // ancestor action instead, if it has one.
                match route.on_the_way() {
                    Some(way) if !verdicts.iter().all(|v| v.allowed) => {
                        let again = engine.decide_uncached(principal, &way);
                        if again.iter().all(|v| v.allowed) {
                            again
                        } else {
                            verdicts
                        }
                    }
                    _ => verdicts,
                }
            };
            let allowed = !verdicts.is_empty() && verdicts.iter().all(|v| v.allowed);
            let decisive: Vec<_> = if allowed {
                verdicts.iter().collect()
            } else {
                verdicts.iter().filter(|v| !v.allowed).take(1).collect()
            };
            let got: BTreeSet<&str> = decisive
                .iter()
                .flat_map(|v| v.policies.iter().map(String::as_str))
                .collect();
            let want: BTreeSet<&str> = req.policies.iter().map(String::as_str).collect();
            let got_decision = if allowed { "allow" } else { "deny" };
            let mut problems = Vec::new();
            if got_decision != req.decision {
                problems.push(format!("expected {}, got {got_decision}", req.decision));
            }
            if got != want {
                problems.push(format!("expected policies {want:?}, got {got:?}"));
            }
            let details = decisive.first().map(|v| &v.details);
            let detail = |k: &str| {
                details
                    .and_then(|d| d.get(k))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            if req.restriction.is_some() && detail("restriction") != req.restriction {
                problems.push(format!(
                    "expected restriction {:?}, got {:?}",
                    req.restriction,
                    detail("restriction")
                ));
            }
            if req.required.is_some() && detail("required") != req.required {
                problems.push(format!(
                    "expected required scope {:?}, got {:?}",
                    req.required,
                    detail("required")
                ));
            }
            let granted: Option<Vec<String>> = decisive
                .first()
                .and_then(|v| v.details.get("granted"))
                .and_then(|g| serde_json::from_value(g.clone()).ok());
            if req.granted.is_some() && granted != req.granted {
                problems.push(format!(
                    "expected granted scopes {:?}, got {granted:?}",
                    req.granted
                ));
            }
            if problems.is_empty() {
                report.passed += 1;
            } else {
                report
                    .failures
                    .push(format!("{label}: {}", problems.join("; ")));
            }
        }
    }
    Ok(report)
}
