//! The admin subcommands (`workspaces`, `users`, `members`, `providers`): thin wrappers over
//! the store that print a line (or JSON) and fail with a clear message.

use std::io::BufRead;

use anyhow::{bail, Context};
use serde::Serialize;

use crate::cli::{
    KeysCmd, MembersCmd, ProvidersCmd, RoleArg, SigningKeysCmd, UsersCmd, WorkspacesCmd,
};
use crate::manage::{Actor, CreateKey, KeyManager, KeyView, UpdateKey};
use crate::model::Grant;
use crate::model::Role;
use crate::store::Store;

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;

fn print<T: Serialize>(json: bool, value: &T, line: impl FnOnce(&T) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        println!("{}", line(value));
    }
}

fn print_list<T: Serialize>(json: bool, values: &[T], line: impl Fn(&T) -> String) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(values).unwrap_or_default()
        );
    } else {
        for v in values {
            println!("{}", line(v));
        }
    }
}

pub async fn signing_keys(
    store: &Store,
    pepper: &crate::model::Pepper,
    config: &crate::config::Config,
    cmd: SigningKeysCmd,
) -> anyhow::Result<()> {
    // Opening the keyring checks that this pepper unseals the key in force (and creates the
    // first key on a new database).
    let tokens = crate::identity::jwt::Tokens::open(store.clone(), pepper, config.tokens.clone())
        .await
        .context("cannot open the signing keys")?;
    match cmd {
        SigningKeysCmd::List { json } => {
            #[derive(Serialize)]
            #[serde(rename_all = "camelCase")]
            struct View {
                kid: String,
                alg: String,
                signing: bool,
                created_at: String,
                retire_at: Option<String>,
            }
            let keys: Vec<View> = store
                .signing_keys()
                .await?
                .into_iter()
                .map(|k| View {
                    signing: k.rotated_at.is_none(),
                    kid: k.kid,
                    alg: k.alg,
                    created_at: crate::clock::format_time(k.created_at),
                    retire_at: k.retire_at.map(crate::clock::format_time),
                })
                .collect();
            print_list(json, &keys, |k| {
                format!(
                    "{}\t{}\t{}\tcreated {}{}",
                    k.kid,
                    k.alg,
                    if k.signing { "signing" } else { "verifying" },
                    k.created_at,
                    k.retire_at
                        .as_deref()
                        .map(|r| format!(", retires {r}"))
                        .unwrap_or_default()
                )
            });
        }
        SigningKeysCmd::Rotate => {
            let kid = tokens.add_key().await.context("cannot rotate")?;
            println!("signing key {kid} signs from now on; earlier keys keep verifying the tokens they signed");
        }
    }
    Ok(())
}

pub async fn workspaces(store: &Store, cmd: WorkspacesCmd) -> anyhow::Result<()> {
    match cmd {
        WorkspacesCmd::Add { name, json } => {
            let ws = store.add_workspace(&name).await?;
            print(json, &ws, |w| {
                format!("created workspace {} ({})", w.name, w.id)
            });
        }
        WorkspacesCmd::List { json } => {
            print_list(json, &store.list_workspaces().await?, |w| {
                format!("{}\t{}", w.name, w.id)
            });
        }
    }
    Ok(())
}

pub async fn users(store: &Store, cmd: UsersCmd) -> anyhow::Result<()> {
    match cmd {
        UsersCmd::Add {
            email,
            name,
            password_stdin,
            json,
        } => {
            let password = read_password(password_stdin)?;
            let hash = hash_password(password).await?;
            let user = store.add_user(&email, name.as_deref(), &hash).await?;
            print(json, &user, |u| {
                format!("created user {} ({})", u.email, u.id)
            });
        }
        UsersCmd::List { json } => {
            print_list(json, &store.list_users().await?, |u| {
                format!("{}\t{}", u.email, u.id)
            });
        }
    }
    Ok(())
}

pub async fn members(store: &Store, cmd: MembersCmd) -> anyhow::Result<()> {
    match cmd {
        MembersCmd::Add {
            workspace,
            user,
            role,
            json,
        } => {
            let role = match role {
                RoleArg::Viewer => Role::Viewer,
                RoleArg::Editor => Role::Editor,
                RoleArg::Admin => Role::Admin,
            };
            let m = store.set_member(&workspace, &user, role).await?;
            print(json, &m, |m| {
                format!("{} is {} of workspace {}", m.email, m.role, m.workspace)
            });
        }
        MembersCmd::List { workspace, json } => {
            print_list(json, &store.list_members(&workspace).await?, |m| {
                format!("{}\t{}", m.email, m.role)
            });
        }
    }
    Ok(())
}

pub async fn providers(store: &Store, cmd: ProvidersCmd) -> anyhow::Result<()> {
    match cmd {
        ProvidersCmd::Add {
            name,
            workspace,
            json,
        } => {
            let p = store.add_provider(&name, &workspace).await?;
            print(json, &p, |p| {
                format!("created provider {} in workspace {}", p.name, p.workspace)
            });
        }
        ProvidersCmd::List { json } => {
            print_list(json, &store.list_providers().await?, |p| {
                format!("{}\t{}", p.name, p.workspace)
            });
        }
    }
    Ok(())
}

/// Reads a password from the first line of stdin, or from a prompt on a terminal.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            bail!("no terminal to ask for a password: pass --password-stdin and pipe it in");
        }
        let first = rpassword::prompt_password("password: ")?;
        let again = rpassword::prompt_password("again: ")?;
        if first != again {
            bail!("the passwords do not match");
        }
        first
    };
    if password.chars().count() < MIN_PASSWORD_LEN {
        bail!("the password must have at least {MIN_PASSWORD_LEN} characters");
    }
    Ok(password)
}

/// argon2id with the crate's defaults, off the async threads.
pub async fn hash_password(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{rand_core::OsRng, PasswordHasher, SaltString};
        let salt = SaltString::generate(&mut OsRng);
        argon2::Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))
    })
    .await?
}

/// `PROVIDER` or `PROVIDER:/BASE/PATH`.
fn grant(spec: &str) -> Grant {
    let (provider, base_path) = spec.split_once(':').unwrap_or((spec, "/"));
    Grant {
        provider: provider.to_owned(),
        base_path: base_path.to_owned(),
    }
}

fn key_line(k: &KeyView) -> String {
    let providers = match &k.providers {
        None => "all providers".to_owned(),
        Some(list) => list
            .iter()
            .map(|g| format!("{}:{}", g.provider, g.base_path))
            .collect::<Vec<_>>()
            .join(","),
    };
    let warning = if k.expires_soon {
        "  (expires within 7 days)"
    } else {
        ""
    };
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\texpires {}{}",
        k.id,
        k.display_prefix,
        k.name,
        k.status,
        k.scopes.join(","),
        providers,
        k.expires_at.as_deref().unwrap_or("never"),
        warning
    )
}

pub async fn keys(manager: &KeyManager, cmd: KeysCmd) -> anyhow::Result<()> {
    let op = Actor::Operator;
    match cmd {
        KeysCmd::Create {
            owner,
            workspace,
            name,
            scopes,
            providers,
            expires,
            json,
        } => {
            let req = CreateKey {
                name,
                scopes,
                providers: (!providers.is_empty())
                    .then(|| providers.iter().map(|p| grant(p)).collect()),
                expires_in: Some(expires),
                expires_at: None,
                owner: Some(owner),
                workspace,
            };
            let k = manager.create(&op, req).await?;
            print(json, &k, |k| {
                format!(
                    "{}\n\nThis is the only time the key is shown. {}",
                    k.key,
                    key_line(&k.view)
                )
            });
        }
        KeysCmd::List {
            owner,
            workspace,
            json,
        } => {
            let list = manager
                .list(&op, owner.as_deref(), workspace.as_deref(), false)
                .await?;
            print_list(json, &list, key_line);
        }
        KeysCmd::Show { id, json } => print(json, &manager.show(&op, &id).await?, key_line),
        KeysCmd::Update {
            id,
            name,
            scopes,
            providers,
            all_providers,
            expires,
            json,
        } => {
            let req = UpdateKey {
                name,
                scopes: (!scopes.is_empty()).then_some(scopes),
                providers: if all_providers {
                    Some(None)
                } else if providers.is_empty() {
                    None
                } else {
                    Some(Some(providers.iter().map(|p| grant(p)).collect()))
                },
                expires_in: expires,
                expires_at: None,
            };
            print(json, &manager.update(&op, &id, req).await?, key_line);
        }
        KeysCmd::Revoke { id, json } => print(json, &manager.revoke(&op, &id).await?, key_line),
        KeysCmd::Rotate { id, json } => {
            let k = manager.rotate(&op, &id).await?;
            print(json, &k, |k| {
                format!(
                    "{}\n\nThis is the only time the key is shown; the old key is revoked. {}",
                    k.key,
                    key_line(&k.view)
                )
            });
        }
        KeysCmd::Usage { id, json } => {
            let u = manager.usage(&op, &id).await?;
            print(json, &u, |u| {
                let mut out = format!(
                    "last used {}\n",
                    u.last_used_at.as_deref().unwrap_or("never")
                );
                for d in u.days.iter().chain(std::iter::once(&u.totals)) {
                    out.push_str(&format!(
                        "{}\trequests {}\tdenied {}\tbytes in {}\tbytes out {}\n",
                        d.day, d.requests, d.denied, d.bytes_in, d.bytes_out
                    ));
                }
                out.trim_end().to_owned()
            });
        }
    }
    Ok(())
}
