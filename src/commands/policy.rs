//! `keygate policy …`: the tools for the people who edit the policy files.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::cli::PolicyCmd;
use crate::config::Config;
use crate::policy::{load_dir, PolicyEngine};
use crate::store::Store;
use crate::telemetry::Metrics;

/// Runs a policy subcommand; `store` is needed by `explain`, `publish`, `history` and
/// `rollback`.
pub async fn run(config: &Config, cmd: PolicyCmd, store: Option<&Store>) -> anyhow::Result<()> {
    let dir_of =
        |d: &Option<std::path::PathBuf>| d.clone().unwrap_or_else(|| config.policy_dir.clone());
    match cmd {
        PolicyCmd::Validate { dir } => {
            let dir = dir_of(&dir);
            let loaded = load_dir(&dir, 1).map_err(|e| anyhow::anyhow!("{e}"))?;
            loaded.servable().map_err(anyhow::Error::msg)?;
            println!(
                "{}: {} file(s) valid in strict mode (hash {})",
                dir.display(),
                loaded.files.len(),
                &loaded.hash[..16]
            );
            Ok(())
        }
        PolicyCmd::Test { dir } => {
            let dir = dir_of(&dir);
            let report = crate::policy::scenarios::run(&dir, Some(&config.routes))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for f in &report.failures {
                println!("FAIL {f}");
            }
            println!(
                "{} passed, {} failed ({} scenario file(s))",
                report.passed,
                report.failures.len(),
                report.files
            );
            if report.files == 0 {
                bail!("no scenario files in {}", dir.join("tests").display());
            }
            if !report.failures.is_empty() {
                bail!(
                    "{} scenario request(s) did not get the expected decision",
                    report.failures.len()
                );
            }
            Ok(())
        }
        PolicyCmd::Fmt { dir, check } => fmt(&dir_of(&dir), check),
        PolicyCmd::Publish { dir, note, by } => {
            let store = store.context("publish needs the database")?;
            let dir = dir_of(&dir);
            publish(config, store, &dir, note.as_deref(), by.as_deref()).await
        }
        PolicyCmd::History { json } => {
            let store = store.context("history needs the database")?;
            history(store, json).await
        }
        PolicyCmd::Rollback { to, note, by } => {
            let store = store.context("rollback needs the database")?;
            rollback(config, store, to, note.as_deref(), by.as_deref()).await
        }
        PolicyCmd::Diff {
            old,
            new,
            allow_widening,
            allow_schema_change,
            json,
        } => diff(&old, &new, &allow_widening, allow_schema_change, json).await,
        PolicyCmd::Lint { dir, json } => lint(&dir_of(&dir), json).await,
        PolicyCmd::Explain {
            key,
            user,
            method,
            path,
            destination,
            json,
        } => {
            let store = store.context("explain needs the database")?;
            explain(
                config,
                store,
                key,
                user,
                &method,
                &path,
                destination.as_deref(),
                json,
            )
            .await
        }
    }
}

/// Who publishes: `--by`, else the user running the command.
fn publisher(by: Option<&str>) -> String {
    by.map(str::to_owned)
        .or_else(|| std::env::var("USER").ok())
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Refuses a set the instances would refuse: invalid, or lacking an action the route table or
/// keygate itself asks about, or a scope a rate-limit rule names.
fn check_servable(config: &Config, files: &[(String, String)]) -> anyhow::Result<String> {
    let loaded = crate::policy::load_texts(files, 1).map_err(|e| anyhow::anyhow!("{e}"))?;
    loaded.servable().map_err(anyhow::Error::msg)?;
    let engine = PolicyEngine::load_published(0, files, Arc::new(Metrics::new()))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::server::require_config(&engine, config)?;
    Ok(loaded.hash)
}

async fn publish(
    config: &Config,
    store: &Store,
    dir: &Path,
    note: Option<&str>,
    by: Option<&str>,
) -> anyhow::Result<()> {
    let files = crate::policy::read_dir_texts(dir).map_err(|e| anyhow::anyhow!("{e}"))?;
    let hash = check_servable(config, &files)
        .with_context(|| format!("{} cannot be published", dir.display()))?;
    let report = crate::policy::scenarios::run(dir, Some(&config.routes))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if report.files == 0 {
        bail!(
            "{} cannot be published: no scenario files in {} (a set is published with its tests)",
            dir.display(),
            dir.join("tests").display()
        );
    }
    if !report.failures.is_empty() {
        for f in &report.failures {
            println!("FAIL {f}");
        }
        bail!(
            "{} cannot be published: {} scenario request(s) did not get the expected decision",
            dir.display(),
            report.failures.len()
        );
    }
    // Publishing the running set again (a deploy job that runs on every start) adds nothing.
    if let Some(newest) = store.newest_policy_version().await? {
        if let Some(published) = store.policy_version(newest).await? {
            if published.hash == hash {
                println!(
                    "unchanged: version {newest} has these files (hash {})",
                    &hash[..16]
                );
                return Ok(());
            }
        }
    }
    let version = store
        .publish_policy(&crate::store::NewPolicyVersion {
            hash: &hash,
            files: &files,
            published_by: &publisher(by),
            note,
            rollback_of: None,
        })
        .await?;
    println!(
        "published version {version} ({} file(s), hash {}; {} scenario request(s) passed)",
        files.len(),
        &hash[..16],
        report.passed
    );
    Ok(())
}

async fn history(store: &Store, json: bool) -> anyhow::Result<()> {
    let versions = store.policy_history(1000).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&versions)?);
        return Ok(());
    }
    if versions.is_empty() {
        println!("no policy version was published");
    }
    for v in &versions {
        let rollback = v
            .rollback_of
            .map(|r| format!(" (rollback to {r})"))
            .unwrap_or_default();
        println!(
            "{:>5}  {}  {}  by {}{}{}",
            v.version,
            crate::clock::format_time(v.published_at),
            &v.hash[..16],
            v.published_by,
            rollback,
            v.note
                .as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

async fn rollback(
    config: &Config,
    store: &Store,
    version: i64,
    note: Option<&str>,
    by: Option<&str>,
) -> anyhow::Result<()> {
    let old = store
        .policy_version(version)
        .await?
        .with_context(|| format!("no policy version {version} was published"))?;
    // Checked again: the route table or the rate-limit rules may have changed since.
    let hash = check_servable(config, &old.files)
        .with_context(|| format!("version {version} cannot run with this config"))?;
    let new = store
        .publish_policy(&crate::store::NewPolicyVersion {
            hash: &hash,
            files: &old.files,
            published_by: &publisher(by),
            note,
            rollback_of: Some(version),
        })
        .await?;
    println!(
        "published version {new}: the files of version {version} (hash {})",
        &hash[..16]
    );
    Ok(())
}

/// A review found what it looks for (a widening, a lint finding): exit status 1, where any
/// other error of `policy diff` and `policy lint` is 2.
#[derive(Debug)]
pub struct Findings(pub String);

impl std::fmt::Display for Findings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Findings {}

/// The exit status of a failed policy command: 1 for [`Findings`], 2 for any other error of
/// `diff` and `lint` (a CI job tells "this change widens" from "the check could not run").
pub fn exit_status(cmd_reviews: bool, error: &anyhow::Error) -> u8 {
    if error.downcast_ref::<Findings>().is_some() || !cmd_reviews {
        1
    } else {
        2
    }
}

fn load_for_review(dir: &Path) -> anyhow::Result<crate::policy::Loaded> {
    load_dir(dir, 1).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))
}

async fn diff(
    old: &Path,
    new: &Path,
    allowed: &[String],
    allow_schema_change: bool,
    json: bool,
) -> anyhow::Result<()> {
    use crate::policy::review;
    let old_set = load_for_review(old)?;
    let new_set = load_for_review(new)?;
    let unknown = new_set.missing_actions(allowed);
    if !unknown.is_empty() {
        bail!(
            "--allow-widening names actions NEW's schema does not have: {}",
            unknown.join(", ")
        );
    }
    let mut prover = review::Prover::start().await.map_err(anyhow::Error::msg)?;
    let review::Diff {
        actions: changes,
        schema_changed,
        scopes_added,
        scopes_removed,
    } = review::diff(&mut prover, &old_set, &new_set)
        .await
        .map_err(anyhow::Error::msg)?;
    let widened: Vec<&str> = changes
        .iter()
        .filter(|c| c.may_widen() && !allowed.contains(&c.action))
        .map(|c| c.action.as_str())
        .collect();
    let schema_unaccepted = schema_changed && !allow_schema_change;
    if json {
        let report = serde_json::json!({
            "old": old.display().to_string(),
            "new": new.display().to_string(),
            "solver": prover.solver,
            "actions": changes,
            "schemaChanged": schema_changed,
            "scopesAdded": scopes_added,
            "scopesRemoved": scopes_removed,
            "widened": widened,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "policy diff {} → {} (proved with {})",
            old.display(),
            new.display(),
            prover.solver
        );
        if !scopes_added.is_empty() || !scopes_removed.is_empty() {
            println!(
                "  scopes a key or token may hold (@scope): added {}; removed {}",
                list_or_none(&scopes_added),
                list_or_none(&scopes_removed),
            );
        }
        if schema_changed {
            println!(
                "  the schema's entity types changed: this proof covers the entity stores valid \
                 under NEW's schema only{}",
                if allow_schema_change {
                    " (accepted by --allow-schema-change)"
                } else {
                    "; review the change by hand and pass --allow-schema-change"
                }
            );
        }
        for c in &changes {
            let note = if c.may_widen() && allowed.contains(&c.action) {
                " (allowed by --allow-widening)"
            } else {
                ""
            };
            println!("  {:<20} {}{note}", c.action, c.verdict());
        }
        for c in &changes {
            if let Some(e) = &c.widening {
                println!(
                    "\n{}: NEW allows a request OLD denies, for example",
                    c.action
                );
                print!("{}", review::render_example(e, Some(("NEW", "OLD"))));
            }
            if let Some(e) = &c.narrowing {
                println!(
                    "\n{}: OLD allows a request NEW denies, for example",
                    c.action
                );
                print!("{}", review::render_example(e, Some(("OLD", "NEW"))));
            }
            if let Some(g) = &c.groups {
                println!(
                    "\n{}: its groups changed (joined: {}; left: {}). Both sets are compiled \
                     under NEW's schema, so this proves nothing for it: review it by hand.",
                    c.action,
                    list_or_none(&g.added),
                    list_or_none(&g.removed),
                );
            }
            if let Some(e) = &c.old_errors {
                println!(
                    "\n{}: OLD's policy {} can error on it, and keygate denies whenever a policy \
                     errors; NEW may allow such a request, for example",
                    c.action, e.policy
                );
                print!("{}", review::render_example(&e.example, None));
            }
        }
    }
    let mut problems = Vec::new();
    if !widened.is_empty() {
        problems.push(format!(
            "the change may widen access: {}",
            widened.join(", ")
        ));
    }
    if schema_unaccepted {
        problems.push("the schema's entity types changed (--allow-schema-change)".to_owned());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Findings(problems.join("; ")).into())
    }
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

async fn lint(dir: &Path, json: bool) -> anyhow::Result<()> {
    use crate::policy::review;
    let loaded = load_for_review(dir)?;
    let mut prover = review::Prover::start().await.map_err(anyhow::Error::msg)?;
    let findings = review::lint(&mut prover, &loaded)
        .await
        .map_err(anyhow::Error::msg)?;
    if json {
        let report = serde_json::json!({
            "dir": dir.display().to_string(),
            "solver": prover.solver,
            "findings": findings,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for f in &findings {
            println!("{}: {} [{}]: {}", f.place, f.id, f.kind, f.message);
            if let Some(e) = &f.example {
                print!("{}", review::render_example(e, None));
            }
        }
        println!(
            "{}: {} polic{} checked, {} finding(s) (proved with {})",
            dir.display(),
            loaded.listed.len(),
            if loaded.listed.len() == 1 { "y" } else { "ies" },
            findings.len(),
            prover.solver
        );
    }
    if findings.is_empty() {
        Ok(())
    } else {
        Err(Findings(format!("{} lint finding(s)", findings.len())).into())
    }
}

fn fmt(dir: &Path, check: bool) -> anyhow::Result<()> {
    let config = cedar_policy_formatter::Config {
        line_width: 100,
        indent_width: 2,
    };
    let mut unformatted = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cedar"))
        .collect();
    names.sort();
    for path in names {
        let text = std::fs::read_to_string(&path)?;
        let pretty = cedar_policy_formatter::policies_str_to_pretty(&text, &config)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if pretty != text {
            if check {
                unformatted.push(path.display().to_string());
            } else {
                std::fs::write(&path, pretty)?;
                println!("formatted {}", path.display());
            }
        }
    }
    if !unformatted.is_empty() {
        bail!(
            "not formatted (run `keygate policy fmt`): {}",
            unformatted.join(", ")
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn explain(
    config: &Config,
    store: &Store,
    key: Option<String>,
    user: Option<String>,
    method: &str,
    path: &str,
    destination: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    use crate::manage::explain::{explain, Question, Subject};
    let engine = PolicyEngine::load(&config.policy_dir, Arc::new(Metrics::new()))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    engine.set_providers(store.provider_directory().await?);
    let subject = match (key, user) {
        (Some(id), _) => Subject::Key(id),
        (None, Some(email)) => Subject::User(email),
        (None, None) => bail!("give --key ID or --user EMAIL"),
    };
    let question = Question {
        subject,
        method: method.to_owned(),
        path: path.to_owned(),
        destination: destination.map(str::to_owned),
    };
    let answer = explain(
        store,
        &engine,
        &config.routes,
        None,
        &crate::manage::Actor::Operator,
        &question,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    println!("{} {} → action {}", method, path, answer.action);
    for r in &answer.resources {
        println!(
            "  {} → {}",
            r.resource,
            if r.allowed { "ALLOW" } else { "DENY" }
        );
        if r.policies.is_empty() {
            println!("    no policy permits it");
        }
        for p in &r.policies {
            println!("    {}: {}", p.id, p.intent.as_deref().unwrap_or_default());
        }
        if !r.details.is_empty() {
            println!(
                "    details: {}",
                serde_json::Value::Object(r.details.clone())
            );
        }
    }
    println!(
        "decision: {}",
        if answer.decision == "allow" {
            "ALLOW"
        } else {
            "DENY"
        }
    );
    Ok(())
}
