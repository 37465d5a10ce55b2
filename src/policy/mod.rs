//! Stage 5, decide: [`Principal`] + [`RouteMatch`] → allow, or a 403 naming what was missing.
//!
//! The policy files are the single source of truth: this module only loads and validates them
//! (strict mode, against the schema beside them), builds the Cedar request and entities, and
//! caches decisions. No authorization rule lives here.
//!
//! Loading reads every `*.cedarschema` and `*.cedar` file of the policy folder; each policy must
//! carry a unique `@id("…")`, which becomes its Cedar id so that reasons and audit events use the
//! names people wrote. A reload that fails to parse or validate keeps the last good set running;
//! a good one bumps the epoch, which retires every cached decision. An error while evaluating is
//! a deny: Cedar skips an erroring policy, and an erroring `forbid` must still forbid.
//!
//! `scenarios.rs` runs the scenario files (`keygate policy test`) through the real route table and
//! entity builder.
//!
//! May import: `principal`, `route`, `model`, `refusal`, `telemetry`, `clock`, `config` (for
//! scenarios).
//! Never `identity`, `manage` or the planes.

pub mod review;
pub mod scenarios;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy,
    PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use moka::sync::Cache;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::principal::{Principal, PrincipalKind};
use crate::refusal::Refusal;
use crate::route::{Check, Resource, RouteMatch};
use crate::telemetry::Metrics;

/// The policies keygate ships, compiled in: `keygate demo` writes them out.
pub const SHIPPED: &[(&str, &str)] = &[
    (
        "keygate.cedarschema",
        include_str!("../../policies/keygate.cedarschema"),
    ),
    ("scopes.cedar", include_str!("../../policies/scopes.cedar")),
    (
        "restrictions.cedar",
        include_str!("../../policies/restrictions.cedar"),
    ),
    (
        "management.cedar",
        include_str!("../../policies/management.cedar"),
    ),
    (
        "operating.cedar",
        include_str!("../../policies/operating.cedar"),
    ),
    (
        "permissions.cedar",
        include_str!("../../policies/permissions.cedar"),
    ),
    ("roles.cedar", include_str!("../../policies/roles.cedar")),
];

/// Memory the decision cache may hold (keys, paths and verdicts, estimated).
const DECISION_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// What a decision is about.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A storage path.
    Path(&'a Resource),
    /// A key or token (existing, or about to be created) of `owner` in `workspace` (ids).
    Credential {
        id: &'a str,
        owner: &'a str,
        workspace: &'a str,
    },
    /// A request no route maps to a storage path, by its canonical path.
    Unmapped(&'a str),
    /// keygate itself (its policies, its certificates).
    Service,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the policy folder {0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

/// A loaded, validated policy set.
pub struct Loaded {
    policies: PolicySet,
    /// The shadow set (the folder's `shadow/` files over the enforced policies), when there
    /// are shadow files: decided beside the enforced set, never enforced.
    shadow: Option<Indexed>,
    /// The policies written in `shadow/` alone: with the enforced set's answer, usually all a
    /// shadow decision needs to evaluate (see [`Loaded::shadow_verdict`]).
    shadow_only: Indexed,
    /// Ids of the policies written in `shadow/`.
    shadow_ids: HashSet<String>,
    schema: Schema,
    /// Each action as an entity whose parents are all its groups, transitively: the one
    /// action entity a request needs, so no request copies the whole action hierarchy.
    actions: HashMap<String, Entity>,
    pub epoch: u64,
    /// SHA-256 over the files' names and contents, in name order.
    pub hash: String,
    pub files: Vec<String>,
    pub loaded_at: i64,
    /// The published version this set is (`[policies] source = "database"`).
    pub version: Option<i64>,
    /// `@restriction` of each policy that has one.
    restriction: HashMap<String, String>,
    /// `@intent` of each policy.
    pub intent: HashMap<String, String>,
    /// For each action, the scope that would allow it (its nearest scope group).
    required: HashMap<String, String>,
    /// Every `Keygate::Path` the policies name, as (provider, path): with the grants, the only
    /// folders a decision can ask `resource in …` about.
    path_literals: Vec<(String, String)>,
    /// Each policy as `/v1/admin/policy` lists it, in file order.
    pub listed: Vec<PolicyInfo>,
    /// Each (action, (principal type, resource type)) a request may carry, per the schema.
    requestable: Vec<(String, (String, String))>,
    /// For each action, per (principal type, resource type) a request may carry, the policies
    /// whose scope can match such a request (see [`index_by_request`]).
    by_request: ByRequest,
    /// The action groups marked `@scope` in the schema: what a key or token may be granted,
    /// sorted. Keys, tokens and the policies hold these names.
    scopes: Vec<String>,
    /// The deployment's spelling of a scope (`@scope("read:files")` on `files:read`), by
    /// name: what clients send and are shown.
    spelling: HashMap<String, String>,
    /// The scope each spelling names.
    spelled: HashMap<String, String>,
    /// Each action's context type, as the schema's JSON form has it.
    contexts: HashMap<String, Value>,
    /// The schema's entity and common type declarations (JSON, per namespace): two sets whose
    /// declarations differ cannot be compared under one schema (`policy diff`).
    entity_types: Value,
}

/// A loaded policy: its `@id`, where it is written, its effect and intent, and a hash of its
/// text (as Cedar prints it) to tell versions apart across instances.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyInfo {
    pub id: String,
    /// `file:line:column`.
    pub place: String,
    pub effect: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
    pub hash: String,
    /// Written in `shadow/`: evaluated, never enforced.
    pub shadow: bool,
}

impl PolicyInfo {
    fn of(policy: &Policy, id: &str, place: String, shadow: bool) -> PolicyInfo {
        PolicyInfo {
            id: id.to_owned(),
            place,
            effect: match policy.effect() {
                cedar_policy::Effect::Permit => "permit",
                cedar_policy::Effect::Forbid => "forbid",
            },
            intent: policy.annotation("intent").map(str::to_owned),
            hash: crate::model::hex(&Sha256::digest(policy.to_string().as_bytes())),
            shadow,
        }
    }
}

/// The outcome of a decision, with the policies that determined it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub allowed: bool,
    /// Ids of the determining policies (for the audit log, never the client).
    pub policies: Vec<String>,
    /// For a deny: what the client is told (`required`/`granted` or `restriction`).
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub details: Map<String, Value>,
    /// An evaluation error turned this into a deny.
    pub errored: bool,
    /// The shadow set's answer to the same request, when there is a shadow set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowVerdict>,
}

/// What the shadow policies would have decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowVerdict {
    pub allowed: bool,
    /// The shadow set's determining policies.
    pub policies: Vec<String>,
}

/// A request the shadow set would have decided differently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShadowDisagreement {
    /// `would_allow` (enforced denied) or `would_deny` (enforced allowed).
    pub direction: &'static str,
    /// The shadow policy held responsible: the metric's `policy` label.
    pub policy: String,
    /// The shadow set's determining policies over the request's resources.
    pub policies: Vec<String>,
}

/// The decide stage's outcome: a verdict per resource decided, and the refusal if any was
/// denied (the first denied resource ends the stage).
#[derive(Debug)]
pub struct Decided {
    pub verdicts: Vec<Arc<Verdict>>,
    pub refusal: Option<Refusal>,
    /// Set when the shadow policies would have decided the request the other way.
    pub shadow: Option<ShadowDisagreement>,
}

/// Which paths a decision holds for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum DecisionPath {
    /// This path alone: a policy or a grant names it or a folder below it.
    Exactly(String),
    /// Every path below this folder (a policy's or a grant's; `""`: none) that is not
    /// itself named and has no named folder between it and this one.
    Below(String),
}

impl DecisionPath {
    /// Bytes held, for the cache's weigher.
    fn len(&self) -> usize {
        match self {
            DecisionPath::Exactly(p) | DecisionPath::Below(p) => p.len(),
        }
    }
}

/// Everything a decision depends on; the decision cache's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DecisionKey {
    principal: String,
    generation: i64,
    action: Arc<str>,
    provider: Arc<str>,
    /// The path, or the class of paths it decides alike with ([`Loaded::decision_path`]).
    path: DecisionPath,
    epoch: u64,
    directory: u64,
}

/// Status for the control plane.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    pub epoch: u64,
    pub hash: String,
    pub files: Vec<String>,
    /// The policy folder, or `database` when the policies are published there.
    pub dir: String,
    /// The published version running (`[policies] source = "database"`).
    pub version: Option<i64>,
    pub loaded_at: String,
    pub last_error: Option<String>,
    /// Every policy of the running set.
    pub policies: Vec<PolicyInfo>,
    /// Live keys and scoped tokens holding scopes this set does not define (they grant
    /// nothing), as last checked; at most [`INERT_LISTED`] are listed.
    pub inert_scopes: Vec<InertScopes>,
    /// How many credentials hold such scopes in all.
    pub inert_credentials: usize,
}

/// A scope as people choosing one see it (`GET /v1/scopes`, the console's key form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScopeInfo {
    /// The scope as clients write it (its `@scope("…")` spelling, or its name).
    pub name: String,
    /// The other scopes it contains (`write` contains `read` and `files:write`, ...).
    pub includes: Vec<String>,
    /// The actions of requests it allows (`readFile`, `listFolder`, ...), by name.
    pub actions: Vec<String>,
}

/// A credential holding scopes the running policies do not define.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InertScopes {
    /// `key` or `token`.
    pub credential: &'static str,
    pub id: String,
    pub scopes: Vec<String>,
}

/// The running set in the metrics: its published version and its hash (the first 16 hex
/// digits, as the only series of `policy_info`, so that a dashboard counts the sets instances
/// run).
fn note_running(metrics: &Metrics, previous: Option<&Loaded>, loaded: &Loaded) {
    if let Some(previous) = previous {
        let _ = metrics
            .policy_info
            .remove_label_values(&[&previous.hash[..16]]);
    }
    metrics
        .policy_info
        .with_label_values(&[&loaded.hash[..16]])
        .set(1);
    metrics.policy_version.set(loaded.version.unwrap_or(0));
}

/// Most inert credentials the status lists (and a warning names).
pub const INERT_LISTED: usize = 20;

pub struct PolicyEngine {
    /// The policy folder; `None` when the policies are published to the database.
    dir: Option<PathBuf>,
    current: ArcSwap<Loaded>,
    last_error: Mutex<Option<String>>,
    reload_lock: Mutex<()>,
    /// Actions the route table names: a policy set whose schema lacks one is refused (at
    /// start and on reload), rather than denying those requests at request time.
    required_actions: Mutex<Vec<String>>,
    /// Scopes the config names (rate-limit rules): a set whose schema does not declare one
    /// `@scope` is refused likewise.
    required_scopes: Mutex<Vec<String>>,
    /// The last check for credentials with scopes the set does not define: (listed, count).
    inert: Mutex<(Vec<InertScopes>, usize)>,
    decisions: Cache<DecisionKey, Arc<Verdict>>,
    /// Provider name → id of the workspace that owns it.
    providers: ArcSwap<HashMap<String, String>>,
    directory_version: AtomicU64,
    authorizer: Authorizer,
    metrics: Arc<Metrics>,
}

fn type_name(name: &str) -> EntityTypeName {
    // INVARIANT: called with the fixed names of the schema only.
    EntityTypeName::from_str(name).expect("a valid entity type name")
}

fn uid(ty: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(type_name(ty), EntityId::new(id))
}

/// Line and column (1-based) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Byte offsets where each policy statement (with its annotations) starts, in order; for
/// pointing at a policy that has no `@id` to find it by.
fn statement_starts(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut pending: Option<usize> = None;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        let at = offset + (line.len() - t.len());
        if t.starts_with('@') && pending.is_none() {
            pending = Some(at);
        } else if t.starts_with("permit") || t.starts_with("forbid") {
            out.push(pending.take().unwrap_or(at));
        } else if !t.is_empty() && !t.starts_with("//") && !t.starts_with('@') {
            // inside a policy body
        }
        offset += line.len();
    }
    out
}

/// "file:line:col: message" for every labelled span of a Cedar diagnostic.
fn describe(file: &str, text: &str, err: &dyn miette::Diagnostic) -> String {
    let mut out = err.to_string();
    if let Some(help) = err.help() {
        out.push_str(&format!(" ({help})"));
    }
    let places: Vec<String> = err
        .labels()
        .into_iter()
        .flatten()
        .map(|l| {
            let (line, col) = line_col(text, l.offset());
            format!("{file}:{line}:{col}")
        })
        .collect();
    match places.first() {
        Some(p) => format!("{p}: {out}"),
        None => format!("{file}: {out}"),
    }
}

/// Reads and validates a policy folder. Every problem is reported, each with its place.
/// The message for route actions a schema lacks.
fn missing_message(missing: &[String]) -> String {
    format!(
        "the schema does not declare actions that the route table or keygate's control plane \
         names: {} (a typo in a route, or an action removed from keygate.cedarschema); every \
         request for one would be denied",
        missing.join(", ")
    )
}

fn missing_scopes_message(missing: &[String]) -> String {
    format!(
        "[[rate_limit.rule]] names scopes the policy schema does not declare (@scope): {}",
        missing.join(", ")
    )
}

/// The actions keygate's own code asks the policies about (managing keys and tokens,
/// explaining, operating keygate): a schema must declare them, like the route table's.
pub const BUILT_IN_ACTIONS: &[&str] = &[
    "createKey",
    "readKey",
    "updateKey",
    "revokeKey",
    "rotateKey",
    "createToken",
    "explainDecision",
    "readPolicies",
    "reloadPolicies",
    "readCertificates",
    "reloadCertificates",
    "readCluster",
];

/// For each action, per (principal type, resource type), the policies such a request can
/// match.
type ByRequest = HashMap<String, Vec<(String, String, PolicySet)>>;

/// A kind of request: principal type, action, resource type.
#[derive(Clone, Copy)]
struct Kind<'a> {
    principal: &'a str,
    action: &'a str,
    resource: &'a str,
}

impl Kind<'_> {
    fn of<'a>(principal: &Principal, action: &'a str, target: Target<'_>) -> Kind<'a> {
        Kind {
            principal: principal_type(principal.kind),
            action,
            resource: match target {
                Target::Path(_) => "Keygate::Path",
                Target::Credential { .. } => "Keygate::Credential",
                Target::Unmapped(_) => "Keygate::Unmapped",
                Target::Service => "Keygate::Service",
            },
        }
    }
}

/// The policies a request of a kind can match; `None` for a kind the schema does not list
/// (the request is refused: this is the check Cedar's request validation would make, done
/// once per kind at load time instead of on every request).
fn pick<'a>(by_request: &'a ByRequest, kind: Kind<'_>) -> Option<&'a PolicySet> {
    by_request
        .get(kind.action)
        .and_then(|kinds| {
            kinds
                .iter()
                .find(|(p, r, _)| p == kind.principal && r == kind.resource)
        })
        .map(|(_, _, set)| set)
}

/// A policy set with its index by kind of request.
struct Indexed {
    whole: PolicySet,
    by_request: ByRequest,
}

impl Indexed {
    fn new(
        whole: PolicySet,
        requestable: &[(String, (String, String))],
        actions: &HashMap<String, Entity>,
    ) -> Result<Indexed, PolicyError> {
        let by_request = index_by_request(&whole, requestable, actions)
            .map_err(|e| PolicyError::Invalid(format!("indexing the policies: {e}")))?;
        Ok(Indexed { whole, by_request })
    }

    /// The subset for a kind; the whole set for a kind the schema does not list, which only a
    /// caller that has not refused such requests already can ask for.
    fn for_kind(&self, kind: Kind<'_>) -> &PolicySet {
        pick(&self.by_request, kind).unwrap_or(&self.whole)
    }
}

impl Loaded {
    /// Problems that keep this set from being served (loading it to compare or lint is fine):
    /// a schema that marks no action group `@scope` could grant nothing to any key.
    pub fn servable(&self) -> Result<(), String> {
        if self.scopes.is_empty() {
            return Err(
                "the schema marks no action group @scope, so no key or token could be \
                        granted anything (policies written for an older keygate: see \
                        docs/policies.md, \"Upgrading a policy folder\")"
                    .to_owned(),
            );
        }
        // A policy that tests for a scope no @scope group defines never sees it held (the
        // policies see only defined scopes): a forbid on it would be lifted silently, a permit
        // would be dead. So removing a scope means editing the policies that name it.
        let mut undefined = Vec::new();
        let shadow = self.shadow.as_ref().map(|s| s.whole.policies());
        for policy in self.policies.policies().chain(shadow.into_iter().flatten()) {
            let id = policy
                .annotation("id")
                .map_or_else(|| policy.id().to_string(), str::to_owned);
            let mut named = Vec::new();
            let readable = policy
                .to_json()
                .is_ok_and(|est| scope_literals(&est, &mut named));
            if !readable {
                undefined.push(format!(
                    "{id} tests principal.scopes against something other than string literals"
                ));
            }
            for scope in named {
                if self.scopes.binary_search(&scope).is_err() {
                    let hint = match self.spelled.get(&scope) {
                        Some(name) => format!(" (a spelling: policies use the name \"{name}\")"),
                        None => String::new(),
                    };
                    undefined.push(format!("{id} names the scope \"{scope}\"{hint}"));
                }
            }
        }
        if !undefined.is_empty() {
            undefined.sort();
            undefined.dedup();
            return Err(format!(
                "policies test for scopes that no @scope group of the schema defines (a key can \
                 never hold them): {}",
                undefined.join("; ")
            ));
        }
        Ok(())
    }

    /// True when `action` is `group` or lies within it (`readFile` within `files:read` and
    /// `read`, `files:read` within `read`, ...).
    fn in_group(&self, action: &str, group: &str) -> bool {
        action == group || action_groups(&self.actions, action).is_some_and(|g| g.contains(group))
    }

    /// Every scope a key or token may be granted, in name order, with what it contains: the
    /// schema's action hierarchy, read whole, so a deployment's own scopes explain themselves.
    pub fn scope_catalog(&self) -> Vec<ScopeInfo> {
        let requested: BTreeSet<&str> = self.requestable.iter().map(|(a, _)| a.as_str()).collect();
        self.scopes
            .iter()
            .map(|scope| ScopeInfo {
                name: self.spell(scope).to_owned(),
                includes: self
                    .scopes
                    .iter()
                    .filter(|other| *other != scope && self.in_group(other, scope))
                    .map(|other| self.spell(other).to_owned())
                    .collect(),
                actions: requested
                    .iter()
                    .filter(|action| self.in_group(action, scope))
                    .map(|action| (*action).to_owned())
                    .collect(),
            })
            .collect()
    }

    /// The names among `scopes` that this set's schema does not mark `@scope`.
    pub fn missing_scopes(&self, scopes: &[String]) -> Vec<String> {
        scopes
            .iter()
            .filter(|s| self.scope_named(s).is_none())
            .cloned()
            .collect()
    }

    /// The scope `s` names, as the scope's name or the deployment's spelling of it.
    pub fn scope_named(&self, s: &str) -> Option<&str> {
        match self.scopes.binary_search_by(|k| k.as_str().cmp(s)) {
            Ok(i) => Some(self.scopes[i].as_str()),
            Err(_) => self.spelled.get(s).map(String::as_str),
        }
    }

    /// How clients see the scope `name`: its `@scope("…")` spelling, or its name.
    pub fn spell<'a>(&'a self, name: &'a str) -> &'a str {
        self.spelling.get(name).map_or(name, String::as_str)
    }

    /// The names among `actions` that this set's schema does not declare.
    pub fn missing_actions(&self, actions: &[String]) -> Vec<String> {
        actions
            .iter()
            .filter(|a| !self.actions.contains_key(a.as_str()))
            .cloned()
            .collect()
    }
}

pub fn load_dir(dir: &Path, epoch: u64) -> Result<Loaded, PolicyError> {
    load_texts(&read_dir_texts(dir)?, epoch)
}

/// The files of a policy folder as (name, contents): its `.cedar` and `.cedarschema` files,
/// then those of `shadow/` as `shadow/NAME`, each in name order.
pub fn read_dir_texts(dir: &Path) -> Result<Vec<(String, String)>, PolicyError> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| PolicyError::Io(dir.display().to_string(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "cedar" || x == "cedarschema")
        })
        .collect();
    names.sort();
    let mut files = Vec::new();
    for path in &names {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError::Io(path.display().to_string(), e))?;
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        files.push((name, text));
    }
    let shadow_dir = dir.join(SHADOW_DIR);
    if shadow_dir.is_dir() {
        let mut shadow: Vec<PathBuf> = std::fs::read_dir(&shadow_dir)
            .map_err(|e| PolicyError::Io(shadow_dir.display().to_string(), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
            .collect();
        shadow.sort();
        for path in shadow {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| PolicyError::Io(path.display().to_string(), e))?;
            let name = path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            files.push((format!("{SHADOW_DIR}/{name}"), text));
        }
    }
    Ok(files)
}

/// The subfolder of shadow policies: evaluated beside the enforced ones, never enforced.
pub const SHADOW_DIR: &str = "shadow";

/// Validates policy texts given as (file name, contents).
pub fn load_texts(files: &[(String, String)], epoch: u64) -> Result<Loaded, PolicyError> {
    let mut problems = Vec::new();
    let mut hasher = Sha256::new();
    for (name, text) in files {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(text.as_bytes());
        hasher.update([0]);
    }
    let schemas: Vec<&(String, String)> = files
        .iter()
        .filter(|(n, _)| n.ends_with(".cedarschema"))
        .collect();
    let schema = match schemas.as_slice() {
        [(name, text)] => match Schema::from_cedarschema_str(text) {
            Ok((schema, _warnings)) => Some(schema),
            Err(e) => {
                problems.push(describe(name, text, &e));
                None
            }
        },
        [] => {
            problems.push("the policy folder has no .cedarschema file".to_owned());
            None
        }
        _ => {
            problems.push("the policy folder has more than one .cedarschema file".to_owned());
            None
        }
    };
    let mut set = PolicySet::new();
    let mut origin: HashMap<String, (String, String)> = HashMap::new();
    let mut restriction = HashMap::new();
    let mut intent = HashMap::new();
    let mut listed = Vec::new();
    let mut shadow_policies: Vec<Policy> = Vec::new();
    let mut shadow_origin: HashMap<String, (String, String)> = HashMap::new();
    for (name, text) in files.iter().filter(|(n, _)| n.ends_with(".cedar")) {
        let is_shadow = name.starts_with(&format!("{SHADOW_DIR}/"));
        let parsed = match PolicySet::from_str(text) {
            Ok(p) => p,
            Err(e) => {
                problems.push(describe(name, text, &e));
                continue;
            }
        };
        if parsed.templates().next().is_some() {
            problems.push(format!(
                "{name}: templates are not supported; write plain policies"
            ));
        }
        let starts = statement_starts(text);
        for (n, policy) in parsed.policies().enumerate() {
            let offset = policy
                .annotation("id")
                .and_then(|id| text.find(&format!("@id(\"{id}\")")))
                .or_else(|| starts.get(n).copied());
            let place = offset.map_or_else(
                || name.clone(),
                |o| {
                    let (line, col) = line_col(text, o);
                    format!("{name}:{line}:{col}")
                },
            );
            let Some(id) = policy.annotation("id").map(str::to_owned) else {
                problems.push(format!(
                    "{place}: every policy needs an @id(\"…\") annotation"
                ));
                continue;
            };
            // A shadow policy may reuse an enforced policy's @id: in the shadow set it replaces
            // that policy (how a changed version is tried).
            let seen = if is_shadow { &shadow_origin } else { &origin };
            if let Some((other, _)) = seen.get(&id) {
                problems.push(format!("{place}: @id(\"{id}\") is already used in {other}"));
                continue;
            }
            let renamed: Policy = policy.new_id(PolicyId::new(&id));
            if is_shadow {
                listed.push(PolicyInfo::of(&renamed, &id, place, true));
                shadow_origin.insert(id, (name.clone(), text.clone()));
                shadow_policies.push(renamed);
                continue;
            }
            if let Some(r) = policy.annotation("restriction") {
                restriction.insert(id.clone(), r.to_owned());
            }
            if let Some(i) = policy.annotation("intent") {
                intent.insert(id.clone(), i.to_owned());
            }
            listed.push(PolicyInfo::of(&renamed, &id, place.clone(), false));
            if let Err(e) = set.add(renamed) {
                problems.push(format!("{place}: {e}"));
                continue;
            }
            origin.insert(id, (name.clone(), text.clone()));
        }
    }
    let Some(schema) = schema else {
        return Err(PolicyError::Invalid(problems.join("\n")));
    };
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    for e in result.validation_errors() {
        let id = e.policy_id().to_string();
        match origin.get(&id) {
            Some((file, text)) => problems.push(describe(file, text, e)),
            None => problems.push(e.to_string()),
        }
    }
    if set.policies().next().is_none() {
        problems
            .push("the policy folder has no policies: nothing would ever be allowed".to_owned());
    }
    let shadow = if shadow_policies.is_empty() {
        None
    } else {
        let replaced: HashSet<&str> = shadow_origin.keys().map(String::as_str).collect();
        let kept = set
            .policies()
            .filter(|p| !replaced.contains(p.id().to_string().as_str()))
            .cloned();
        match PolicySet::from_policies(kept.chain(shadow_policies.iter().cloned())) {
            Ok(shadow) => {
                let result =
                    Validator::new(schema.clone()).validate(&shadow, ValidationMode::Strict);
                // The enforced policies' problems are reported above.
                for e in result.validation_errors() {
                    if let Some((file, text)) = shadow_origin.get(&e.policy_id().to_string()) {
                        problems.push(describe(file, text, e));
                    }
                }
                Some(shadow)
            }
            Err(e) => {
                problems.push(format!("{SHADOW_DIR}/: {e}"));
                None
            }
        }
    };
    if !problems.is_empty() {
        return Err(PolicyError::Invalid(problems.join("\n")));
    }
    let fragment = schemas
        .first()
        .and_then(|(_, text)| cedar_policy::SchemaFragment::from_cedarschema_str(text).ok())
        .and_then(|(fragment, _)| fragment.to_json_value().ok());
    // keygate's actions are those of the Keygate namespace; a scope is a group (no appliesTo).
    let keygate_actions = fragment
        .as_ref()
        .and_then(|f| f.pointer("/Keygate/actions"))
        .and_then(Value::as_object);
    let mut scopes: Vec<String> = keygate_actions
        .into_iter()
        .flat_map(|actions| actions.iter())
        .filter(|(name, action)| {
            action.pointer("/annotations/scope").is_some()
                && !schema
                    .request_envs()
                    .any(|env| env.action().id().unescaped() == name.as_str())
        })
        .map(|(name, _)| name.clone())
        .collect();
    scopes.sort();
    let (spelling, spelled) = scope_spellings(keygate_actions, &scopes)?;
    // What a request of each action may carry as context: `policy diff` compares it.
    let contexts: HashMap<String, Value> = keygate_actions
        .into_iter()
        .flat_map(|actions| actions.iter())
        .map(|(name, action)| {
            let context = action
                .pointer("/appliesTo/context")
                .cloned()
                .unwrap_or(Value::Null);
            (name.clone(), context)
        })
        .collect();
    let actions = schema
        .action_entities()
        .map_err(|e| PolicyError::Invalid(format!("the schema's actions: {e}")))?;
    let required = required_scopes(&actions, &scopes);
    let actions = actions
        .iter()
        .map(|e| {
            let ancestors: HashSet<EntityUid> = actions
                .ancestors(&e.uid())
                .into_iter()
                .flatten()
                .cloned()
                .collect();
            (
                e.uid().id().unescaped().to_owned(),
                Entity::new_no_attrs(e.uid(), ancestors),
            )
        })
        .collect();
    let entity_types = fragment
        .map(|json| match json {
            Value::Object(namespaces) => Value::Object(
                namespaces
                    .into_iter()
                    .map(|(ns, decl)| {
                        let types = serde_json::json!({
                            "entityTypes": decl.get("entityTypes"),
                            "commonTypes": decl.get("commonTypes"),
                        });
                        (ns, types)
                    })
                    .collect(),
            ),
            other => other,
        })
        .unwrap_or(Value::Null);
    let requestable: Vec<(String, (String, String))> = schema
        .request_envs()
        .map(|env| {
            (
                env.action().id().unescaped().to_owned(),
                (env.principal().to_string(), env.resource().to_string()),
            )
        })
        .collect();
    let by_request = index_by_request(&set, &requestable, &actions)
        .map_err(|e| PolicyError::Invalid(format!("indexing the policies: {e}")))?;
    let shadow = shadow
        .map(|s| Indexed::new(s, &requestable, &actions))
        .transpose()?;
    let shadow_only = Indexed::new(
        PolicySet::from_policies(shadow_policies)
            .map_err(|e| PolicyError::Invalid(format!("{SHADOW_DIR}/: {e}")))?,
        &requestable,
        &actions,
    )?;
    let mut path_literals = path_literals(&set).map_err(|p| PolicyError::Invalid(p.join("\n")))?;
    if let Some(shadow) = &shadow {
        path_literals.extend(
            self::path_literals(&shadow.whole).map_err(|p| PolicyError::Invalid(p.join("\n")))?,
        );
        path_literals.sort();
        path_literals.dedup();
    }
    Ok(Loaded {
        path_literals,
        listed,
        policies: set,
        shadow,
        requestable,
        by_request,
        scopes,
        spelling,
        spelled,
        contexts,
        entity_types,
        shadow_only,
        shadow_ids: shadow_origin.into_keys().collect(),
        schema,
        actions,
        epoch,
        hash: crate::model::hex(&hasher.finalize()),
        files: files.iter().map(|(n, _)| n.clone()).collect(),
        loaded_at: crate::clock::now_millis(),
        version: None,
        restriction,
        intent,
        required,
    })
}

/// True when `policy`'s scope can match a request of `principal_ty` doing `action` (whose
/// groups are `groups`) on a `resource_ty`. Conservative: a constraint it cannot judge from
/// types alone (`principal in X`, `resource in X`) can match.
fn scope_can_match(
    policy: &Policy,
    principal_ty: &str,
    action: &str,
    groups: &BTreeSet<String>,
    resource_ty: &str,
) -> bool {
    use cedar_policy::{ActionConstraint, PrincipalConstraint, ResourceConstraint};
    let principal = match policy.principal_constraint() {
        PrincipalConstraint::Is(t) | PrincipalConstraint::IsIn(t, _) => {
            t.to_string() == principal_ty
        }
        PrincipalConstraint::Eq(uid) => uid.type_name().to_string() == principal_ty,
        PrincipalConstraint::Any | PrincipalConstraint::In(_) => true,
    };
    let names = |uid: &EntityUid| {
        let name = uid.id().unescaped();
        name == action || groups.contains(name)
    };
    let action_matches = match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(uid) => uid.id().unescaped() == action,
        ActionConstraint::In(uids) => uids.iter().any(names),
    };
    let resource = match policy.resource_constraint() {
        ResourceConstraint::Is(t) | ResourceConstraint::IsIn(t, _) => t.to_string() == resource_ty,
        ResourceConstraint::Eq(uid) => uid.type_name().to_string() == resource_ty,
        ResourceConstraint::Any | ResourceConstraint::In(_) => true,
    };
    principal && action_matches && resource
}

/// The names of an action's groups (all its ancestors in the schema), or `None` for an action
/// the schema does not declare.
fn action_groups(actions: &HashMap<String, Entity>, action: &str) -> Option<BTreeSet<String>> {
    actions.get(action).map(|e| {
        let (_, _, ancestors) = e.clone().into_inner();
        ancestors
            .iter()
            .map(|uid| uid.id().unescaped().to_owned())
            .collect()
    })
}

/// The policies each kind of request can match. Cedar never evaluates the condition of a
/// policy whose scope does not match, so deciding with the subset gives the same decision,
/// reasons and errors as the whole set, evaluating a handful of policies instead of all.
fn index_by_request(
    set: &PolicySet,
    requestable: &[(String, (String, String))],
    actions: &HashMap<String, Entity>,
) -> Result<ByRequest, String> {
    let mut out: ByRequest = HashMap::new();
    for (action, (principal_ty, resource_ty)) in requestable {
        let groups = action_groups(actions, action).unwrap_or_default();
        let subset = PolicySet::from_policies(
            set.policies()
                .filter(|p| scope_can_match(p, principal_ty, action, &groups, resource_ty))
                .cloned(),
        )
        .map_err(|e| e.to_string())?;
        out.entry(action.clone()).or_default().push((
            principal_ty.clone(),
            resource_ty.clone(),
            subset,
        ));
    }
    Ok(out)
}

/// The `Keygate::Path` entities the policies name (in their scope or their conditions), or
/// the problems with them: each must be `<provider>:<canonical path>` (`local:/backups`), the
/// form keygate builds, or it could never match what it was written for (a forbid that never
/// fires) or match differently than the folder chain would.
fn path_literals(set: &PolicySet) -> Result<Vec<(String, String)>, Vec<String>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for policy in set.policies() {
        for uid in policy.entity_literals() {
            if uid.type_name().to_string() != "Keygate::Path" {
                continue;
            }
            let id = uid.id().unescaped();
            let canonical = id.split_once(':').filter(|(provider, path)| {
                crate::model::check_provider_name(provider).is_ok()
                    && path.starts_with('/')
                    && crate::route::check_name_path(path).is_ok_and(|c| c == *path)
            });
            match canonical {
                Some((provider, path)) => out.push((provider.to_owned(), path.to_owned())),
                None => problems.push(format!(
                    "policy {}: Keygate::Path::\"{id}\" is not a provider and a canonical path \
                     (such as \"local:/backups\"); it would never match a request",
                    policy.id()
                )),
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// The string literals a policy (as Cedar's JSON form) compares a `scopes` attribute with,
/// on either side of `contains`, `containsAny`, `containsAll`, `==` or `!=`. False when it
/// compares `scopes` with anything else (an attribute, a conditional): what such a policy
/// tests for cannot be checked against the schema.
fn scope_literals(est: &Value, out: &mut Vec<String>) -> bool {
    let is_scopes = |side: Option<&Value>| {
        side.and_then(|s| s.pointer("/./attr"))
            .and_then(Value::as_str)
            .is_some_and(|a| a == "scopes")
    };
    // The string literals of a literal operand: a string, or a set of strings.
    let literals = |side: Option<&Value>, out: &mut Vec<String>| -> bool {
        match side {
            Some(v) if v.get("Value").is_some_and(Value::is_string) => {
                out.extend(v["Value"].as_str().map(str::to_owned));
                true
            }
            Some(v) => match v.get("Set") {
                Some(Value::Array(set)) => set.iter().all(|item| {
                    let s = item.get("Value").and_then(Value::as_str);
                    out.extend(s.map(str::to_owned));
                    s.is_some()
                }),
                _ => false,
            },
            None => false,
        }
    };
    let mut ok = true;
    match est {
        Value::Object(o) => {
            for op in ["contains", "containsAny", "containsAll", "==", "!="] {
                let Some(call) = o.get(op) else { continue };
                let (left, right) = (call.get("left"), call.get("right"));
                if is_scopes(left) && !is_scopes(right) {
                    ok &= literals(right, out);
                } else if is_scopes(right) && !is_scopes(left) {
                    ok &= literals(left, out);
                }
            }
            for v in o.values() {
                ok &= scope_literals(v, out);
            }
        }
        Value::Array(a) => {
            for v in a {
                ok &= scope_literals(v, out);
            }
        }
        _ => {}
    }
    ok
}

/// The spellings `@scope("…")` gives scopes: (name → spelling, spelling → name). A spelling
/// must be a valid scope name, and no spelling may be another scope's name or spelling.
#[allow(clippy::type_complexity)]
fn scope_spellings(
    actions: Option<&serde_json::Map<String, Value>>,
    scopes: &[String],
) -> Result<(HashMap<String, String>, HashMap<String, String>), PolicyError> {
    let mut spelling = HashMap::new();
    let mut spelled: HashMap<String, String> = HashMap::new();
    let mut problems = Vec::new();
    for name in scopes {
        let Some(alias) = actions
            .and_then(|a| a.get(name))
            .and_then(|a| a.pointer("/annotations/scope"))
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty() && *a != name)
        else {
            continue;
        };
        let valid = alias.len() <= 64
            && alias.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.' | b'*')
            });
        if !valid {
            problems.push(format!(
                "@scope(\"{alias}\") on \"{name}\": a scope's spelling is letters, digits and - _ : . *"
            ));
        } else if scopes.iter().any(|s| s == alias) {
            problems.push(format!(
                "@scope(\"{alias}\") on \"{name}\": \"{alias}\" is the name of another scope"
            ));
        } else if let Some(other) = spelled.insert(alias.to_owned(), name.clone()) {
            problems.push(format!(
                "@scope(\"{alias}\") spells both \"{other}\" and \"{name}\""
            ));
        } else {
            spelling.insert(name.clone(), alias.to_owned());
        }
    }
    if problems.is_empty() {
        Ok((spelling, spelled))
    } else {
        Err(PolicyError::Invalid(problems.join("\n")))
    }
}

/// For each action, the nearest `@scope` group above it.
fn required_scopes(actions: &Entities, scopes: &[String]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for e in actions.iter() {
        let parents: Vec<String> = actions
            .ancestors(&e.uid())
            .into_iter()
            .flatten()
            .map(|p| p.id().unescaped().to_owned())
            .filter(|p| scopes.contains(p))
            .collect();
        // The nearest scope is the deepest: the one with the most ancestors of its own.
        let nearest = parents.iter().max_by_key(|p| {
            actions
                .ancestors(&uid("Keygate::Action", p))
                .map_or(0, |a| a.count())
        });
        if let Some(scope) = nearest {
            out.insert(e.uid().id().unescaped().to_owned(), scope.clone());
        }
    }
    out
}

impl Loaded {
    /// What a decision on `resource` depends on besides the principal, the action and the
    /// provider, as the decision cache's key.
    ///
    /// A policy can tell one path from another only by the entity ids it compares the
    /// resource with: the paths policies name (`path_literals`), the principal's grants and
    /// the folders on the way to them (`towardGrants`); a path entity's one attribute is its
    /// provider. So a path that is one of those, or above one of them, is decided as itself;
    /// any other path is decided like every other path below the same deepest named folder
    /// (or below none): its entities are theirs with only its own id changed, an id no policy
    /// and no attribute mentions. A new file in a folder already decided is a cache hit.
    fn decision_path(&self, principal: &Principal, resource: &Resource) -> DecisionPath {
        let provider: &str = &resource.provider;
        let path = resource.path.as_str();
        let granted = principal
            .grants
            .iter()
            .flatten()
            .map(|g| (g.provider.as_str(), g.base_path.as_str()));
        let named = self
            .path_literals
            .iter()
            .map(|(p, folder)| (p.as_str(), folder.as_str()));
        // `towardGrants` holds the folders on the way to each grant, built segment by segment;
        // a path among them (compared the same way, without building the list) is its own
        // class however its grant was spelled.
        let on_the_way = |base: &str| {
            let mut below = base.split('/').filter(|seg| !seg.is_empty());
            path.split('/')
                .filter(|seg| !seg.is_empty())
                .all(|seg| below.next() == Some(seg))
        };
        if principal
            .grants
            .iter()
            .flatten()
            .any(|g| g.provider == provider && on_the_way(&g.base_path))
        {
            return DecisionPath::Exactly(path.to_owned());
        }
        let mut deepest = "";
        for (_, folder) in granted.chain(named).filter(|(p, _)| *p == provider) {
            if is_within(folder, path) {
                return DecisionPath::Exactly(path.to_owned());
            }
            if is_within(path, folder) && folder.len() > deepest.len() {
                deepest = folder;
            }
        }
        DecisionPath::Below(deepest.to_owned())
    }

    /// Decides one target, uncached.
    fn decide(
        &self,
        authorizer: &Authorizer,
        principal: &Principal,
        action: &str,
        target: Target<'_>,
        workspace_of: &HashMap<String, String>,
    ) -> Verdict {
        let literals = &self.path_literals;
        self.decide_among(
            authorizer,
            principal,
            action,
            target,
            workspace_of,
            literals,
        )
    }

    /// [`Loaded::decide`], with the folders named by policies given (tests widen them to every
    /// folder above the path, which is the whole chain).
    fn decide_among(
        &self,
        authorizer: &Authorizer,
        principal: &Principal,
        action: &str,
        target: Target<'_>,
        workspace_of: &HashMap<String, String>,
        path_literals: &[(String, String)],
    ) -> Verdict {
        let deny_error = |what: String| {
            tracing::error!(error = %what, "policy evaluation failed; denying");
            Verdict {
                allowed: false,
                policies: Vec::new(),
                details: Map::from_iter([("restriction".to_owned(), Value::from("policy_error"))]),
                errored: true,
                shadow: None,
            }
        };
        let (mut entities, principal_uid, resource_uid) =
            match build_entities(principal, target, workspace_of, path_literals, &self.scopes) {
                Ok(x) => x,
                Err(e) => return deny_error(e),
            };
        match self.actions.get(action) {
            Some(a) => entities.push(a.clone()),
            None => return deny_error(format!("'{action}' is not an action of the schema")),
        }
        let entities = match Entities::from_entities(entities, None) {
            Ok(e) => e,
            Err(e) => return deny_error(e.to_string()),
        };
        let kind = Kind::of(principal, action, target);
        let Some(policies) = pick(&self.by_request, kind) else {
            return deny_error(format!(
                "the schema allows no '{action}' request by a {} on a {}",
                kind.principal, kind.resource
            ));
        };
        // Still validated against the schema: beyond the kind, that checks the (empty) context
        // against what the schema declares for the action, so a schema that makes an action
        // need context keygate does not send fails every such request closed. Skipping it
        // saved 0.6 % of a cold decision's instructions (docs/benchmarks.md).
        let request = match Request::new(
            principal_uid,
            uid("Keygate::Action", action),
            resource_uid,
            Context::empty(),
            Some(&self.schema),
        ) {
            Ok(r) => r,
            Err(e) => return deny_error(e.to_string()),
        };
        let response = authorizer.is_authorized(&request, policies, &entities);
        // The shadow set decides the same request and entities; like the enforced set, an
        // evaluation error is a deny.
        let shadow = self.shadow.as_ref().map(|full| {
            self.shadow_verdict(authorizer, &request, &entities, &response, kind)
                .unwrap_or_else(|| {
                    evaluate_shadow(authorizer, &request, full.for_kind(kind), &entities)
                })
        });
        // Cedar reports the determining policies as a set: sorted, the reasons (and the
        // restriction a 403 names) are the same on every run.
        let policies = sorted_reasons(&response);
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        if !errors.is_empty() {
            let mut v = deny_error(errors.join("; "));
            v.policies = policies;
            v.shadow = shadow;
            return v;
        }
        if response.decision() == Decision::Allow {
            return Verdict {
                allowed: true,
                policies,
                details: Map::new(),
                errored: false,
                shadow,
            };
        }
        let mut details = Map::new();
        let restriction = policies.iter().find_map(|p| self.restriction.get(p));
        match restriction {
            Some(r) => {
                details.insert("restriction".to_owned(), Value::from(r.as_str()));
            }
            None => {
                if let Some(scope) = self.required.get(action) {
                    details.insert("required".to_owned(), Value::from(self.spell(scope)));
                }
                let granted: Vec<String> = principal
                    .scopes
                    .iter()
                    .filter(|s| self.scopes.binary_search(s).is_ok())
                    .map(|s| self.spell(s).to_owned())
                    .collect();
                details.insert("granted".to_owned(), Value::from(granted));
                // A signed-in user holds no scopes: what it may do follows its role.
                if principal.kind == PrincipalKind::Login {
                    let role = principal.role.map_or("none", crate::model::Role::as_str);
                    details.insert("role".to_owned(), Value::from(role));
                }
            }
        }
        Verdict {
            allowed: false,
            policies,
            details,
            errored: false,
            shadow,
        }
    }
}

fn evaluate_shadow(
    authorizer: &Authorizer,
    request: &Request,
    set: &PolicySet,
    entities: &Entities,
) -> ShadowVerdict {
    let r = authorizer.is_authorized(request, set, entities);
    ShadowVerdict {
        allowed: r.decision() == Decision::Allow && r.diagnostics().errors().next().is_none(),
        policies: sorted_reasons(&r),
    }
}

impl Loaded {
    /// The shadow set's answer from the enforced set's and an evaluation of the shadow files'
    /// policies alone (S), when that suffices; `None` when the whole shadow set must be
    /// evaluated. Cedar allows when a permit holds and no forbid does, so with R the enforced
    /// policies S replaces:
    /// - a forbid of S holds: deny;
    /// - the enforced set allowed by permits P: the shadow set allows when (P − R) or a permit
    ///   of S holds;
    /// - the enforced set denied with no forbid holding: no enforced permit held either, so
    ///   the shadow set allows when a permit of S holds;
    /// - the enforced set denied by forbids F: deny when (F − R) is not empty; else the
    ///   enforced permits' state is unknown (`None`).
    ///
    /// Any evaluation error also gives `None`.
    fn shadow_verdict(
        &self,
        authorizer: &Authorizer,
        request: &Request,
        entities: &Entities,
        enforced: &cedar_policy::Response,
        kind: Kind<'_>,
    ) -> Option<ShadowVerdict> {
        if enforced.diagnostics().errors().next().is_some() {
            return None;
        }
        let own = authorizer.is_authorized(request, self.shadow_only.for_kind(kind), entities);
        if own.diagnostics().errors().next().is_some() {
            return None;
        }
        let own_reasons = sorted_reasons(&own);
        let enforced_reasons = sorted_reasons(enforced);
        let kept = |ids: Vec<String>| -> Vec<String> {
            ids.into_iter()
                .filter(|id| !self.shadow_ids.contains(id))
                .collect()
        };
        if own.decision() == Decision::Deny && !own_reasons.is_empty() {
            // A forbid of S holds; the enforced forbids that still hold deny with it.
            let mut policies = own_reasons;
            if enforced.decision() == Decision::Deny {
                policies.extend(kept(enforced_reasons));
                policies.sort();
            }
            return Some(ShadowVerdict {
                allowed: false,
                policies,
            });
        }
        // No forbid of S holds; `own_reasons` are the permits of S that hold.
        let permits = match enforced.decision() {
            Decision::Allow => kept(enforced_reasons),
            Decision::Deny if enforced_reasons.is_empty() => Vec::new(),
            Decision::Deny => {
                let forbids = kept(enforced_reasons);
                if forbids.is_empty() {
                    return None;
                }
                return Some(ShadowVerdict {
                    allowed: false,
                    policies: forbids,
                });
            }
        };
        let mut policies: Vec<String> = permits.into_iter().chain(own_reasons).collect();
        policies.sort();
        Some(ShadowVerdict {
            allowed: !policies.is_empty(),
            policies,
        })
    }
}

/// Cedar's determining policies, sorted (Cedar reports them as a set).
fn sorted_reasons(response: &cedar_policy::Response) -> Vec<String> {
    let mut policies: Vec<String> = response
        .diagnostics()
        .reason()
        .map(|p| p.to_string())
        .collect();
    policies.sort();
    policies
}

fn principal_type(kind: PrincipalKind) -> &'static str {
    match kind {
        PrincipalKind::ApiKey => "Keygate::ApiKey",
        PrincipalKind::ScopedToken => "Keygate::ScopedToken",
        PrincipalKind::Login => "Keygate::Login",
        PrincipalKind::Operator => "Keygate::Operator",
    }
}

fn path_id(provider: &str, path: &str) -> String {
    format!("{provider}:{path}")
}

/// True when canonical `path` is `folder` or lies below it, compared segment by segment.
fn is_within(path: &str, folder: &str) -> bool {
    if !folder.starts_with('/') {
        return false;
    }
    folder == "/"
        || path == folder
        || path
            .strip_prefix(folder)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The request's entities: the principal and the target (a path with the folders above it that
/// a decision can ask about, its provider and the provider's workspace; or a credential). No
/// database work.
///
/// A path's ancestors are only the folders that are a grant of the principal or named by a
/// policy (`path_literals`), chained from the shallowest: `resource in X` can only be asked of
/// those, so the answer is the one the whole folder chain would give, and building the
/// entities (and Cedar's transitive closure over them) costs the same at depth 3 and depth 200.
///
/// The principal's `scopes` are those it holds that the running set defines (`defined`,
/// sorted): a scope the policy files no longer define grants nothing, whatever policy still
/// names it.
fn build_entities(
    principal: &Principal,
    target: Target<'_>,
    workspace_of: &HashMap<String, String>,
    path_literals: &[(String, String)],
    defined: &[String],
) -> Result<(Vec<Entity>, EntityUid, EntityUid), String> {
    let mut entities = Vec::with_capacity(8);
    let workspace = uid("Keygate::Workspace", &principal.workspace_id);
    let role = match (principal.kind, principal.role) {
        (PrincipalKind::Operator, _) => "operator",
        (_, Some(r)) => r.as_str(),
        (_, None) => "none",
    };
    let (restricted, providers, grants) = match &principal.grants {
        None => (false, Vec::new(), Vec::new()),
        Some(list) => (
            true,
            list.iter()
                .map(|g| {
                    RestrictedExpression::new_entity_uid(uid("Keygate::Provider", &g.provider))
                })
                .collect(),
            list.iter()
                .map(|g| {
                    RestrictedExpression::new_entity_uid(uid(
                        "Keygate::Path",
                        &path_id(&g.provider, &g.base_path),
                    ))
                })
                .collect(),
        ),
    };
    let principal_uid = uid(principal_type(principal.kind), &principal.key_id);
    let attrs = HashMap::from([
        (
            "owner".to_owned(),
            RestrictedExpression::new_entity_uid(uid("Keygate::User", &principal.user_id)),
        ),
        (
            "workspace".to_owned(),
            RestrictedExpression::new_entity_uid(workspace.clone()),
        ),
        (
            "role".to_owned(),
            RestrictedExpression::new_string(role.to_owned()),
        ),
        (
            "scopes".to_owned(),
            RestrictedExpression::new_set(
                principal
                    .scopes
                    .iter()
                    .filter(|s| defined.binary_search(s).is_ok())
                    .map(|s| RestrictedExpression::new_string(s.clone())),
            ),
        ),
        (
            "restricted".to_owned(),
            RestrictedExpression::new_bool(restricted),
        ),
        (
            "providers".to_owned(),
            RestrictedExpression::new_set(providers),
        ),
        ("grants".to_owned(), RestrictedExpression::new_set(grants)),
        (
            "towardGrants".to_owned(),
            RestrictedExpression::new_set(principal.toward_grants().into_iter().map(
                |(provider, path)| {
                    RestrictedExpression::new_entity_uid(uid(
                        "Keygate::Path",
                        &path_id(provider, &path),
                    ))
                },
            )),
        ),
        (
            "credential".to_owned(),
            RestrictedExpression::new_entity_uid(uid("Keygate::Credential", &principal.key_id)),
        ),
    ]);
    entities.push(
        Entity::new(principal_uid.clone(), attrs, HashSet::new()).map_err(|e| e.to_string())?,
    );
    // The principal's own credential, with the attributes the schema promises, so that a
    // policy reading `principal.credential.owner` gets an answer and not an error (unless the
    // target is that credential, built below).
    let target_is_own = matches!(target, Target::Credential { id, .. } if id == principal.key_id);
    if !target_is_own {
        let attrs = HashMap::from([
            (
                "owner".to_owned(),
                RestrictedExpression::new_entity_uid(uid("Keygate::User", &principal.user_id)),
            ),
            (
                "workspace".to_owned(),
                RestrictedExpression::new_entity_uid(workspace.clone()),
            ),
        ]);
        entities.push(
            Entity::new(
                uid("Keygate::Credential", &principal.key_id),
                attrs,
                HashSet::new(),
            )
            .map_err(|e| e.to_string())?,
        );
    }
    entities.push(Entity::new_no_attrs(
        uid("Keygate::User", &principal.user_id),
        HashSet::new(),
    ));
    entities.push(Entity::new_no_attrs(workspace, HashSet::new()));

    let resource = match target {
        Target::Path(resource) => resource,
        Target::Unmapped(path) => {
            let uid = uid("Keygate::Unmapped", path);
            entities.push(Entity::new_no_attrs(uid.clone(), HashSet::new()));
            return Ok((entities, principal_uid, uid));
        }
        Target::Service => {
            let uid = uid("Keygate::Service", "keygate");
            entities.push(Entity::new_no_attrs(uid.clone(), HashSet::new()));
            return Ok((entities, principal_uid, uid));
        }
        Target::Credential {
            id,
            owner,
            workspace,
        } => {
            let credential = uid("Keygate::Credential", id);
            let attrs = HashMap::from([
                (
                    "owner".to_owned(),
                    RestrictedExpression::new_entity_uid(uid("Keygate::User", owner)),
                ),
                (
                    "workspace".to_owned(),
                    RestrictedExpression::new_entity_uid(uid("Keygate::Workspace", workspace)),
                ),
            ]);
            entities.push(
                Entity::new(credential.clone(), attrs, HashSet::new())
                    .map_err(|e| e.to_string())?,
            );
            if owner != principal.user_id {
                entities.push(Entity::new_no_attrs(
                    uid("Keygate::User", owner),
                    HashSet::new(),
                ));
            }
            if workspace != principal.workspace_id {
                entities.push(Entity::new_no_attrs(
                    uid("Keygate::Workspace", workspace),
                    HashSet::new(),
                ));
            }
            return Ok((entities, principal_uid, credential));
        }
    };
    let provider = uid("Keygate::Provider", &resource.provider);
    let provider_parents: HashSet<EntityUid> = workspace_of
        .get(&*resource.provider)
        .map(|ws| uid("Keygate::Workspace", ws))
        .into_iter()
        .collect();
    for ws in &provider_parents {
        entities.push(Entity::new_no_attrs(ws.clone(), HashSet::new()));
    }
    entities.push(Entity::new_no_attrs(provider.clone(), provider_parents));

    // The folders above the resource that a decision can ask about, shallowest first, each
    // the parent of the next; the resource itself last.
    let provider_name: &str = &resource.provider;
    let granted = principal
        .grants
        .iter()
        .flatten()
        .map(|g| (g.provider.as_str(), g.base_path.as_str()));
    let named = path_literals
        .iter()
        .map(|(p, path)| (p.as_str(), path.as_str()));
    let mut chain: Vec<&str> = granted
        .chain(named)
        .filter(|(p, folder)| *p == provider_name && is_within(&resource.path, folder))
        .map(|(_, folder)| folder)
        .filter(|folder| *folder != resource.path)
        .collect();
    chain.sort_by_key(|folder| folder.len());
    chain.dedup();
    chain.push(&resource.path);
    let provider_attr = HashMap::from([(
        "provider".to_owned(),
        RestrictedExpression::new_entity_uid(provider.clone()),
    )]);
    let mut parent: EntityUid = provider;
    for folder in chain {
        let this = uid("Keygate::Path", &path_id(provider_name, folder));
        entities.push(
            Entity::new(
                this.clone(),
                provider_attr.clone(),
                HashSet::from([parent.clone()]),
            )
            .map_err(|e| e.to_string())?,
        );
        parent = this;
    }
    let resource_uid = parent;
    Ok((entities, principal_uid, resource_uid))
}

impl PolicyEngine {
    /// Loads the folder; an invalid set is an error (keygate refuses to start on one).
    pub fn load(dir: &Path, metrics: Arc<Metrics>) -> Result<PolicyEngine, PolicyError> {
        let engine = PolicyEngine::with(Some(dir.to_path_buf()), load_dir(dir, 1)?, metrics)?;
        engine.note_running();
        Ok(engine)
    }

    /// Loads a version published to the database; an invalid set is an error. Call
    /// `note_running` once it is the set this instance runs.
    pub fn load_published(
        version: i64,
        files: &[(String, String)],
        metrics: Arc<Metrics>,
    ) -> Result<PolicyEngine, PolicyError> {
        let mut loaded = load_texts(files, 1)?;
        loaded.version = Some(version);
        PolicyEngine::with(None, loaded, metrics)
    }

    fn with(
        dir: Option<PathBuf>,
        loaded: Loaded,
        metrics: Arc<Metrics>,
    ) -> Result<PolicyEngine, PolicyError> {
        loaded.servable().map_err(PolicyError::Invalid)?;
        Ok(PolicyEngine {
            dir,
            current: ArcSwap::from_pointee(loaded),
            last_error: Mutex::new(None),
            reload_lock: Mutex::new(()),
            required_actions: Mutex::new(Vec::new()),
            required_scopes: Mutex::new(Vec::new()),
            inert: Mutex::new((Vec::new(), 0)),
            // Bounded in bytes, not entries: a key holds a client-chosen path (up to 8 KiB).
            decisions: Cache::builder()
                .weigher(|k: &DecisionKey, v: &Arc<Verdict>| {
                    let verdict: usize = v.policies.iter().map(String::len).sum();
                    u32::try_from(k.path.len() + k.principal.len() + verdict + 256)
                        .unwrap_or(u32::MAX)
                })
                .max_capacity(DECISION_CACHE_BYTES)
                .time_to_live(Duration::from_secs(600))
                .build(),
            providers: ArcSwap::from_pointee(HashMap::new()),
            directory_version: AtomicU64::new(0),
            authorizer: Authorizer::new(),
            metrics,
        })
    }

    pub fn current(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// The provider directory decisions are made with (provider name → workspace id).
    pub fn providers(&self) -> HashMap<String, String> {
        (**self.providers.load()).clone()
    }

    /// Replaces the provider → workspace directory when it changed.
    pub fn set_providers(&self, providers: HashMap<String, String>) {
        if **self.providers.load() != providers {
            self.providers.store(Arc::new(providers));
            self.directory_version.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Re-reads the folder. A set that fails keeps the last good one running.
    /// Requires every action in `names` (the route table's) in this and every later policy
    /// set; fails, naming the missing ones, when the running set lacks any.
    pub fn require_actions(&self, names: Vec<String>) -> Result<(), String> {
        let missing = self.current.load().missing_actions(&names);
        *self
            .required_actions
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = names;
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing_message(&missing))
        }
    }

    /// Requires every scope in `names` (the rate-limit rules') to be `@scope` in this and
    /// every later policy set; fails, naming the missing ones, when the running set lacks any.
    pub fn require_scopes(&self, names: Vec<String>) -> Result<(), String> {
        let missing = self.current.load().missing_scopes(&names);
        *self
            .required_scopes
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = names;
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing_scopes_message(&missing))
        }
    }

    /// Shows the set loaded at start in the metrics (epoch, version, hash).
    pub fn note_running(&self) {
        let current = self.current.load_full();
        self.metrics.policy_epoch.set(current.epoch as i64);
        note_running(&self.metrics, None, &current);
    }

    /// Whether the policies are published to the database (rather than read from a folder).
    pub fn is_published(&self) -> bool {
        self.dir.is_none()
    }

    /// Re-reads the folder. A set that fails keeps the last good one running. With published
    /// policies there is no folder: the running version stays (`install` loads a new one).
    pub fn reload(&self) -> Result<u64, String> {
        match self.dir.clone() {
            Some(dir) => self.swap_in(None, |epoch| load_dir(&dir, epoch)),
            None => Ok(self.current.load().epoch),
        }
    }

    /// Installs a published version. A set that fails keeps the last good one running.
    pub fn install(&self, version: i64, files: &[(String, String)]) -> Result<u64, String> {
        self.swap_in(Some(version), |epoch| load_texts(files, epoch))
    }

    fn swap_in(
        &self,
        version: Option<i64>,
        load: impl FnOnce(u64) -> Result<Loaded, PolicyError>,
    ) -> Result<u64, String> {
        let _guard = self.reload_lock.lock().unwrap_or_else(|e| e.into_inner());
        let next_epoch = self.current.load().epoch + 1;
        let required = self
            .required_actions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let required_scopes = self
            .required_scopes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let loaded = load(next_epoch).and_then(|mut loaded| {
            loaded.version = version;
            loaded.servable().map_err(PolicyError::Invalid)?;
            let missing = loaded.missing_actions(&required);
            if !missing.is_empty() {
                return Err(PolicyError::Invalid(missing_message(&missing)));
            }
            let missing = loaded.missing_scopes(&required_scopes);
            if !missing.is_empty() {
                return Err(PolicyError::Invalid(missing_scopes_message(&missing)));
            }
            Ok(loaded)
        });
        match loaded {
            Ok(loaded) => {
                if loaded.hash == self.current.load().hash && version.is_none() {
                    *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    self.metrics
                        .policy_reloads
                        .with_label_values(&["unchanged"])
                        .inc();
                    self.metrics.policy_reload_failing.set(0);
                    return Ok(self.current.load().epoch);
                }
                let previous = self.current.load_full();
                note_running(&self.metrics, Some(previous.as_ref()), &loaded);
                self.current.store(Arc::new(loaded));
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                self.metrics.policy_reloads.with_label_values(&["ok"]).inc();
                self.metrics.policy_reload_failing.set(0);
                self.metrics.policy_epoch.set(next_epoch as i64);
                tracing::info!(epoch = next_epoch, "policies reloaded");
                Ok(next_epoch)
            }
            Err(e) => {
                let message = e.to_string();
                tracing::error!(error = %message, "policy reload rejected; the last good set keeps running");
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(message.clone());
                self.metrics
                    .policy_reloads
                    .with_label_values(&["error"])
                    .inc();
                self.metrics.policy_reload_failing.set(1);
                Err(message)
            }
        }
    }

    pub fn status(&self) -> PolicyStatus {
        let c = self.current.load();
        let (inert_scopes, inert_credentials) =
            self.inert.lock().unwrap_or_else(|e| e.into_inner()).clone();
        PolicyStatus {
            epoch: c.epoch,
            hash: c.hash.clone(),
            files: c.files.clone(),
            dir: self
                .dir
                .as_ref()
                .map_or_else(|| "database".to_owned(), |d| d.display().to_string()),
            version: c.version,
            loaded_at: crate::clock::format_time(c.loaded_at),
            policies: c.listed.clone(),
            inert_scopes,
            inert_credentials,
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// The decide stage: every resource of the request must be allowed.
    pub fn decide(&self, principal: &Principal, route: &RouteMatch) -> Decided {
        let loaded = self.current.load();
        let providers = self.providers.load();
        let directory = self.directory_version.load(Ordering::Relaxed);
        // INVARIANT: a GraphQL route is decided only once its body's operation is applied.
        if route.graphql.is_some() {
            return Decided {
                verdicts: Vec::new(),
                refusal: Some(Refusal::Unavailable(
                    "a GraphQL request was decided before its operation was read".into(),
                )),
                shadow: None,
            };
        }
        let checks = route.checks();
        let mut verdicts = Vec::with_capacity(checks.len());
        let mut refusal = None;
        // The shadow set's answer over the resources: allowed while every one is.
        let mut shadow = loaded.shadow.as_ref().map(|_| ShadowVerdict {
            allowed: true,
            policies: Vec::new(),
        });
        for check in checks {
            let (action, resource) = match check {
                Check::Path(action, resource) => (action, resource),
                // Named by the client (a path no route maps, a GraphQL field): uncached.
                Check::Unmapped(action, name) => {
                    let v = Arc::new(self.decide_counted(
                        &loaded,
                        &providers,
                        principal,
                        action,
                        Target::Unmapped(name),
                    ));
                    if self.fold(&mut shadow, &mut refusal, &mut verdicts, v) {
                        break;
                    }
                    continue;
                }
            };
            let key = DecisionKey {
                principal: principal.key_id.clone(),
                generation: principal.generation,
                action: action.clone(),
                provider: resource.provider.clone(),
                path: loaded.decision_path(principal, resource),
                epoch: loaded.epoch,
                directory,
            };
            let verdict = match self.decisions.get(&key) {
                Some(v) => {
                    self.metrics.decision_hit.inc();
                    v
                }
                None => {
                    self.metrics.decision_miss.inc();
                    let v = Arc::new(self.decide_counted(
                        &loaded,
                        &providers,
                        principal,
                        action,
                        Target::Path(resource),
                    ));
                    // An erroring decision is not cached: the next request tries again.
                    if !v.errored {
                        self.decisions.insert(key, v.clone());
                    }
                    v
                }
            };
            if self.fold(&mut shadow, &mut refusal, &mut verdicts, verdict) {
                break;
            }
        }
        let shadow = shadow
            .filter(|s| s.allowed != refusal.is_none())
            .map(|s| self.disagreement(&loaded, s));
        Decided {
            verdicts,
            refusal,
            shadow,
        }
    }

    /// Adds one verdict to a request's: the first denial is the refusal, and the shadow set's
    /// answer is allowed while every verdict's is. Returns whether deciding may stop (denied,
    /// unless the shadow set allowed everything so far: its answer needs the rest).
    fn fold(
        &self,
        shadow: &mut Option<ShadowVerdict>,
        refusal: &mut Option<Refusal>,
        verdicts: &mut Vec<Arc<Verdict>>,
        verdict: Arc<Verdict>,
    ) -> bool {
        if let Some(total) = shadow {
            // A verdict without a shadow answer failed before Cedar ran: the shadow set
            // would have denied it too.
            let denied = ShadowVerdict {
                allowed: false,
                policies: Vec::new(),
            };
            let this = verdict.shadow.as_ref().unwrap_or(&denied);
            if total.allowed && !this.allowed {
                *total = this.clone();
            } else if total.allowed {
                total.policies.extend(this.policies.iter().cloned());
            }
        }
        if refusal.is_none() {
            if !verdict.allowed {
                *refusal = Some(Refusal::Forbidden(verdict.details.clone()));
            }
            verdicts.push(verdict);
        }
        refusal.is_some() && shadow.as_ref().is_none_or(|s| !s.allowed)
    }

    /// Counts a request the shadow set decides differently and names the shadow policy held
    /// responsible: the first of its determining policies written in `shadow/`; else (a
    /// replaced policy no longer applies) the only shadow policy, or `other`. The label's
    /// values are policy ids from the files: bounded by the folder, never by clients.
    fn disagreement(&self, loaded: &Loaded, s: ShadowVerdict) -> ShadowDisagreement {
        let direction = if s.allowed {
            "would_allow"
        } else {
            "would_deny"
        };
        let policy = s
            .policies
            .iter()
            .find(|p| loaded.shadow_ids.contains(*p))
            .cloned()
            .or_else(|| {
                (loaded.shadow_ids.len() == 1)
                    .then(|| loaded.shadow_ids.iter().next().cloned())
                    .flatten()
            })
            .unwrap_or_else(|| "other".to_owned());
        self.metrics
            .shadow_disagreements
            .with_label_values(&[direction, &policy])
            .inc();
        let mut policies = s.policies;
        policies.sort();
        policies.dedup();
        ShadowDisagreement {
            direction,
            policy,
            policies,
        }
    }

    /// Decides without the cache (for `policy explain` and scenario tests).
    pub fn decide_uncached(&self, principal: &Principal, route: &RouteMatch) -> Vec<Verdict> {
        let loaded = self.current.load();
        let providers = self.providers.load();
        route
            .checks()
            .into_iter()
            .map(|check| {
                let (action, target) = match check {
                    Check::Path(action, r) => (action, Target::Path(r)),
                    Check::Unmapped(action, name) => (action, Target::Unmapped(name)),
                };
                loaded.decide(&self.authorizer, principal, action, target, &providers)
            })
            .collect()
    }

    /// Decides an action on a target that is not a storage path: a credential (management)
    /// or keygate itself (operating). Uncached: these are rare.
    pub fn decide_on(&self, principal: &Principal, action: &str, target: Target<'_>) -> Verdict {
        let loaded = self.current.load();
        let providers = self.providers.load();
        self.decide_counted(&loaded, &providers, principal, action, target)
    }

    /// Decides one target on `loaded`, uncached, counting an evaluation error.
    fn decide_counted(
        &self,
        loaded: &Loaded,
        providers: &HashMap<String, String>,
        principal: &Principal,
        action: &str,
        target: Target<'_>,
    ) -> Verdict {
        let v = loaded.decide(&self.authorizer, principal, action, target, providers);
        if v.errored {
            self.metrics.policy_errors.inc();
        }
        v
    }
}

impl PolicyEngine {
    /// Applies the decision cache's deferred bookkeeping now (see
    /// `Keygate::run_pending_cache_tasks`).
    pub fn run_pending_cache_tasks(&self) {
        self.decisions.run_pending_tasks();
    }

    /// For each of `groups` (scopes or permissions), the actions in it that `principal` (a
    /// credential about to be issued) could never do because of its owner's role: those the
    /// policies deny it with a forbid marked `@restriction("role")`. Groups with none are left
    /// out. Each action the schema lets the principal's type request is decided once, on a
    /// resource of each type it applies to (a path, or another user's key in the principal's
    /// workspace); the role forbids hold whatever the resource.
    pub fn beyond_role(
        &self,
        principal: &Principal,
        groups: &[String],
    ) -> Vec<(String, Vec<String>)> {
        let loaded = self.current.load();
        let providers = self.providers.load();
        let principal_ty = principal_type(principal.kind);
        let probe_path = Resource {
            role: crate::route::ResourceRole::Source,
            provider: Arc::from("role-check"),
            path: "/".to_owned(),
        };
        let mut beyond: Vec<String> = Vec::new();
        for (action, (principal_of, resource_ty)) in &loaded.requestable {
            if principal_of != principal_ty || !groups.iter().any(|g| loaded.in_group(action, g)) {
                continue;
            }
            let target = match resource_ty.as_str() {
                "Keygate::Path" => Target::Path(&probe_path),
                "Keygate::Credential" => Target::Credential {
                    id: "role-check",
                    owner: "role-check-owner",
                    workspace: &principal.workspace_id,
                },
                "Keygate::Service" => Target::Service,
                _ => continue,
            };
            let v = loaded.decide(&self.authorizer, principal, action, target, &providers);
            let by_role = v
                .policies
                .iter()
                .any(|p| loaded.restriction.get(p).is_some_and(|r| r == "role"));
            if !v.allowed && by_role && !beyond.contains(action) {
                beyond.push(action.clone());
            }
        }
        groups
            .iter()
            .map(|g| {
                let actions: Vec<String> = beyond
                    .iter()
                    .filter(|a| loaded.in_group(a, g))
                    .cloned()
                    .collect();
                (g.clone(), actions)
            })
            .filter(|(_, actions)| !actions.is_empty())
            .collect()
    }

    /// Records the last check for credentials holding scopes the set does not define.
    pub fn set_inert(&self, listed: Vec<InertScopes>, count: usize) {
        *self.inert.lock().unwrap_or_else(|e| e.into_inner()) = (listed, count);
        self.metrics.inert_scope_credentials.set(count as i64);
    }

    /// The scopes a key or token may be granted: the schema's action groups marked `@scope`,
    /// sorted.
    pub fn scopes(&self) -> Vec<String> {
        self.current.load().scopes.clone()
    }

    /// Checks scopes as clients write them (names, or the deployment's spellings) and
    /// returns their names, without repeats; an unknown one is refused, naming the scopes in
    /// the deployment's spelling.
    pub fn parse_scopes(&self, given: &[String]) -> Result<Vec<String>, String> {
        let loaded = self.current.load();
        let names: Vec<String> = given
            .iter()
            .map(|s| loaded.scope_named(s.trim()).unwrap_or(s.trim()).to_owned())
            .collect();
        crate::model::parse_scopes(&names, &loaded.scopes).map_err(|e| {
            let spelled: Vec<&str> = loaded.scopes.iter().map(|s| loaded.spell(s)).collect();
            e.replacen(&loaded.scopes.join(", "), &spelled.join(", "), 1)
        })
    }

    /// `names` as clients see them: each in the deployment's spelling.
    pub fn spell_scopes(&self, names: &[String]) -> Vec<String> {
        let loaded = self.current.load();
        names.iter().map(|s| loaded.spell(s).to_owned()).collect()
    }
}

/// What each verdict of [`PolicyEngine::decide_uncached`] is about, in the same order:
/// `provider:/path` for each resource (the route's, then the ones it also needs), or
/// `unmapped:<path>` for a request no route maps to a storage path.
pub fn decided_targets(route: &RouteMatch) -> Vec<String> {
    route
        .checks()
        .into_iter()
        .map(|check| match check {
            Check::Path(_, r) => format!("{}:{}", r.provider, r.path),
            Check::Unmapped(_, name) => format!("unmapped:{name}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_comparing_scopes_are_checked_against_the_schema() {
        let literals = |policy: &str| {
            let p: cedar_policy::Policy = policy.parse().unwrap();
            let mut out = Vec::new();
            let ok = scope_literals(&p.to_json().unwrap(), &mut out);
            out.sort();
            (ok, out)
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            literals("forbid (principal, action, resource) when { [\"legacy:write\", \"x\"].containsAny(principal.scopes) };"),
            (true, s(&["legacy:write", "x"]))
        );
        assert_eq!(
            literals("permit (principal, action, resource) when { principal.scopes.containsAll([\"a\"]) || principal.scopes == [\"b\"] || principal.scopes.contains(\"c\") };"),
            (true, s(&["a", "b", "c"]))
        );
        assert!(!literals("permit (principal, action, resource) when { principal.scopes.contains(principal.role) };").0);
        assert_eq!(
            literals("permit (principal, action, resource) when { principal.role == \"admin\" };"),
            (true, s(&[]))
        );
    }

    fn shipped() -> Vec<(String, String)> {
        SHIPPED
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect()
    }

    #[test]
    fn the_shipped_policies_validate_strictly() {
        let loaded = load_texts(&shipped(), 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            loaded.required.get("readFile").map(String::as_str),
            Some("files:read")
        );
        assert_eq!(
            loaded.required.get("deleteFile").map(String::as_str),
            Some("files:delete")
        );
        assert_eq!(
            loaded
                .restriction
                .get("outside-base-path")
                .map(String::as_str),
            Some("base_path")
        );
    }

    #[test]
    fn the_scope_catalog_reads_the_hierarchy_of_the_schema() {
        let loaded = load_texts(&shipped(), 1).unwrap_or_else(|e| panic!("{e}"));
        let catalog = loaded.scope_catalog();
        let scope = |name: &str| {
            catalog
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("{name} is not listed"))
        };
        assert_eq!(scope("files:read").actions, ["readFile"]);
        assert!(scope("files:read").includes.is_empty());
        let write = scope("write");
        for within in ["read", "files:read", "files:write", "files:delete"] {
            assert!(write.includes.iter().any(|s| s == within), "{within}");
        }
        assert!(!write.includes.iter().any(|s| s == "admin" || s == "write"));
        assert!(write.actions.iter().any(|a| a == "deleteFile"));
        assert!(!scope("read").actions.iter().any(|a| a == "deleteFile"));
        // A group that is no scope (level:write) is never offered.
        assert!(!catalog.iter().any(|s| s.name == "level:write"));
    }

    #[test]
    fn problems_point_at_file_and_line() {
        let mut files = shipped();
        files.push((
            "broken.cedar".into(),
            "@id(\"ok\")\npermit (principal, action, resource);\n\n@id(\"typo\")\npermit (principal, action, resource)\nwhen { principal.scopez.contains(\"read\") };\n".into(),
        ));
        let err = load_texts(&files, 1).err().expect("invalid").to_string();
        assert!(err.contains("broken.cedar:"), "{err}");
        assert!(err.contains("scopez"), "{err}");

        let mut files = shipped();
        files.push((
            "syntax.cedar".into(),
            "@id(\"x\")\npermit (principal, action, resource\n".into(),
        ));
        let err = load_texts(&files, 1).err().expect("invalid").to_string();
        assert!(err.contains("syntax.cedar:"), "{err}");

        let mut files = shipped();
        files.push((
            "noid.cedar".into(),
            "\n\npermit (principal, action, resource);\n".into(),
        ));
        let err = load_texts(&files, 1).err().expect("invalid").to_string();
        assert!(
            err.contains("noid.cedar:3:1: every policy needs an @id"),
            "{err}"
        );

        let mut files = shipped();
        files.push((
            "dup.cedar".into(),
            "@id(\"scope-read\")\npermit (principal, action, resource);\n".into(),
        ));
        let err = load_texts(&files, 1).err().expect("invalid").to_string();
        assert!(err.contains("already used in scopes.cedar"), "{err}");
    }

    fn principal(grants: Option<Vec<crate::model::Grant>>, scopes: &[&str]) -> Principal {
        Principal {
            kind: PrincipalKind::ApiKey,
            key_id: "k1".into(),
            user_id: "u1".into(),
            user_email: "ada@example.com".into(),
            workspace_id: "w1".into(),
            workspace: "acme".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            grants,
            role: Some(crate::model::Role::Admin),
            expires_at: None,
            generation: 1,
            usage: Default::default(),
        }
    }

    #[test]
    fn path_literals_must_be_canonical() {
        for bad in [
            "local:",
            "local:/secret/",
            "local:secret",
            "local://a",
            "Local:/a",
            "local:/a/../b",
        ] {
            let mut files = shipped();
            files.push((
                "bad.cedar".into(),
                format!("@id(\"x\")\npermit (principal, action, resource in Keygate::Path::\"{bad}\");\n"),
            ));
            let err = load_texts(&files, 1).err().map(|e| e.to_string());
            assert!(
                err.as_deref().is_some_and(|e| e.contains("canonical path")),
                "{bad}: {err:?}"
            );
        }
        assert!(!is_within("/a", ""));
        assert!(is_within("/a/b", "/a") && !is_within("/ab", "/a") && is_within("/x", "/"));
    }

    /// A decision that fails before Cedar runs (here an action the schema lacks) is a deny for
    /// the shadow set too: no disagreement is counted.
    #[test]
    fn a_decision_that_fails_before_cedar_is_no_shadow_disagreement() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in SHIPPED {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        std::fs::create_dir(dir.path().join(SHADOW_DIR)).unwrap();
        std::fs::write(
            dir.path().join(SHADOW_DIR).join("c.cedar"),
            "@id(\"anything\")\npermit (principal, action, resource);\n",
        )
        .unwrap();
        let engine = PolicyEngine::load(dir.path(), Arc::new(Metrics::new())).unwrap();
        engine.set_providers(HashMap::from([("local".to_owned(), "w1".to_owned())]));
        let route = RouteMatch {
            resources: vec![Resource {
                role: crate::route::ResourceRole::Source,
                provider: "local".into(),
                path: "/a".to_owned(),
            }],
            ..RouteMatch::new(Arc::from("noSuchAction"), "/a".to_owned())
        };
        let decided = engine.decide(&principal(None, &["admin"]), &route);
        assert!(decided.refusal.is_some());
        assert_eq!(decided.shadow, None);
        // A real disagreement on the same engine is still seen.
        let route = RouteMatch {
            action: Arc::from("readFile"),
            ..route
        };
        let decided = engine.decide(&principal(None, &[]), &route);
        assert!(decided.refusal.is_some());
        assert_eq!(decided.shadow.map(|s| s.direction), Some("would_allow"));
    }

    /// A signed-in user holds no scopes: a 403 for want of a permit names the role beside the
    /// required scope (here with roles.cedar left out, so no role permits anything).
    #[test]
    fn a_login_denied_for_want_of_a_permit_is_told_its_role() {
        let files: Vec<(String, String)> = shipped()
            .into_iter()
            .filter(|(name, _)| name != "roles.cedar")
            .collect();
        let loaded = load_texts(&files, 1).unwrap_or_else(|e| panic!("{e}"));
        let mut p = principal(None, &[]);
        p.kind = PrincipalKind::Login;
        p.role = Some(crate::model::Role::Viewer);
        let resource = Resource {
            role: crate::route::ResourceRole::Source,
            provider: "local".into(),
            path: "/a".to_owned(),
        };
        let v = loaded.decide(
            &Authorizer::new(),
            &p,
            "readFile",
            Target::Path(&resource),
            &HashMap::from([("local".to_owned(), "w1".to_owned())]),
        );
        assert!(!v.allowed);
        assert_eq!(
            Value::Object(v.details),
            serde_json::json!({"required": "files:read", "granted": [], "role": "viewer"})
        );
    }

    /// Deciding with the policies indexed by kind of request gives the same verdicts (decision,
    /// reasons, details) as deciding with the whole set, for every kind of principal and
    /// every action and target the schema allows.
    #[test]
    fn the_policies_indexed_by_request_decide_like_the_whole_set() {
        let indexed = load_texts(&shipped(), 1).unwrap_or_else(|e| panic!("{e}"));
        let mut whole = load_texts(&shipped(), 1).unwrap_or_else(|e| panic!("{e}"));
        for kinds in whole.by_request.values_mut() {
            for (_, _, set) in kinds {
                *set = whole.policies.clone();
            }
        }
        let authorizer = Authorizer::new();
        let workspace_of = HashMap::from([("local".to_owned(), "w1".to_owned())]);
        let grant = |b: &str| crate::model::Grant {
            provider: "local".into(),
            base_path: b.into(),
        };
        let mut principals = Vec::new();
        for kind in [
            PrincipalKind::ApiKey,
            PrincipalKind::ScopedToken,
            PrincipalKind::Login,
        ] {
            for role in [
                None,
                Some(crate::model::Role::Viewer),
                Some(crate::model::Role::Editor),
                Some(crate::model::Role::Admin),
            ] {
                for scopes in [vec![], vec!["admin"], vec!["read", "files.write"]] {
                    for grants in [None, Some(vec![grant("/a")])] {
                        let mut p = principal(grants, &scopes);
                        p.kind = kind;
                        p.role = role;
                        principals.push(p);
                    }
                }
            }
        }
        principals.push(Principal::operator());
        // Paths inside, at, above and beside the grant's base path, deep, and on a provider
        // the directory does not know.
        let resources: Vec<Resource> = [
            ("local", "/a/x"),
            ("local", "/a"),
            ("local", "/"),
            ("local", "/ab/x"),
            (
                "local",
                "/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/u/v/w/x/y/z.txt",
            ),
            ("local", "/a/caf\u{e9}/\u{65e5}\u{672c}.txt"),
            ("elsewhere", "/a/x"),
        ]
        .into_iter()
        .map(|(provider, path)| Resource {
            role: crate::route::ResourceRole::Source,
            provider: provider.into(),
            path: path.to_owned(),
        })
        .collect();
        let mut decided = 0;
        for p in &principals {
            for (action, (principal_ty, resource_ty)) in &indexed.requestable {
                if principal_ty != principal_type(p.kind) {
                    continue;
                }
                let targets = match resource_ty.as_str() {
                    "Keygate::Path" => resources.iter().map(Target::Path).collect(),
                    "Keygate::Unmapped" => vec![Target::Unmapped("/status")],
                    "Keygate::Service" => vec![Target::Service],
                    _ => vec![
                        Target::Credential {
                            id: "other",
                            owner: "u2",
                            workspace: "w1",
                        },
                        Target::Credential {
                            id: &p.key_id,
                            owner: &p.user_id,
                            workspace: &p.workspace_id,
                        },
                    ],
                };
                for target in targets {
                    let a = indexed.decide(&authorizer, p, action, target, &workspace_of);
                    let b = whole.decide(&authorizer, p, action, target, &workspace_of);
                    assert_eq!(a, b, "{action} {target:?} {:?} {:?}", p.kind, p.scopes);
                    decided += 1;
                }
            }
        }
        assert!(decided > 1000, "{decided}");
    }

    /// Requests are not validated against the schema one by one; a kind of request the schema
    /// does not list (here a data action on the service, and a management action by a key on
    /// a path) is still refused, as Cedar's request validation refused it, even by an
    /// operator whom every listed request is allowed.
    #[test]
    fn a_kind_of_request_the_schema_does_not_list_is_denied() {
        let loaded = load_texts(&shipped(), 1).unwrap_or_else(|e| panic!("{e}"));
        let authorizer = Authorizer::new();
        let workspace_of = HashMap::from([("local".to_owned(), "w1".to_owned())]);
        let resource = Resource {
            role: crate::route::ResourceRole::Source,
            provider: "local".into(),
            path: "/a".to_owned(),
        };
        let operator = Principal::operator();
        let key = principal(None, &["admin"]);
        for (p, action, target) in [
            (&operator, "readFile", Target::Service),
            (&key, "revokeKey", Target::Path(&resource)),
        ] {
            let v = loaded.decide(&authorizer, p, action, target, &workspace_of);
            assert!(!v.allowed && v.errored, "{action} {target:?}: {v:?}");
            assert_eq!(
                v.details.get("restriction"),
                Some(&Value::from("policy_error"))
            );
        }
        // The same actions on the kinds the schema lists are decided.
        let v = loaded.decide(
            &authorizer,
            &key,
            "readFile",
            Target::Path(&resource),
            &workspace_of,
        );
        assert!(v.allowed && !v.errored, "{v:?}");
    }

    /// The shadow set's answer, partly derived from the enforced set's, equals the answer of
    /// the shadow set promoted (enforced), for new and replaced permits and forbids.
    #[test]
    fn shadow_decisions_equal_the_promoted_sets_decisions() {
        let outside = "@id(\"outside-base-path\")\nforbid (principal, action, resource is Keygate::Path)\nwhen { principal.restricted && principal.providers.contains(resource.provider) && !(resource in principal.grants) && action != Keygate::Action::\"readFile\" };\n";
        let no_read = "@id(\"scope-read\")\npermit (principal, action in Keygate::Action::\"read\", resource)\nwhen { principal.scopes.contains(\"read\") && false };\n";
        let new_forbid = "@id(\"keys-never-delete\")\nforbid (principal is Keygate::ApiKey, action == Keygate::Action::\"deleteFile\", resource);\n";
        let new_permit = "@id(\"readers-list\")\npermit (principal, action == Keygate::Action::\"listFolder\", resource)\nwhen { principal.scopes.contains(\"files:read\") };\n";
        let variants: Vec<Vec<&str>> = vec![
            vec![new_forbid],
            vec![new_permit],
            vec![outside],
            vec![no_read],
            vec![new_forbid, new_permit, outside, no_read],
        ];
        // An enforced file's text without the policy of `id` (policies are separated by a
        // blank line in the shipped files).
        let without = |text: &str, id: &str| -> String {
            text.split("\n\n")
                .filter(|block| !block.contains(&format!("@id(\"{id}\")")))
                .collect::<Vec<_>>()
                .join("\n\n")
        };
        let authorizer = Authorizer::new();
        let workspace_of = HashMap::from([("local".to_owned(), "w1".to_owned())]);
        let grant = |b: &str| crate::model::Grant {
            provider: "local".into(),
            base_path: b.into(),
        };
        let principals = [
            principal(None, &["admin"]),
            principal(None, &["read"]),
            principal(None, &["files:read"]),
            principal(Some(vec![grant("/a")]), &["write"]),
            principal(Some(vec![grant("/a")]), &["read", "files:read"]),
        ];
        let actions = [
            "readFile",
            "listFolder",
            "deleteFile",
            "writeFile",
            "searchFiles",
        ];
        let mut disagreements = 0;
        for variant in variants {
            let mut files = shipped();
            let mut promoted = shipped();
            for (i, text) in variant.iter().enumerate() {
                files.push((format!("{SHADOW_DIR}/v{i}.cedar"), (*text).to_owned()));
                let id = text.split('"').nth(1).unwrap();
                for (_, t) in promoted.iter_mut() {
                    *t = without(t, id);
                }
                promoted.push((format!("v{i}.cedar"), (*text).to_owned()));
            }
            let loaded = load_texts(&files, 1).unwrap_or_else(|e| panic!("{e}"));
            let promoted = load_texts(&promoted, 1).unwrap_or_else(|e| panic!("{e}"));
            for p in &principals {
                for path in ["/a/x", "/b/x"] {
                    for action in actions {
                        let resource = Resource {
                            role: crate::route::ResourceRole::Source,
                            provider: "local".into(),
                            path: path.to_owned(),
                        };
                        let decide = |l: &Loaded| {
                            l.decide(
                                &authorizer,
                                p,
                                action,
                                Target::Path(&resource),
                                &workspace_of,
                            )
                        };
                        let shadowed = decide(&loaded);
                        let expected = decide(&promoted);
                        let shadow = shadowed.shadow.clone().expect("a shadow answer");
                        assert_eq!(
                            (shadow.allowed, &shadow.policies),
                            (expected.allowed, &expected.policies),
                            "{variant:?} {action} {path} {:?} {:?}",
                            p.scopes,
                            p.grants
                        );
                        assert_eq!(decide(&promoted).shadow, None);
                        disagreements += usize::from(shadow.allowed != shadowed.allowed);
                    }
                }
            }
        }
        assert!(disagreements > 20, "{disagreements}");
    }

    fn grant(provider: &str, base_path: &str) -> crate::model::Grant {
        crate::model::Grant {
            provider: provider.into(),
            base_path: base_path.into(),
        }
    }

    /// The shipped policies and a file naming folders: `/a/secret` (a forbid on everything
    /// in it), `/pub` (a permit to read in it) and `/x/keep` (a forbid on that path alone).
    fn named_folders() -> Loaded {
        let mut files = shipped();
        files.push((
            "named.cedar".into(),
            "@id(\"no-secrets\")\nforbid (principal, action, resource in Keygate::Path::\"local:/a/secret\");\n\n@id(\"public\")\npermit (principal, action == Keygate::Action::\"readFile\", resource in Keygate::Path::\"local:/pub\");\n\n@id(\"exact\")\nforbid (principal, action == Keygate::Action::\"deleteFile\", resource == Keygate::Path::\"local:/x/keep\");\n".into(),
        ));
        load_texts(&files, 1).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Keys without grants and with grants at, above and below the named folders, on
    /// another provider, and one whose way to its grant nothing else names.
    fn grantees() -> Vec<Principal> {
        vec![
            principal(None, &["admin"]),
            principal(None, &["files:read"]),
            principal(Some(vec![grant("local", "/a")]), &["write"]),
            principal(Some(vec![grant("local", "/a/b")]), &["admin"]),
            principal(Some(vec![grant("local", "/")]), &["read"]),
            principal(Some(vec![grant("other", "/a")]), &["admin"]),
            principal(Some(vec![grant("local", "/m/n")]), &["write"]),
        ]
    }

    fn workspace_of() -> HashMap<String, String> {
        HashMap::from([
            ("local".to_owned(), "w1".to_owned()),
            ("other".to_owned(), "w1".to_owned()),
        ])
    }

    /// Decides with every folder above the path among the entities: the whole chain.
    fn decide_with_whole_chain(
        loaded: &Loaded,
        p: &Principal,
        action: &str,
        resource: &Resource,
    ) -> Verdict {
        let mut every: Vec<(String, String)> = loaded.path_literals.clone();
        let mut acc = String::new();
        every.push((resource.provider.to_string(), "/".to_owned()));
        for seg in resource.path.split('/').filter(|s| !s.is_empty()) {
            acc.push('/');
            acc.push_str(seg);
            every.push((resource.provider.to_string(), acc.clone()));
        }
        loaded.decide_among(
            &Authorizer::new(),
            p,
            action,
            Target::Path(resource),
            &workspace_of(),
            &every,
        )
    }

    #[test]
    fn only_the_folders_a_decision_can_ask_about_decide_alike_the_whole_chain() {
        let loaded = named_folders();
        assert!(loaded
            .path_literals
            .contains(&("local".into(), "/a/secret".into())));
        let authorizer = Authorizer::new();
        let principals = grantees();
        let paths = [
            "/",
            "/a",
            "/ab",
            "/a/b",
            "/a/b/c",
            "/a/bc",
            "/a/secret",
            "/a/secret/x",
            "/a/secrets",
            "/pub",
            "/pub/x",
            "/public",
            "/x/y/z",
        ];
        let deep = format!("/a/b{}", "/d".repeat(200));
        let mut decided = 0;
        for p in &principals {
            for provider in ["local", "other"] {
                for path in paths.iter().copied().chain([deep.as_str()]) {
                    for action in ["readFile", "writeFile", "deleteFile", "listFolder"] {
                        let resource = Resource {
                            role: crate::route::ResourceRole::Source,
                            provider: provider.into(),
                            path: path.to_owned(),
                        };
                        let pruned = loaded.decide(
                            &authorizer,
                            p,
                            action,
                            Target::Path(&resource),
                            &workspace_of(),
                        );
                        let whole = decide_with_whole_chain(&loaded, p, action, &resource);
                        assert_eq!(pruned, whole, "{action} {provider}:{path} {:?}", p.grants);
                        decided += 1;
                    }
                }
            }
        }
        assert_eq!(decided, principals.len() * 2 * 14 * 4);
    }

    /// Paths in one decision class (the decision cache's key) decide alike, deciding each
    /// with the whole folder chain above it: for principals with and without grants, paths
    /// at, above, below and beside the grants and the folders policies name, every action.
    #[test]
    fn the_paths_of_one_decision_class_decide_alike() {
        let loaded = named_folders();
        let principals = grantees();
        let paths = [
            "/m",
            "/m/n",
            "/m/n/o",
            "/m/x",
            "/mn",
            "/",
            "/a",
            "/ab",
            "/a/b",
            "/a/b/c",
            "/a/b/d",
            "/a/b/c/d",
            "/a/bc",
            "/a/x",
            "/a/y",
            "/a/secret",
            "/a/secret/x",
            "/a/secret/y/z",
            "/a/secrets",
            "/pub",
            "/pub/x",
            "/pub/y/z",
            "/public",
            "/x",
            "/x/keep",
            "/x/keeps",
            "/x/keep/y",
            "/x/y/z",
            "/z",
        ];
        let mut compared = 0;
        for p in &principals {
            for provider in ["local", "other"] {
                let mut classes: HashMap<DecisionPath, Vec<&str>> = HashMap::new();
                for path in paths {
                    let resource = Resource {
                        role: crate::route::ResourceRole::Source,
                        provider: provider.into(),
                        path: path.to_owned(),
                    };
                    classes
                        .entry(loaded.decision_path(p, &resource))
                        .or_default()
                        .push(path);
                }
                for members in classes.values().filter(|m| m.len() > 1) {
                    for action in [
                        "readFile",
                        "writeFile",
                        "deleteFile",
                        "listFolder",
                        "traverse",
                        "createAncestor",
                    ] {
                        let decide = |path: &str| {
                            let resource = Resource {
                                role: crate::route::ResourceRole::Source,
                                provider: provider.into(),
                                path: path.to_owned(),
                            };
                            decide_with_whole_chain(&loaded, p, action, &resource)
                        };
                        let first = decide(members[0]);
                        for other in &members[1..] {
                            assert_eq!(
                                decide(other),
                                first,
                                "{action} {provider}:{other} and {provider}:{} ({:?})",
                                members[0],
                                p.grants
                            );
                            compared += 1;
                        }
                    }
                }
            }
        }
        assert!(compared > 400, "{compared}");
        // The named paths and those above them are classes of their own.
        let class_for = |p: &Principal, path: &str| {
            loaded.decision_path(
                p,
                &Resource {
                    role: crate::route::ResourceRole::Source,
                    provider: "local".into(),
                    path: path.to_owned(),
                },
            )
        };
        let key = principal(Some(vec![grant("local", "/a/b")]), &["admin"]);
        let class = |path: &str| class_for(&key, path);
        for own in ["/", "/a", "/a/b", "/a/secret", "/x/keep"] {
            assert_eq!(class(own), DecisionPath::Exactly(own.to_owned()));
        }
        assert_eq!(class("/a/b/c/d"), DecisionPath::Below("/a/b".to_owned()));
        assert_eq!(class("/x/keeps"), DecisionPath::Below(String::new()));
        assert_eq!(
            class("/x/keep/y"),
            DecisionPath::Below("/x/keep".to_owned())
        );
        // A folder on the way to a grant is its own class even when nothing else names it.
        let deep = principal(Some(vec![grant("local", "/m/n")]), &["write"]);
        let on = |path: &str| class_for(&deep, path);
        assert_eq!(on("/m"), DecisionPath::Exactly("/m".to_owned()));
        assert_eq!(on("/m/n"), DecisionPath::Exactly("/m/n".to_owned()));
        assert_eq!(on("/mn"), DecisionPath::Below(String::new()));
        assert_eq!(on("/m/x"), DecisionPath::Below(String::new()));
    }

    /// A new file in a folder already decided is answered from the decision cache, and a file
    /// a policy names is decided for itself.
    #[test]
    fn a_new_file_beside_a_decided_one_is_a_cache_hit() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in SHIPPED {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        std::fs::write(
            dir.path().join("keep.cedar"),
            "@id(\"keep\")\nforbid (principal, action == Keygate::Action::\"readFile\", resource == Keygate::Path::\"local:/docs/keep.txt\");\n",
        )
        .unwrap();
        let metrics = Arc::new(Metrics::new());
        let engine = PolicyEngine::load(dir.path(), metrics.clone()).unwrap();
        engine.set_providers(HashMap::from([("local".to_owned(), "w1".to_owned())]));
        let read = |path: &str| {
            let route = RouteMatch {
                resources: vec![Resource {
                    role: crate::route::ResourceRole::Source,
                    provider: "local".into(),
                    path: path.to_owned(),
                }],
                ..RouteMatch::new(Arc::from("readFile"), path.to_owned())
            };
            engine.decide(&principal(None, &["read"]), &route)
        };
        let counts = || (metrics.decision_hit.get(), metrics.decision_miss.get());
        assert!(read("/docs/a.txt").refusal.is_none());
        assert_eq!(counts(), (0, 1));
        assert!(read("/docs/b.txt").refusal.is_none());
        assert!(read("/other/c.txt").refusal.is_none());
        assert_eq!(counts(), (2, 1));
        // The named file is not in the class of its neighbours: decided, and refused.
        assert!(read("/docs/keep.txt").refusal.is_some());
        assert_eq!(counts(), (2, 2));
        assert!(read("/docs/keep.txt.bak").refusal.is_none());
        assert_eq!(counts(), (3, 2));
    }
}
