//! Reviewing a policy change before it ships: `keygate policy diff` and `keygate policy lint`.
//!
//! Both are proofs, not samples. The Cedar symbolic compiler (`cedar-policy-symcc`) turns a
//! policy set into logic over *every* request and entity store the schema allows, and the cvc5
//! SMT solver decides the question; when the answer is "no", it comes with a concrete request
//! and entity store (a counterexample) that Cedar's own authorizer then replays, so that the
//! policies named as responsible are the ones Cedar reports, not a guess.
//!
//! - diff: for each action, whether NEW allows a request OLD denies (widening) and whether OLD
//!   allows one NEW denies (narrowing). Both sets are compiled under NEW's schema.
//! - lint: policies that can never apply (dead), policies whose evaluation can error (Cedar
//!   skips an erroring policy: an erroring forbid does not forbid), and permits that some
//!   forbid always overrides (shadowed).
//!
//! The solver is found as the `CVC5` variable or `cvc5` on the PATH; before any real question
//! it must answer two whose answers are known (one widening, one not), so a solver that answers
//! wrongly is an error, never a pass.
//!
//! The schema's entities are more general than the ones keygate builds (a `Path` named
//! `local:/a` could, to the solver, sit below any folder): an answer of "equivalent" holds for
//! keygate's entities too, and a counterexample may be one keygate would never build. A
//! widening is reported all the same: the policies allow it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::str::FromStr;

use cedar_policy::{Authorizer, Effect, PolicySet, Schema};
use cedar_policy_symcc::solver::LocalSolver;
use cedar_policy_symcc::{CedarSymCompiler, CompiledPolicy, CompiledPolicySet, Env};
use serde::Serialize;

use super::Loaded;

/// Wall time the solver may spend on one question (cvc5's `--tlimit-per`, milliseconds).
const SOLVER_LIMIT_MS: u32 = 60_000;

/// The SMT solver behind the proofs, checked before use.
pub struct Prover {
    compiler: CedarSymCompiler<LocalSolver>,
    /// What `cvc5 --version` said, for the report.
    pub solver: String,
}

/// A concrete request that one set allows and the other denies.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub principal: String,
    pub action: String,
    pub resource: String,
    /// The entities of the counterexample, one line each: uid, attributes, parents.
    pub entities: Vec<String>,
    /// The policies that allow it in the set that allows it.
    #[serde(rename = "allowedBy")]
    pub allowed_by: Vec<String>,
    /// The forbids that deny it in the other set; empty when no permit applied there.
    #[serde(rename = "deniedBy")]
    pub denied_by: Vec<String>,
}

/// How one action's decisions changed from OLD to NEW.
#[derive(Debug, Clone, Serialize)]
pub struct ActionChange {
    pub action: String,
    /// A request NEW allows and OLD denies.
    pub widening: Option<Example>,
    /// A request OLD allows and NEW denies.
    pub narrowing: Option<Example>,
    /// True when the action is in OLD's schema but not NEW's (nothing can request it now).
    pub removed: bool,
    /// The action's groups (scopes, permissions) differ between the schemas. Both sets are
    /// compiled under NEW's schema, so nothing is proved for it: counted as a widening.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<GroupChange>,
    /// An OLD policy can error on this action where NEW may allow. keygate denies whenever a
    /// policy errors (Cedar would skip it), so OLD denied there and NEW may allow: counted as a
    /// widening.
    #[serde(rename = "oldErrors", skip_serializing_if = "Option::is_none")]
    pub old_errors: Option<ErroringPolicy>,
    /// The action's context type differs between the schemas (keygate refuses a request whose
    /// context does not match the schema): nothing is proved for it, counted as a widening.
    #[serde(rename = "contextChanged", skip_serializing_if = "std::ops::Not::not")]
    pub context_changed: bool,
}

/// Groups an action joined and left between OLD's schema and NEW's.
#[derive(Debug, Clone, Serialize)]
pub struct GroupChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// A policy that can error, and a request on which it does.
#[derive(Debug, Clone, Serialize)]
pub struct ErroringPolicy {
    pub policy: String,
    pub example: Example,
}

impl ActionChange {
    fn new(action: String) -> ActionChange {
        ActionChange {
            action,
            widening: None,
            narrowing: None,
            removed: false,
            groups: None,
            old_errors: None,
            context_changed: false,
        }
    }

    /// True when NEW may allow what keygate with OLD denied: a proved widening, or a change
    /// the proof cannot cover (groups or context changed, OLD erroring).
    pub fn may_widen(&self) -> bool {
        self.widening.is_some()
            || self.groups.is_some()
            || self.old_errors.is_some()
            || self.context_changed
    }

    pub fn verdict(&self) -> &'static str {
        if self.groups.is_some() {
            return "unproven: its groups changed in the schema";
        }
        if self.context_changed {
            return "unproven: its context changed in the schema";
        }
        if self.old_errors.is_some() && self.widening.is_none() {
            return "unproven: an OLD policy errors on it";
        }
        match (&self.widening, &self.narrowing, self.removed) {
            (Some(_), Some(_), _) => "widens and narrows",
            (Some(_), None, _) => "widens",
            (None, _, true) => "removed",
            (None, Some(_), _) => "narrows",
            (None, None, _) => "equivalent",
        }
    }
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub actions: Vec<ActionChange>,
    /// The schemas declare different entity or common types: the proof covers the entity
    /// stores valid under NEW's schema only.
    #[serde(rename = "schemaChanged")]
    pub schema_changed: bool,
    /// Groups that became `@scope` (grantable to keys and tokens) in NEW, and those that no
    /// longer are. Not a change of any decision by itself: what holding one allows is in the
    /// policies, which the proof covers.
    #[serde(rename = "scopesAdded")]
    pub scopes_added: Vec<String>,
    #[serde(rename = "scopesRemoved")]
    pub scopes_removed: Vec<String>,
}

/// One finding of `policy lint`.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub id: String,
    /// `file:line:column` of the policy.
    pub place: String,
    /// `dead`, `always-errors`, `errors` or `shadowed`.
    pub kind: &'static str,
    pub message: String,
    /// For `errors`: a request on which it errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example: Option<Example>,
}

fn solver_error(e: impl std::fmt::Display) -> String {
    format!("the solver failed: {e}")
}

impl Prover {
    /// Starts cvc5 and makes sure it answers correctly.
    pub async fn start() -> Result<Prover, String> {
        let program = std::env::var("CVC5").unwrap_or_else(|_| "cvc5".to_owned());
        let version = std::process::Command::new(&program)
            .arg("--version")
            .output()
            .map_err(|e| {
                format!(
                    "cannot run the cvc5 solver ('{program}': {e}); install it (Debian: \
                     apt-get install cvc5) or point the CVC5 variable at its binary"
                )
            })?;
        let solver = String::from_utf8_lossy(&version.stdout)
            .lines()
            .next()
            .unwrap_or("cvc5 (unknown version)")
            .trim()
            .trim_start_matches("This is ")
            .to_owned();
        let limit = format!("--tlimit-per={SOLVER_LIMIT_MS}");
        let process = LocalSolver::cvc5_with_args([limit.as_str()]).map_err(solver_error)?;
        let compiler = CedarSymCompiler::new(process).map_err(solver_error)?;
        let mut prover = Prover { compiler, solver };
        prover.self_check().await?;
        Ok(prover)
    }

    /// Two questions with known answers: dropping an ownership condition widens, adding one
    /// does not. A solver that gets either wrong is not trusted with the real ones.
    async fn self_check(&mut self) -> Result<(), String> {
        let schema = Schema::from_cedarschema_str(
            "entity User; entity Doc { owner: User };
             action view appliesTo { principal: [User], resource: [Doc] };",
        )
        .map_err(|e| e.to_string())?
        .0;
        let owned = PolicySet::from_str(
            "permit(principal, action, resource) when { resource.owner == principal };",
        )
        .map_err(|e| e.to_string())?;
        let anyone = PolicySet::from_str("permit(principal, action, resource);")
            .map_err(|e| e.to_string())?;
        let mut wrong = Vec::new();
        for env in schema.request_envs() {
            let owned = CompiledPolicySet::compile(&owned, &env, &schema).map_err(solver_error)?;
            let anyone =
                CompiledPolicySet::compile(&anyone, &env, &schema).map_err(solver_error)?;
            let widening = self.allowed_only_by(&anyone, &owned).await?;
            let narrowing = self
                .compiler
                .check_implies_opt(&owned, &anyone)
                .await
                .map_err(solver_error)?;
            if widening.is_none() {
                wrong.push("it found no widening where there is one");
            }
            if !narrowing {
                wrong.push("it found a widening where there is none");
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} failed keygate's self-check ({}); cedar-policy-symcc is made for cvc5 1.3.1: \
                 point the CVC5 variable at one",
                self.solver,
                wrong.join("; ")
            ))
        }
    }

    /// A request and entity store that `allows` allows and `denies` denies, if there is one.
    async fn allowed_only_by(
        &mut self,
        allows: &CompiledPolicySet,
        denies: &CompiledPolicySet,
    ) -> Result<Option<Env>, String> {
        self.compiler
            .check_implies_with_counterexample_opt(allows, denies)
            .await
            .map_err(solver_error)
    }
}

/// Cedar's answer on a counterexample: the determining policies.
fn replay(set: &PolicySet, env: &Env) -> Vec<String> {
    super::sorted_reasons(&Authorizer::new().is_authorized(&env.request, set, &env.entities))
}

fn example(env: &Env, allows: &PolicySet, denies: &PolicySet) -> Example {
    let show =
        |uid: Option<&cedar_policy::EntityUid>| uid.map_or_else(String::new, |u| u.to_string());
    // The schema's action entities are the same in every example: left out.
    let mut entities: Vec<String> = env
        .entities
        .iter()
        .filter(|e| e.uid().type_name().basename() != "Action")
        .map(|e| {
            let (uid, attrs, parents) = e.clone().into_inner();
            let mut line = uid.to_string();
            let attrs: BTreeMap<String, String> = attrs
                .into_keys()
                .map(|k| {
                    let v = match e.attr(&k) {
                        Some(Ok(v)) => v.to_string(),
                        _ => "?".to_owned(),
                    };
                    (k, v)
                })
                .collect();
            if !attrs.is_empty() {
                let fields: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                let _ = write!(line, " {{ {} }}", fields.join(", "));
            }
            if !parents.is_empty() {
                let parents: BTreeSet<String> = parents.iter().map(ToString::to_string).collect();
                let _ = write!(
                    line,
                    " in [{}]",
                    parents.into_iter().collect::<Vec<_>>().join(", ")
                );
            }
            line
        })
        .collect();
    entities.sort();
    let allowed_by = replay(allows, env);
    let denied_by = replay(denies, env);
    Example {
        principal: show(env.request.principal()),
        action: show(env.request.action()),
        resource: show(env.request.resource()),
        entities,
        allowed_by,
        denied_by,
    }
}

fn action_name(uid: &cedar_policy::EntityUid) -> String {
    uid.id().unescaped().to_owned()
}

/// The names of an action's groups (its ancestors in the schema).
fn groups_of(loaded: &Loaded, action: &str) -> Option<BTreeSet<String>> {
    super::action_groups(&loaded.actions, action)
}

/// Decides, for every action of NEW's schema, whether NEW widens or narrows OLD.
///
/// Both sets are compiled under NEW's schema. Where that cannot stand for OLD's behaviour,
/// the action is marked rather than proved: its groups changed, or an OLD policy can error on
/// it (keygate denies on any error; Cedar's own answer would skip the policy). An action OLD's
/// schema lacks is compared with nothing allowed (keygate with OLD had no such action).
pub async fn diff(prover: &mut Prover, old: &Loaded, new: &Loaded) -> Result<Diff, String> {
    let schema = &new.schema;
    let nothing = PolicySet::new();
    let mut changes: BTreeMap<String, ActionChange> = BTreeMap::new();
    for env in schema.request_envs() {
        let action = action_name(env.action());
        let compile = |set: &PolicySet, which: &str| {
            CompiledPolicySet::compile(set, &env, schema).map_err(|e| {
                format!(
                    "{which}'s policies for {} on {} by {}: {e}",
                    env.action(),
                    env.resource(),
                    env.principal()
                )
            })
        };
        let old_groups = groups_of(old, &action);
        // keygate with OLD refused a kind of request its schema did not allow (the request's
        // validation fails, and that is a deny): compare it with nothing allowed.
        let kind = (
            action.clone(),
            (env.principal().to_string(), env.resource().to_string()),
        );
        let old_set = if old.requestable.contains(&kind) {
            &old.policies
        } else {
            &nothing
        };
        let old_c = compile(old_set, "OLD")?;
        let new_c = compile(&new.policies, "NEW")?;
        let change = changes
            .entry(action.clone())
            .or_insert_with(|| ActionChange::new(action.clone()));
        if old.contexts.get(&action) != new.contexts.get(&action) && old_groups.is_some() {
            change.context_changed = true;
        }
        if let (Some(before), Some(after)) = (&old_groups, groups_of(new, &action)) {
            if *before != after {
                change.groups = Some(GroupChange {
                    added: after.difference(before).cloned().collect(),
                    removed: before.difference(&after).cloned().collect(),
                });
            }
        }
        // The first example per action and direction is enough.
        if change.widening.is_none() {
            change.widening = prover
                .allowed_only_by(&new_c, &old_c)
                .await?
                .map(|cex| example(&cex, &new.policies, old_set));
        }
        if change.narrowing.is_none() {
            change.narrowing = prover
                .allowed_only_by(&old_c, &new_c)
                .await?
                .map(|cex| example(&cex, old_set, &new.policies));
        }
        if change.old_errors.is_none()
            && change.widening.is_none()
            && !prover
                .compiler
                .check_always_denies_opt(&new_c)
                .await
                .map_err(solver_error)?
        {
            for policy in old_set.policies() {
                let compiled = CompiledPolicy::compile(policy, &env, schema)
                    .map_err(|e| format!("OLD's policy {}: {e}", policy.id()))?;
                if let Some(cex) = prover
                    .compiler
                    .check_never_errors_with_counterexample_opt(&compiled)
                    .await
                    .map_err(solver_error)?
                {
                    change.old_errors = Some(ErroringPolicy {
                        policy: policy.id().to_string(),
                        example: example(&cex, &new.policies, old_set),
                    });
                    break;
                }
            }
        }
    }
    let remaining: BTreeSet<String> = old
        .actions
        .keys()
        .filter(|a| !changes.contains_key(*a) && !new.actions.contains_key(*a))
        .cloned()
        .collect();
    for action in remaining {
        // Only actions requests can name (those with appliesTo) were compared; a removed
        // action group is not reported.
        if old.requestable.iter().any(|(a, _)| *a == action) {
            let mut change = ActionChange::new(action.clone());
            change.removed = true;
            changes.insert(action, change);
        }
    }
    let in_only = |a: &Loaded, b: &Loaded| -> Vec<String> {
        a.scopes
            .iter()
            .filter(|s| !b.scopes.contains(s))
            .cloned()
            .collect()
    };
    Ok(Diff {
        actions: changes.into_values().collect(),
        // A schema whose JSON form could not be read counts as changed.
        schema_changed: old.entity_types != new.entity_types
            || old.entity_types.is_null()
            || new.entity_types.is_null(),
        scopes_added: in_only(new, old),
        scopes_removed: in_only(old, new),
    })
}

/// Finds dead, erroring and shadowed policies.
pub async fn lint(prover: &mut Prover, loaded: &Loaded) -> Result<Vec<Finding>, String> {
    let schema = &loaded.schema;
    let envs: Vec<_> = schema.request_envs().collect();
    let place_of = |id: &str| {
        loaded
            .listed
            .iter()
            .find(|p| p.id == id)
            .map_or_else(String::new, |p| p.place.clone())
    };
    let forbids: Vec<&cedar_policy::Policy> = loaded
        .policies
        .policies()
        .filter(|p| p.effect() == Effect::Forbid)
        .collect();
    let mut findings = Vec::new();
    for policy in loaded.policies.policies() {
        let id = policy.id().to_string();
        let mut applies = false;
        let mut errors: Option<Example> = None;
        // For a permit: it is shadowed when, wherever it applies, a forbid applies too.
        let mut shadowed = policy.effect() == Effect::Permit;
        let mut shadowing: BTreeSet<String> = BTreeSet::new();
        for env in &envs {
            let compiled = CompiledPolicy::compile(policy, env, schema)
                .map_err(|e| format!("policy {id}: {e}"))?;
            let never = prover
                .compiler
                .check_never_matches_opt(&compiled)
                .await
                .map_err(solver_error)?;
            if errors.is_none() {
                if let Some(cex) = prover
                    .compiler
                    .check_never_errors_with_counterexample_opt(&compiled)
                    .await
                    .map_err(solver_error)?
                {
                    let alone =
                        PolicySet::from_policies([policy.clone()]).map_err(|e| e.to_string())?;
                    errors = Some(example(&cex, &alone, &alone));
                }
            }
            if never {
                continue;
            }
            applies = true;
            if !shadowed {
                continue;
            }
            // The permit and every forbid together: if that set allows nothing here, the
            // forbids cover everything the permit allows.
            let mut together = vec![policy.clone()];
            together.extend(forbids.iter().map(|f| (*f).clone()));
            let together = PolicySet::from_policies(together).map_err(|e| e.to_string())?;
            let compiled_set = CompiledPolicySet::compile(&together, env, schema)
                .map_err(|e| format!("policy {id}: {e}"))?;
            if !prover
                .compiler
                .check_always_denies_opt(&compiled_set)
                .await
                .map_err(solver_error)?
            {
                shadowed = false;
                continue;
            }
            for forbid in &forbids {
                let f = CompiledPolicy::compile(forbid, env, schema)
                    .map_err(|e| format!("policy {}: {e}", forbid.id()))?;
                if !prover
                    .compiler
                    .check_matches_disjoint_opt(&compiled, &f)
                    .await
                    .map_err(solver_error)?
                {
                    shadowing.insert(forbid.id().to_string());
                }
            }
        }
        if applies && shadowed {
            // Name the forbids that shadow it alone, when there are such; else the ones that
            // overlap it (together they cover it).
            let mut alone = BTreeSet::new();
            for id in &shadowing {
                let Some(forbid) = forbids.iter().find(|f| f.id().to_string() == *id) else {
                    continue;
                };
                let pair = PolicySet::from_policies([policy.clone(), (*forbid).clone()])
                    .map_err(|e| e.to_string())?;
                let mut covers = true;
                for env in &envs {
                    let c = CompiledPolicySet::compile(&pair, env, schema)
                        .map_err(|e| format!("policy {id}: {e}"))?;
                    if !prover
                        .compiler
                        .check_always_denies_opt(&c)
                        .await
                        .map_err(solver_error)?
                    {
                        covers = false;
                        break;
                    }
                }
                if covers {
                    alone.insert(id.clone());
                }
            }
            if !alone.is_empty() {
                shadowing = alone;
            }
        }
        let place = place_of(&id);
        if !applies && errors.is_some() {
            findings.push(Finding {
                id,
                place,
                kind: "always-errors",
                message: "never applies: wherever it does not error it is false. Cedar skips an \
                          erroring policy; keygate denies every request on which one errors"
                    .to_owned(),
                example: errors,
            });
            continue;
        }
        if !applies {
            findings.push(Finding {
                id: id.clone(),
                place: place.clone(),
                kind: "dead",
                message: "never applies: no request valid under the schema satisfies its scope \
                          and conditions"
                    .to_owned(),
                example: None,
            });
        } else if shadowed {
            findings.push(Finding {
                id: id.clone(),
                place: place.clone(),
                kind: "shadowed",
                message: format!(
                    "never allows anything: wherever it applies, a forbid applies too ({})",
                    shadowing.into_iter().collect::<Vec<_>>().join(", ")
                ),
                example: None,
            });
        }
        if let Some(example) = errors {
            let what = match policy.effect() {
                Effect::Forbid => {
                    "Cedar skips an erroring forbid; keygate denies every request on which a \
                     policy errors"
                }
                Effect::Permit => {
                    "an erroring permit does not permit, and keygate denies every request on \
                     which a policy errors"
                }
            };
            findings.push(Finding {
                id,
                place,
                kind: "errors",
                message: format!("its evaluation can error; {what}"),
                example: Some(example),
            });
        }
    }
    Ok(findings)
}

/// The human-readable form of an example, indented; with `sets`, the names of the set that
/// allows it and the one that denies it, for the lines naming the responsible policies.
pub fn render_example(example: &Example, sets: Option<(&str, &str)>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "    request:   {} {} {}",
        example.principal, example.action, example.resource
    );
    let _ = writeln!(out, "    entities:");
    for e in &example.entities {
        let _ = writeln!(out, "      {e}");
    }
    let Some((allows, denies)) = sets else {
        return out;
    };
    let _ = writeln!(
        out,
        "    {allows} allows it by: {}",
        if example.allowed_by.is_empty() {
            "(nothing)".to_owned()
        } else {
            example.allowed_by.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "    {denies} denies it: {}",
        if example.denied_by.is_empty() {
            "no permit applies".to_owned()
        } else {
            format!("forbidden by {}", example.denied_by.join(", "))
        }
    );
    out
}
