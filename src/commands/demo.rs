//! `keygate demo`: storage-backend and keygate on one machine, on a temporary SQLite database
//! and data folder, with a workspace, a user and a provider `local`. Runs until interrupted.

use anyhow::Context;
use rand::distributions::{Alphanumeric, DistString};

use crate::cli::DemoArgs;
use crate::config::{Config, Overrides};
use crate::model::Role;
use crate::store::Store;

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("keygate-demo-").tempdir()?;
    let data_root = dir.path().join("data");

    let backend_state = storage_backend::AppState::open(&storage_backend::BackendConfig {
        root: data_root.clone(),
        providers: vec!["local".to_owned()],
    })
    .await?;
    let backend_listener = tokio::net::TcpListener::bind(&args.backend_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.backend_listen))?;
    let backend_addr = backend_listener.local_addr()?;
    let (stop_backend, backend_stopped) = tokio::sync::oneshot::channel::<()>();
    let backend = tokio::spawn(storage_backend::serve(
        backend_listener,
        backend_state,
        async {
            let _ = backend_stopped.await;
        },
    ));

    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies)?;
    for (name, text) in crate::policy::SHIPPED {
        std::fs::write(policies.join(name), text)?;
    }
    let db_url = format!("sqlite://{}", dir.path().join("keygate.db").display());
    let store = Store::open(&db_url, 5).await?;
    let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 16);
    store.add_workspace("demo").await?;
    let user = store
        .add_user(
            "demo@example.com",
            Some("Demo User"),
            &crate::commands::admin::hash_password(password.clone()).await?,
        )
        .await?;
    store.set_member("demo", &user.email, Role::Admin).await?;
    store.add_provider("local", "demo").await?;

    let operator_token = format!(
        "op_{}",
        Alphanumeric.sample_string(&mut rand::thread_rng(), 32)
    );
    let mut config_text = format!(
        "[control]\noperator_token = \"{operator_token}\"\n[policies]\ndir = {:?}\n",
        policies.display().to_string()
    );
    let ca_file = dir.path().join("ca.pem");
    if args.tls {
        let (cert, key) = throwaway_certificate(dir.path(), &ca_file)?;
        config_text.push_str(&format!(
            "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ));
    }
    let config = Config::from_toml(
        &config_text,
        "demo",
        std::iter::empty(),
        &Overrides {
            listen: Some(args.listen.clone()),
            control_listen: Some(args.control_listen.clone()),
            database_url: Some(db_url.clone()),
            peers: vec![backend_addr.to_string()],
        },
    )?;
    let manager = crate::server::key_manager(&config, store.clone())?;
    let key = manager
        .create(
            &crate::manage::Actor::Operator,
            crate::manage::CreateKey {
                name: "demo full access".to_owned(),
                scopes: vec!["admin".to_owned()],
                owner: Some(user.email.clone()),
                workspace: Some("demo".to_owned()),
                ..Default::default()
            },
        )
        .await?
        .key;
    let running =
        crate::server::start_with_store(&config, store, crate::server::Listen::Bind).await?;
    let data = running.data_addr;
    let control = running.control_addr;

    println!(
        r#"keygate demo is running (Ctrl-C to stop; everything lives in {dir})

  data plane     {scheme}://{data}
  control plane  {scheme}://{control}{ca_line}
  web console    {scheme}://{control}/console/   (sign in as demo@example.com)
  backend        http://{backend_addr}   (no authentication: keygate fronts it)

  workspace demo, provider local, user demo@example.com (admin), password {password}
  API key (full access)  {key}
  operator token         {operator_token}

Try:
  export KEY={key} OP={operator_token}
  echo 'hello keygate' > hello.txt
  {curl} -sS -H "X-API-Key: $KEY" -T hello.txt {scheme}://{data}/v1/files/local/docs/hello.txt
  {curl} -sS -H "Authorization: Bearer $KEY" {scheme}://{data}/v1/files/local/docs/hello.txt
  {curl} -sS -H "X-API-Key: $KEY" {scheme}://{data}/v1/folders/local/docs
  {curl} -sS -H "X-API-Key: $KEY" -X MOVE -H 'Destination: /v1/files/local/docs/renamed.txt' {scheme}://{data}/v1/files/local/docs/hello.txt
  {curl} -sS -H "X-API-Key: $KEY" '{scheme}://{data}/v1/search/local?q=renamed'
  {curl} -sS {scheme}://{data}/v1/folders/local                          # refused: 401, no key
  {curl} -sS -H "X-API-Key: $KEY" {scheme}://{data}/v1/files/local/%2e%2e/x  # refused: 400
  # policies (edit them and keygate reloads): {dir}/policies
  {curl} -sS -H "Authorization: Bearer $OP" -H 'content-type: application/json' \
       -d '{{"name":"backups only","scopes":["read"],"providers":[{{"provider":"local","basePath":"/backups"}}],"expiresIn":"30d","owner":"demo@example.com"}}' \
       {scheme}://{control}/v1/keys
  {curl} -sS -H "Authorization: Bearer $OP" {scheme}://{control}/v1/keys
  # sign in as the demo user: a 30-day mobile token (or "type":"access" / "session")
  TOKEN=$({curl} -sS -H 'content-type: application/json' \
       -d '{{"email":"demo@example.com","password":"{password}","type":"mobile"}}' \
       {scheme}://{control}/v1/auth/login | sed -E 's/.*"token":"([^"]+)".*/\1/')
  {curl} -sS -H "Authorization: Bearer $TOKEN" {scheme}://{control}/v1/me
  {curl} -sS -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
       -d '{{"permissions":["files.read"],"expiresIn":"1h"}}' {scheme}://{control}/v1/auth/tokens
  {curl} -sS {scheme}://{control}/metrics | grep keygate_requests_total
"#,
        dir = dir.path().display(),
        scheme = if args.tls { "https" } else { "http" },
        curl = if args.tls {
            format!("curl --cacert {}", ca_file.display())
        } else {
            "curl".to_owned()
        },
        ca_line = if args.tls {
            format!(
                "\n  TLS            a throwaway CA ({}) signed the certificate for 127.0.0.1 and localhost",
                ca_file.display()
            )
        } else {
            String::new()
        },
    );

    crate::background::wait_for_signal().await;
    println!("stopping");
    running.shutdown().await;
    let _ = stop_backend.send(());
    let _ = backend.await;
    drop(dir);
    Ok(())
}

/// A throwaway CA (written to `ca_file`) and a certificate it signed for 127.0.0.1 and
/// localhost, valid for 30 days; returns the certificate and key paths.
fn throwaway_certificate(
    dir: &std::path::Path,
    ca_file: &std::path::Path,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "keygate demo CA (throwaway)");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + time::Duration::days(30);
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, "keygate demo");
    leaf.use_authority_key_identifier_extension = true;
    leaf.not_before = now - time::Duration::hours(1);
    leaf.not_after = now + time::Duration::days(30);
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;
    std::fs::write(ca_file, ca_cert.pem())?;
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    Ok((cert_path, key_path))
}
