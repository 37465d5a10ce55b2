//! The `keygate` binary: parse the command line, load and validate the config, run.

use std::process::ExitCode;

use clap::Parser;
use keygate::cli::{Cli, Command};
use keygate::config::{Config, Overrides};
use keygate::store::Store;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `policy diff` and `policy lint` tell a finding (1) from a check that could not run (2).
    let reviews = matches!(
        cli.command,
        Command::Policy(
            keygate::cli::PolicyCmd::Diff { .. } | keygate::cli::PolicyCmd::Lint { .. }
        )
    );
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(keygate::commands::policy::exit_status(reviews, &e))
        }
    }
}

fn load_config(path: Option<&std::path::Path>, overrides: Overrides) -> anyhow::Result<Config> {
    Ok(Config::load(path, std::env::vars(), &overrides)?)
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?)
}

/// `keygate serve`: runs until SIGTERM/SIGINT; SIGQUIT hands its sockets to a new keygate,
/// which sends SIGTERM once it serves.
async fn serve(config: &Config, listen: keygate::server::Listen) -> anyhow::Result<()> {
    use keygate::background::{Signals, Stop};
    use keygate::server::upgrade;
    // Listened for from the start: a signal never finds keygate deaf.
    let mut signals = Signals::new()?;
    // A stop asked for while starting (an upgrade given up on) ends the start: a keygate
    // that was told to stop never takes over.
    let running = tokio::select! {
        running = keygate::server::start(config, listen) => running?,
        stop = signals.next() => {
            anyhow::bail!("stopped while starting ({stop:?}); nothing was taken over");
        }
    };
    // One last look before taking over: a stop that arrived with the start's last step.
    let pending = tokio::select! {
        biased;
        stop = signals.next() => Some(stop),
        () = std::future::ready(()) => None,
    };
    if pending.is_some() {
        running.shutdown().await;
        anyhow::bail!("stopped while starting; nothing was taken over");
    }
    // Before the listening lines: whoever waits for them may read the pid file at once.
    if let Some(pid_file) = &config.server.pid_file {
        if let Err(e) = upgrade::write_pid_file(pid_file) {
            running.shutdown().await;
            return Err(e);
        }
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let mut lines = vec![
        format!(
            "keygate data plane listening on {scheme}://{}",
            running.data_addr
        ),
        format!(
            "keygate control plane listening on {scheme}://{}",
            running.control_addr
        ),
    ];
    if let Some(addr) = running.metrics_addr {
        lines.push(format!("keygate metrics listening on http://{addr}"));
    }
    if let Some(addr) = running.plain_addr {
        lines.push(format!("keygate plain HTTP listening on http://{addr}"));
    }
    {
        // Nobody may be reading (a detached upgrade): never fail on it.
        use std::io::Write;
        let mut out = std::io::stdout();
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }
    upgrade::notify_ready();
    tracing::info!(data = %running.data_addr, control = %running.control_addr, pid = std::process::id(), "keygate started");
    if let Some(previous) = running.replaces {
        upgrade::retire(previous);
    }
    loop {
        match signals.next().await {
            Stop::Shutdown => {
                tracing::info!("shutting down");
                break;
            }
            Stop::Upgrade => match running.hand_over().await {
                Ok(()) => tracing::info!(
                    "listening sockets handed to the new keygate; serving until it takes over"
                ),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "upgrade failed; still serving")
                }
            },
        }
    }
    running.shutdown().await;
    if let Some(pid_file) = &config.server.pid_file {
        // After an upgrade the file names the new process: leave it.
        let ours = std::fs::read_to_string(pid_file)
            .is_ok_and(|t| t.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(pid_file);
        }
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let db_override = Overrides {
        database_url: cli.database_url.clone(),
        ..Overrides::default()
    };
    let config_path = cli.config.clone();
    match cli.command {
        Command::CheckConfig => {
            let config = load_config(cli.config.as_deref(), db_override)?;
            let problems = config.serve_problems();
            if !problems.is_empty() {
                return Err(keygate::config::ConfigError(problems).into());
            }
            // The policies the config points at, and the actions its routes need from them.
            let policies = keygate::server::load_policies(
                &config,
                std::sync::Arc::new(keygate::telemetry::Metrics::new()),
            )?;
            println!(
                "config ok ({}): data plane {}, control plane {}, {} route(s), {} upstream peer(s), \
                 policies {}",
                config
                    .source
                    .as_ref()
                    .map_or("defaults".into(), |p| p.display().to_string()),
                config.server.listen,
                config.server.control_listen,
                config.routes.routes().len(),
                config.upstream.peers.len(),
                policies.status().hash,
            );
            Ok(())
        }
        Command::Serve(ref args) => {
            let overrides = Overrides {
                listen: args.listen.clone(),
                control_listen: args.control_listen.clone(),
                database_url: cli.database_url.clone(),
                peers: args.upstream.clone(),
            };
            let config = load_config(cli.config.as_deref(), overrides)?;
            keygate::telemetry::init_logging(&config.log.level, config.log.json);
            let listen = if args.upgrade {
                keygate::server::Listen::Inherit
            } else {
                keygate::server::Listen::Bind
            };
            runtime(config.server.threads)?.block_on(serve(&config, listen))
        }
        Command::Policy(cmd) => {
            let config = load_config(cli.config.as_deref(), db_override)?;
            runtime(1)?.block_on(async {
                let store = match cmd {
                    keygate::cli::PolicyCmd::Explain { .. }
                    | keygate::cli::PolicyCmd::Publish { .. }
                    | keygate::cli::PolicyCmd::History { .. }
                    | keygate::cli::PolicyCmd::Rollback { .. } => {
                        Some(Store::open(&config.database.url, 2).await?)
                    }
                    _ => None,
                };
                let result = keygate::commands::policy::run(&config, cmd, store.as_ref()).await;
                if let Some(s) = store {
                    s.close().await;
                }
                result
            })
        }
        Command::Upgrade => {
            let config = load_config(cli.config.as_deref(), db_override)?;
            let Some(pid_file) = &config.server.pid_file else {
                anyhow::bail!("an upgrade needs [server] pid_file and upgrade_socket");
            };
            let mut global = Vec::new();
            if let Some(path) = &cli.config {
                global.push("--config".into());
                global.push(path.clone().into_os_string());
            }
            if let Some(url) = &cli.database_url {
                global.push("--database-url".into());
                global.push(url.into());
            }
            let pid = keygate::server::upgrade::run_upgrade(
                &global,
                pid_file,
                std::time::Duration::from_secs(60),
            )?;
            println!("keygate upgraded: pid {pid} serves; the previous keygate drains and exits");
            Ok(())
        }
        Command::Demo(args) => {
            keygate::telemetry::init_logging("warn", false);
            runtime(2)?.block_on(keygate::commands::demo::run(args))
        }
        command => {
            let config = load_config(config_path.as_deref(), db_override)?;
            runtime(1)?.block_on(async {
                let store = Store::connect(&config.database.url, 2).await?;
                store.migrate().await?;
                let result = match command {
                    Command::Migrate => {
                        for (version, description) in store.applied_migrations().await? {
                            println!("applied {version} {description}");
                        }
                        Ok(())
                    }
                    Command::Workspaces(c) => keygate::commands::admin::workspaces(&store, c).await,
                    Command::Users(c) => keygate::commands::admin::users(&store, c).await,
                    Command::Members(c) => keygate::commands::admin::members(&store, c).await,
                    Command::Providers(c) => keygate::commands::admin::providers(&store, c).await,
                    Command::Keys(c) => {
                        let manager = keygate::server::key_manager(&config, store.clone())?;
                        keygate::commands::admin::keys(&manager, c).await
                    }
                    Command::SigningKeys(c) => {
                        let pepper = keygate::server::load_pepper(&config)?;
                        keygate::commands::admin::signing_keys(&store, &pepper, &config, c).await
                    }
                    Command::Serve(_)
                    | Command::Upgrade
                    | Command::Demo(_)
                    | Command::CheckConfig
                    | Command::Policy(_) => {
                        unreachable!("handled above")
                    }
                };
                store.close().await;
                result
            })
        }
    }
}
