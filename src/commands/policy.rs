//! `keygate policy …`: the tools for the people who edit the policy files.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::cli::PolicyCmd;
use crate::config::Config;
use crate::policy::{load_dir, PolicyEngine};
use crate::principal::{Principal, PrincipalKind};
use crate::route::RouteInput;
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
    let engine = PolicyEngine::load(&config.policy_dir, Arc::new(Metrics::new()))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let directory = store.provider_directory().await?;
    engine.set_providers(directory.clone());
    let route = config
        .routes
        .route(RouteInput {
            method,
            raw_target: path.as_bytes(),
            destination: destination.map(str::as_bytes),
            overwrite: None,
            host: None,
        })
        .map_err(|r| {
            anyhow::anyhow!(
                "the request is refused before any policy: {} {:?}",
                r.code(),
                r
            )
        })?;
    let principal = match (key, user) {
        (Some(id), _) => Principal::from_key(store.key(&id).await?, Default::default()),
        (None, Some(email)) => {
            let user = store.user_by_email(&email).await?;
            let provider = route
                .resources
                .first()
                .map(|r| r.provider.to_string())
                .unwrap_or_default();
            let workspace = directory.get(&provider).cloned().unwrap_or_default();
            let role = store
                .memberships(&user.id)
                .await?
                .into_iter()
                .find(|(id, _, _)| *id == workspace)
                .map(|(_, _, role)| role);
            Principal {
                kind: PrincipalKind::Login,
                key_id: format!("login:{}", user.id),
                user_id: user.id,
                user_email: user.email,
                workspace_id: workspace,
                workspace: String::new(),
                scopes: role.map(|r| vec![r.scope().to_owned()]).unwrap_or_default(),
                grants: None,
                role,
                expires_at: None,
                generation: 0,
                usage: Default::default(),
            }
        }
        (None, None) => bail!("give --key ID or --user EMAIL"),
    };
    let verdicts = engine.decide_uncached(&principal, &route);
    let allowed = !verdicts.is_empty() && verdicts.iter().all(|v| v.allowed);
    let loaded = engine.current();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "decision": if allowed { "allow" } else { "deny" },
                "action": &*route.action,
                "resources": route.resources.iter().map(|r| format!("{}:{}", r.provider, r.path)).collect::<Vec<_>>(),
                "verdicts": verdicts,
            }))?
        );
        return Ok(());
    }
    println!("{} {} → action {}", method, path, route.action);
    for (r, v) in route.resources.iter().zip(&verdicts) {
        println!(
            "  {}:{} → {}",
            r.provider,
            r.path,
            if v.allowed { "ALLOW" } else { "DENY" }
        );
        if v.policies.is_empty() {
            println!("    no policy permits it");
        }
        for id in &v.policies {
            let intent = loaded.intent.get(id).map(String::as_str).unwrap_or("");
            println!("    {id}: {intent}");
        }
        if !v.details.is_empty() {
            println!(
                "    details: {}",
                serde_json::Value::Object(v.details.clone())
            );
        }
    }
    println!("decision: {}", if allowed { "ALLOW" } else { "DENY" });
    Ok(())
}
