//! Every config shipped in `deploy/` passes `keygate check-config`; a broken one lists every
//! problem with where it is and exits non-zero.

mod common;

use std::process::Command;

use common::bin;

#[test]
fn every_shipped_config_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(bin("keygate"))
                .arg("--config")
                .arg(&path)
                .arg("check-config")
                .env_remove("KEYGATE_DATABASE_URL")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "expected the shipped configs in deploy/");
}

/// Every config shown in docs/webdav.md is a whole config `keygate check-config` accepts.
#[test]
fn the_webdav_docs_configs_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/webdav.md")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (i, block) in doc.split("```toml\n").skip(1).enumerate() {
        let toml = block.split("```").next().unwrap();
        let path = dir.path().join(format!("webdav-{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        let out = Command::new(bin("keygate"))
            .arg("--config")
            .arg(&path)
            .arg("check-config")
            .env_remove("KEYGATE_DATABASE_URL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docs/webdav.md, config #{}:\n{toml}\n{}",
            i + 1,
            String::from_utf8_lossy(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 3, "the configs of docs/webdav.md");
}

#[test]
fn check_config_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"nowhere\"\n[upstream]\npeers = []\n[routes]\npreset = \"ftp\"\n",
    )
    .unwrap();
    let out = Command::new(bin("keygate"))
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 problems"), "{err}");
    for want in [
        "[server] listen",
        "[upstream] peers",
        "[routes] preset",
        "bad.toml",
    ] {
        assert!(err.contains(want), "missing {want}: {err}");
    }
    let out = Command::new(bin("keygate"))
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .env("KEYGATE_SERVER_LISTEN", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("2 problems"),
        "the environment overrides the file"
    );
}

#[test]
fn postgres_needs_a_pepper_to_serve_but_not_to_migrate() {
    let out = Command::new(bin("keygate"))
        .args([
            "--database-url",
            "postgres://nobody@127.0.0.1:1/x",
            "check-config",
        ])
        .env_remove("KEYGATE_KEYS_PEPPER")
        .env_remove("KEYGATE_CONFIG")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pepper_file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(bin("keygate"))
        .args([
            "--database-url",
            "postgres://nobody@127.0.0.1:1/x",
            "check-config",
        ])
        .env(
            "KEYGATE_KEYS_PEPPER",
            "a pepper of at least thirty-two bytes",
        )
        .env_remove("KEYGATE_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
