//! `keygate policy diff` and `keygate policy lint`, run as a security team would: on copies of
//! the shipped policies changed in known ways, through the real binary and the cvc5 solver.
//!
//! Needs Debian's `cvc5` package. Without it the tests report themselves skipped, unless
//! `KEYGATE_TEST_REQUIRE_CVC5` is set (CI sets it), when they fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::bin;
use serde_json::Value;
use tempfile::TempDir;

fn cvc5_present() -> bool {
    let program = std::env::var("CVC5").unwrap_or_else(|_| "cvc5".to_owned());
    let found = Command::new(program).arg("--version").output().is_ok();
    if !found {
        assert!(
            std::env::var_os("KEYGATE_TEST_REQUIRE_CVC5").is_none(),
            "cvc5 is required (apt-get install cvc5)"
        );
        eprintln!("skipped: cvc5 is not installed (apt-get install cvc5)");
    }
    found
}

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// A copy of the shipped policy folder with `edit` applied to `file` (its whole text).
fn variant(file: &str, edit: impl FnOnce(String) -> String) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(shipped()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let target = dir.path().join(file);
    let text = std::fs::read_to_string(&target).unwrap();
    let changed = edit(text.clone());
    assert_ne!(changed, text, "the edit of {file} changed nothing");
    std::fs::write(&target, changed).unwrap();
    dir
}

struct Outcome {
    code: i32,
    report: Value,
    stderr: String,
}

fn keygate_policy(args: &[&str]) -> Outcome {
    let out = Command::new(bin("keygate"))
        .arg("policy")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Outcome {
        code: out.status.code().unwrap_or(-1),
        report,
        stderr,
    }
}

fn diff(old: &Path, new: &Path, extra: &[&str]) -> Outcome {
    let mut args = vec!["diff", old.to_str().unwrap(), new.to_str().unwrap()];
    args.extend_from_slice(extra);
    keygate_policy(&args)
}

/// The verdict of each action in a diff report.
fn verdicts(report: &Value) -> Vec<(String, String)> {
    report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let v = match (a["widening"].is_null(), a["narrowing"].is_null()) {
                (true, true) => "equivalent",
                (false, true) => "widens",
                (true, false) => "narrows",
                (false, false) => "both",
            };
            (a["action"].as_str().unwrap().to_owned(), v.to_owned())
        })
        .collect()
}

fn action<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == name)
        .unwrap_or_else(|| panic!("{name} is not in the report: {report}"))
}

const STORAGE: &[&str] = &[
    "readFile",
    "listFolder",
    "searchFiles",
    "listTrash",
    "writeFile",
    "moveFile",
    "copyFile",
    "deleteFile",
    "createFolder",
    "restoreTrash",
    "purgeTrash",
];

#[test]
fn dropping_the_base_path_condition_widens_every_storage_action_with_a_counterexample_on_the_base_path(
) {
    if !cvc5_present() {
        return;
    }
    let new = variant("restrictions.cedar", |t| {
        t.replace(
            "  principal.providers.contains(resource.provider) &&\n  !(resource in principal.grants)",
            "  principal.providers.contains(resource.provider) &&\n  false",
        )
    });
    let out = diff(&shipped(), new.path(), &[]);
    assert_eq!(out.code, 1, "a widening exits 1: {}", out.stderr);
    assert!(out.stderr.contains("may widen access"), "{}", out.stderr);
    for (name, verdict) in verdicts(&out.report) {
        let expected = if STORAGE.contains(&name.as_str()) {
            "widens"
        } else {
            "equivalent"
        };
        assert_eq!(verdict, expected, "{name}");
    }
    let example = &action(&out.report, "readFile")["widening"];
    // The counterexample is a restricted credential, on a path of a granted provider, outside
    // every base path it holds; OLD's base-path forbid is what denies it there.
    assert_eq!(
        example["deniedBy"],
        serde_json::json!(["outside-base-path"])
    );
    let allowed_by = example["allowedBy"].as_array().unwrap();
    assert!(
        allowed_by
            .iter()
            .all(|p| p.as_str().unwrap().starts_with("scope-")),
        "{example}"
    );
    let entities = example["entities"].as_array().unwrap();
    let principal = example["principal"].as_str().unwrap();
    let line = entities
        .iter()
        .map(|e| e.as_str().unwrap())
        .find(|e| e.starts_with(principal))
        .unwrap();
    assert!(line.contains("restricted: true"), "{line}");
    assert!(line.contains("grants: "), "{line}");
    let widened: Vec<&str> = out.report["widened"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(widened.len(), STORAGE.len());
}

#[test]
fn a_tightened_scope_and_a_new_forbid_narrow_only_and_exit_zero() {
    if !cvc5_present() {
        return;
    }
    // read no longer includes searching: only the search actions change.
    let tightened = variant("scopes.cedar", |t| {
        t.replace(
            "when { principal.scopes.contains(\"read\") };",
            "when\n{\n  principal.scopes.contains(\"read\") &&\n  action != Keygate::Action::\"searchFiles\"\n};",
        )
    });
    let out = diff(&shipped(), tightened.path(), &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for (name, verdict) in verdicts(&out.report) {
        let expected = if name == "searchFiles" {
            "narrows"
        } else {
            "equivalent"
        };
        assert_eq!(verdict, expected, "{name}");
    }
    let example = &action(&out.report, "searchFiles")["narrowing"];
    assert_eq!(example["allowedBy"], serde_json::json!(["scope-read"]));

    let forbid = variant("restrictions.cedar", |t| {
        t + "\n@id(\"keys-never-purge\")\nforbid (\n  principal is Keygate::ApiKey,\n  action == \
             Keygate::Action::\"purgeTrash\",\n  resource\n);\n"
    });
    let out = diff(&shipped(), forbid.path(), &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for (name, verdict) in verdicts(&out.report) {
        let expected = if name == "purgeTrash" {
            "narrows"
        } else {
            "equivalent"
        };
        assert_eq!(verdict, expected, "{name}");
    }
    let example = &action(&out.report, "purgeTrash")["narrowing"];
    assert!(example["principal"]
        .as_str()
        .unwrap()
        .starts_with("Keygate::ApiKey::"));
    assert_eq!(example["deniedBy"], serde_json::json!(["keys-never-purge"]));
}

#[test]
fn a_reordered_file_is_equivalent() {
    if !cvc5_present() {
        return;
    }
    let reordered = variant("scopes.cedar", |t| {
        // Split after each policy's final `;` and put the policies in reverse order.
        let mut policies: Vec<String> = t.split_inclusive("};\n").map(str::to_owned).collect();
        policies.reverse();
        policies.concat()
    });
    let out = diff(&shipped(), reordered.path(), &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let verdicts = verdicts(&out.report);
    assert!(verdicts.len() >= STORAGE.len());
    assert!(
        verdicts.iter().all(|(_, v)| v == "equivalent"),
        "{verdicts:?}"
    );
}

#[test]
fn a_new_permit_for_one_action_widens_that_action_only_and_can_be_allowed() {
    if !cvc5_present() {
        return;
    }
    let new = variant("scopes.cedar", |t| {
        t + "\n@id(\"files-read-lists-trash\")\npermit (\n  principal,\n  action == \
             Keygate::Action::\"listTrash\",\n  resource\n)\nwhen { \
             principal.scopes.contains(\"files:read\") };\n"
    });
    let out = diff(&shipped(), new.path(), &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    for (name, verdict) in verdicts(&out.report) {
        let expected = if name == "listTrash" {
            "widens"
        } else {
            "equivalent"
        };
        assert_eq!(verdict, expected, "{name}");
    }
    let example = &action(&out.report, "listTrash")["widening"];
    assert_eq!(
        example["allowedBy"],
        serde_json::json!(["files-read-lists-trash"])
    );
    assert_eq!(out.report["widened"], serde_json::json!(["listTrash"]));

    // Meant to widen: reported, not failed. Another action named does not excuse it.
    let out = diff(&shipped(), new.path(), &["--allow-widening", "listTrash"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.report["widened"], serde_json::json!([]));
    let out = diff(&shipped(), new.path(), &["--allow-widening", "readFile"]);
    assert_eq!(out.code, 1, "{}", out.stderr);

    // The text form names the action, the verdict and the responsible policy.
    let text = Command::new(bin("keygate"))
        .args(["policy", "diff"])
        .arg(shipped())
        .arg(new.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("listTrash"), "{stdout}");
    assert!(
        stdout.contains("NEW allows it by: files-read-lists-trash"),
        "{stdout}"
    );
}

#[test]
fn errors_exit_two_and_never_pass() {
    if !cvc5_present() {
        return;
    }
    let broken = variant("scopes.cedar", |t| t.replace("permit (", "permit ((("));
    let out = diff(&shipped(), broken.path(), &[]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("scopes.cedar"), "{}", out.stderr);

    let out = diff(
        &shipped(),
        &shipped(),
        &["--allow-widening", "noSuchAction"],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);

    // A solver that cannot run is an error, not an empty report.
    let out = Command::new(bin("keygate"))
        .args(["policy", "diff"])
        .arg(shipped())
        .arg(shipped())
        .env("CVC5", "/nonexistent/cvc5")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cvc5"));
}

#[test]
fn lint_finds_dead_erroring_and_shadowed_policies_by_id_and_line() {
    if !cvc5_present() {
        return;
    }
    let clean = keygate_policy(&["lint", shipped().to_str().unwrap()]);
    assert_eq!(
        clean.code, 0,
        "the shipped policies lint clean: {}",
        clean.report
    );
    assert_eq!(clean.report["findings"], serde_json::json!([]));

    let extra =
        "\n@id(\"dead-permit\")\npermit (principal, action, resource)\nwhen { principal.role \
                 == \"viewer\" && principal.role == \"admin\" };\n\n@id(\"overflowing\")\nforbid \
                 (principal, action, resource)\nwhen { principal.scopes.contains(\"x\") && \
                 9223372036854775807 + 1 > 0 };\n\n@id(\"departed-members\")\npermit (principal, \
                 action, resource)\nwhen { principal.role == \"none\" };\n";
    let dir = variant("scopes.cedar", |t| t + extra);
    let out = keygate_policy(&["lint", dir.path().to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let findings: Vec<(String, String, String)> = out.report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["id"].as_str().unwrap().to_owned(),
                f["kind"].as_str().unwrap().to_owned(),
                f["place"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let lines = |id: &str| {
        let text = std::fs::read_to_string(dir.path().join("scopes.cedar")).unwrap();
        let line = text
            .lines()
            .position(|l| l.contains(&format!("@id(\"{id}\")")))
            .unwrap()
            + 1;
        format!("scopes.cedar:{line}:1")
    };
    assert!(
        findings.contains(&("dead-permit".into(), "dead".into(), lines("dead-permit"))),
        "{findings:?}"
    );
    // Always overflowing: it never applies and it errors.
    assert!(
        findings.contains(&(
            "overflowing".into(),
            "always-errors".into(),
            lines("overflowing")
        )),
        "{findings:?}"
    );
    assert!(
        findings.contains(&(
            "departed-members".into(),
            "shadowed".into(),
            lines("departed-members")
        )),
        "{findings:?}"
    );
    let shadowed = out.report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "shadowed")
        .unwrap();
    assert!(
        shadowed["message"]
            .as_str()
            .unwrap()
            .ends_with("(owner-not-member)"),
        "{shadowed}"
    );
    assert_eq!(findings.len(), 3, "only these: {findings:?}");
}

/// A git repository holding a copy of the shipped policies, committed.
fn repository() -> TempDir {
    let repo = tempfile::tempdir().unwrap();
    let policies = repo.path().join("policies");
    std::fs::create_dir_all(policies.join("tests")).unwrap();
    for sub in ["", "tests"] {
        for entry in std::fs::read_dir(shipped().join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, policies.join(sub).join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    git(repo.path(), &["init", "--quiet"]);
    commit(repo.path(), "the policies as they are");
    repo
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

fn commit(dir: &Path, message: &str) {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "--quiet", "-m", message]);
}

/// deploy/ci/policy-review.sh in `repo` against `base`: (exit status, output, job summary).
fn review(repo: &Path, base: &str, widens: Option<&str>) -> (i32, String, String) {
    let summary = repo.join("summary.md");
    let _ = std::fs::remove_file(&summary);
    let mut cmd = Command::new("bash");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ci/policy-review.sh"))
        .arg(base)
        .current_dir(repo)
        .env("KEYGATE", bin("keygate"))
        .env("GITHUB_STEP_SUMMARY", &summary)
        .env_remove("POLICY_WIDENS");
    if let Some(w) = widens {
        cmd.env("POLICY_WIDENS", w);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = std::fs::read_to_string(&summary).unwrap_or_default();
    (out.status.code().unwrap_or(-1), text, summary)
}

#[test]
fn the_ci_review_fails_an_undeclared_widening_and_passes_a_declared_one() {
    if !cvc5_present() {
        return;
    }
    let repo = repository();
    let (code, out, summary) = review(repo.path(), "HEAD", None);
    assert_eq!(code, 0, "{out}");
    for step in ["validate", "test", "format", "lint", "diff"] {
        assert!(
            summary.contains(&format!("### {step}: passed")),
            "{summary}"
        );
    }

    let scopes = repo.path().join("policies/scopes.cedar");
    let text = std::fs::read_to_string(&scopes).unwrap();
    std::fs::write(
        &scopes,
        text + "\n@id(\"trash-<list>-scope\")\npermit (\n  principal,\n  action == \
                Keygate::Action::\"listTrash\",\n  resource\n)\nwhen { \
                principal.scopes.contains(\"files:read\") && resource in Keygate::Path::\"local:/shared\" };\n",
    )
    .unwrap();
    commit(repo.path(), "files:read lists the trash");
    let (code, out, summary) = review(repo.path(), "HEAD~1", None);
    assert_eq!(code, 1, "{out}");
    assert!(summary.contains("### diff: FAILED (exit 1)"), "{summary}");
    // Policy ids are the author's text: HTML-escaped in the summary.
    assert!(
        summary.contains("NEW allows it by: trash-&lt;list&gt;-scope"),
        "{summary}"
    );
    assert!(!summary.contains("<list>"), "{summary}");
    // The other steps still ran and passed.
    assert!(summary.contains("### lint: passed"), "{summary}");

    let (code, out, summary) = review(repo.path(), "HEAD~1", Some("listTrash, readFile"));
    assert_eq!(code, 0, "{out}");
    assert!(summary.contains("### diff: passed"), "{summary}");
    assert!(
        summary.contains("(allowed by --allow-widening)"),
        "{summary}"
    );

    // An invalid policy is a finding; lint and diff, which need a valid set, are skipped.
    std::fs::write(
        &scopes,
        "permit (principal, action, resource) when { nonsense };\n",
    )
    .unwrap();
    let (code, out, summary) = review(repo.path(), "HEAD", None);
    assert_eq!(code, 1, "{out}");
    assert!(summary.contains("### validate: FAILED"), "{summary}");
    assert!(
        summary.contains("skipped (the policies do not validate)"),
        "{summary}"
    );

    // A base that is not in the clone: the review could not run.
    let (code, out, _) = review(repo.path(), "no-such-revision", None);
    assert_eq!(code, 2, "{out}");
}

/// What a proof under one schema cannot see is never reported as equivalent: an action whose
/// groups changed, and an OLD policy that errors (keygate denies on any error, where Cedar
/// would skip the policy).
#[test]
fn changes_the_proof_cannot_cover_count_as_widening() {
    if !cvc5_present() {
        return;
    }
    // deleteFile joins the read-only files.read permission.
    let regrouped = variant("keygate.cedarschema", |t| {
        t.replace(
            "action deleteFile in [\"files:delete\", \"level:write\"]",
            "action deleteFile in [\"files:delete\", \"level:write\", \"files.read\"]",
        )
    });
    let out = diff(&shipped(), regrouped.path(), &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let change = action(&out.report, "deleteFile");
    assert_eq!(
        change["groups"],
        serde_json::json!({"added": ["files.read"], "removed": []})
    );
    assert_eq!(out.report["widened"], serde_json::json!(["deleteFile"]));

    // OLD has a permit that errors on every evaluation for viewers: keygate denied their
    // reads; NEW, without it, lets them read.
    let erroring = variant("scopes.cedar", |t| {
        t + "\n@id(\"boom\")\npermit (\n  principal,\n  action == Keygate::Action::\"readFile\",\n  \
             resource\n)\nwhen { principal.role == \"viewer\" && 9223372036854775807 + 1 > 0 };\n"
    });
    let out = diff(erroring.path(), &shipped(), &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(
        action(&out.report, "readFile")["oldErrors"]["policy"],
        "boom"
    );
    assert_eq!(out.report["widened"], serde_json::json!(["readFile"]));

    // OLD's schema did not let a signed-in user read files (keygate refused such a request);
    // NEW's does: compared with nothing allowed, a widening.
    let no_logins = variant("keygate.cedarschema", |t| {
        t.replace(
            "action readFile in [\"files:read\"]\n    appliesTo { principal: [ApiKey, ScopedToken, Login],",
            "action readFile in [\"files:read\"]\n    appliesTo { principal: [ApiKey, ScopedToken],",
        )
    });
    let out = diff(no_logins.path(), &shipped(), &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.report["widened"], serde_json::json!(["readFile"]));
    assert!(action(&out.report, "readFile")["widening"]["principal"]
        .as_str()
        .unwrap()
        .starts_with("Keygate::Login::"));

    // OLD required a context keygate never sends (so it denied every readFile).
    let context = variant("keygate.cedarschema", |t| {
        t.replacen(
            "resource: [Path, Unmapped], context: {} };",
            "resource: [Path, Unmapped], context: { mfa: Bool } };",
            1,
        )
    });
    let out = diff(context.path(), &shipped(), &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let changed: Vec<&str> = out.report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["contextChanged"] == true)
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(changed.len(), 1, "{}", out.report);

    // A change to the entity types is accepted only by hand.
    let retyped = variant("keygate.cedarschema", |t| {
        t.replace("entity Unmapped;", "entity Unmapped = { note: String };")
    });
    let out = diff(&shipped(), retyped.path(), &[]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.report["schemaChanged"], true);
    let out = diff(&shipped(), retyped.path(), &["--allow-schema-change"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// A folder written for an older keygate (no `@scope` in its schema) is refused for serving by
/// `policy validate`, but `policy diff` still loads it, to show what upgrading it changes.
#[test]
fn an_older_folder_is_not_servable_but_can_be_compared() {
    if !cvc5_present() {
        return;
    }
    let older = variant("keygate.cedarschema", |t| t.replace("  @scope\n", ""));
    let out = Command::new(bin("keygate"))
        .args(["policy", "validate"])
        .arg(older.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("marks no action group @scope"));
    let out = diff(older.path(), &shipped(), &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.report["scopesAdded"].as_array().unwrap().len() >= 23);
}
