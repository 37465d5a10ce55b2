//! `keygate policy …`: the tools for the people who edit the policy files.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::cli::PolicyCmd;
use crate::config::Config;
use crate::policy::{load_dir, PolicyEngine};
use crate::store::Store;
use crate::telemetry::Metrics;

/// Runs a policy subcommand; `store` is needed by `explain` only.
pub async fn run(config: &Config, cmd: PolicyCmd, store: Option<&Store>) -> anyhow::Result<()> {
    let dir_of =
        |d: &Option<std::path::PathBuf>| d.clone().unwrap_or_else(|| config.policy_dir.clone());
    match cmd {
        PolicyCmd::Validate { dir } => {
            let dir = dir_of(&dir);
            let loaded = load_dir(&dir, 1).map_err(|e| anyhow::anyhow!("{e}"))?;
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
            let report = crate::policy::scenarios::run(&dir).map_err(|e| anyhow::anyhow!("{e}"))?;
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
