//! The deploy files, checked as far as a machine without a container runtime or a cluster can:
//! the image definition builds what the workspace has, the compose file is valid Compose and its
//! keygate config passes `keygate check-config`, the Kubernetes manifests are valid against the
//! Kubernetes schemas and their config passes too. The compose check needs Debian's
//! `docker-compose`, the manifests PyPI's `kubernetes-validate`; without them those parts report
//! themselves skipped (CI installs both and sets `KEYGATE_TEST_REQUIRE_DEPLOY=1`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The tool on PATH, or `None` (skipped) unless CI requires it.
fn tool(name: &str, install: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var_os("KEYGATE_TEST_REQUIRE_DEPLOY").is_none(),
            "{name} is required ({install})"
        );
        eprintln!("skipped: {name} is not installed ({install})");
    }
    found
}

/// `keygate check-config` on `config` (a file's text), with the secrets it names made up, and
/// `peer` (a backend's name, which resolves only where the file is deployed) as 127.0.0.1.
fn check_config(config: &str, peer: &str, env: &[(&str, &str)]) {
    assert!(
        config.contains(&format!("peers = [\"{peer}:7070\"]")),
        "{peer}"
    );
    let config = config.replace(&format!("\"{peer}:7070\""), "\"127.0.0.1:7070\"");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(bin("keygate"))
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .envs(env.iter().copied())
        .env("KEYGATE_POLICIES_DIR", repo("policies"))
        .env_remove("KEYGATE_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("config ok"));
}

#[test]
fn the_image_builds_the_workspace_binaries_and_runs_them_as_a_user() {
    let dockerfile = read("Dockerfile");
    assert_eq!(
        dockerfile
            .lines()
            .filter(|l| l.starts_with("FROM "))
            .count(),
        2,
        "a build stage and a runtime stage"
    );
    // It builds and copies the binaries the workspace has, under their names.
    for (package, binary) in [
        ("keygate", "keygate"),
        ("storage-backend", "storage-backend"),
    ] {
        assert!(dockerfile.contains(&format!("-p {package}")), "{package}");
        assert!(
            dockerfile.contains(&format!("target/release/{binary} ")),
            "{binary}"
        );
        assert!(bin(binary).is_file(), "the workspace builds no {binary}");
    }
    assert!(dockerfile.contains("--locked"));
    assert!(repo("policies/keygate.cedarschema").is_file());
    // Not root at run time, and what it exposes is what the configs listen on.
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER");
    assert!(
        !user.starts_with("0") && !user.starts_with("root"),
        "{user}"
    );
    assert!(dockerfile.contains("EXPOSE 8080 9090"));
    for ignored in ["target/", ".git/"] {
        assert!(
            read(".dockerignore").lines().any(|l| l == ignored),
            "{ignored}"
        );
    }
}

#[test]
fn the_compose_cluster_is_valid_compose_and_its_configs_check() {
    let config = read("deploy/compose/keygate.toml");
    assert!(config.contains("source = \"database\"") && config.contains("backend = \"redis\""));
    check_config(
        &config,
        "storage",
        &[
            (
                "KEYGATE_KEYS_PEPPER",
                "a compose pepper of at least thirty-two bytes",
            ),
            ("KEYGATE_CONTROL_OPERATOR_TOKEN", "a compose operator token"),
            (
                "KEYGATE_DATABASE_URL",
                "postgres://keygate:keygate@postgres:5432/keygate",
            ),
        ],
    );
    // Every file the services mount exists.
    let compose = read("deploy/compose.yaml");
    for line in compose.lines() {
        if let Some(rest) = line.trim().strip_prefix("- ./") {
            let source = rest.split(':').next().unwrap();
            assert!(repo(&format!("deploy/{source}")).is_file(), "{source}");
        }
    }
    if let Some(promtool) = tool("promtool", "apt-get install prometheus") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prometheus.yml");
        std::fs::write(
            &path,
            read("deploy/compose/prometheus.yml").replace(
                "/etc/prometheus/alerts.yml",
                repo("deploy/prometheus/alerts.yml").to_str().unwrap(),
            ),
        )
        .unwrap();
        let out = Command::new(promtool)
            .args(["check", "config", path.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let Some(compose_tool) = tool("docker-compose", "apt-get install docker-compose") else {
        return;
    };
    let run = |env: &[(&str, &str)]| {
        Command::new(&compose_tool)
            .current_dir(repo("deploy"))
            .args(["-f", "compose.yaml", "config"])
            .env_remove("KEYGATE_KEYS_PEPPER")
            .env_remove("KEYGATE_CONTROL_OPERATOR_TOKEN")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let out = run(&[
        ("KEYGATE_KEYS_PEPPER", "p"),
        ("KEYGATE_CONTROL_OPERATOR_TOKEN", "t"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for service in [
        "postgres:",
        "redis:",
        "storage:",
        "keygate-init:",
        "keygate-1:",
        "keygate-2:",
        "keygate-3:",
        "lb:",
        "prometheus:",
        "grafana:",
    ] {
        assert!(
            text.contains(&format!("  {service}\n")),
            "{service}\n{text}"
        );
    }
    // Neither secret is in the file: without them, compose refuses to run.
    let out = run(&[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("set KEYGATE_KEYS_PEPPER"));
}

#[test]
fn the_kubernetes_manifests_are_valid_and_their_config_checks() {
    let kustomization = read("deploy/kubernetes/kustomization.yaml");
    let resources: Vec<&str> = kustomization
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter(|r| r.ends_with(".yaml"))
        .collect();
    assert!(resources.len() >= 6, "{resources:?}");
    // The config in the ConfigMap, as keygate reads it.
    let configmap = read("deploy/kubernetes/configmap.yaml");
    let config: String = configmap
        .lines()
        .skip_while(|l| !l.contains("keygate.toml: |"))
        .skip(1)
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(config.contains("[server]") && config.contains("pepper_file"));
    let secrets = tempfile::tempdir().unwrap();
    let pepper = secrets.path().join("pepper");
    let token = secrets.path().join("operator-token");
    std::fs::write(&pepper, "a kubernetes pepper of at least thirty-two bytes").unwrap();
    std::fs::write(&token, "a kubernetes operator token").unwrap();
    check_config(
        &config,
        "storage.storage.svc.cluster.local",
        &[
            ("KEYGATE_KEYS_PEPPER_FILE", pepper.to_str().unwrap()),
            (
                "KEYGATE_CONTROL_OPERATOR_TOKEN_FILE",
                token.to_str().unwrap(),
            ),
            (
                "KEYGATE_DATABASE_URL",
                "postgres://keygate@postgres.db:5432/keygate",
            ),
            (
                "KEYGATE_RATE_LIMIT_REDIS_URL",
                "redis://keygate:secret@redis:6379",
            ),
        ],
    );
    // Everything that loads the config gets the Redis URL it leaves out.
    for file in ["deployment.yaml", "publish-policies.yaml"] {
        let text = read(&format!("deploy/kubernetes/{file}"));
        assert!(text.contains("KEYGATE_RATE_LIMIT_REDIS_URL"), "{file}");
        assert!(text.contains("KEYGATE_DATABASE_URL"), "{file}");
    }
    // The probes ask what keygate serves.
    let deployment = read("deploy/kubernetes/deployment.yaml");
    for path in ["path: /readyz", "path: /healthz"] {
        assert!(deployment.contains(path), "{path}");
    }
    let Some(validate) = tool("kubernetes-validate", "pip install kubernetes-validate") else {
        return;
    };
    let mut files: Vec<PathBuf> = resources
        .iter()
        .map(|r| repo(&format!("deploy/kubernetes/{r}")))
        .collect();
    files.push(repo("deploy/kubernetes/secret.example.yaml"));
    let out = Command::new(validate)
        .args(["--strict", "--kubernetes-version", "1.31"])
        .args(&files)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    // Every resource was checked against a schema, none skipped.
    assert!(text.matches(" passed ").count() >= 8, "{text}");
    assert!(!text.contains("skipped"), "{text}");
}
