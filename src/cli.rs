//! Command-line definitions. Every flag's doc comment is its `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// keygate: an authorization proxy for storage services.
#[derive(Debug, Parser)]
#[command(name = "keygate", version, propagate_version = true)]
pub struct Cli {
    /// Config file (TOML). Without one, the defaults apply; KEYGATE_<SECTION>_<KEY>
    /// environment variables override the file, flags override both.
    #[arg(long, short, global = true, env = "KEYGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Database URL (sqlite://FILE or postgres://...), overriding the config.
    #[arg(long, global = true)]
    pub database_url: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy: the data plane and the control plane.
    Serve(ServeArgs),
    /// Run storage-backend and keygate on a temporary SQLite database with demo data.
    Demo(DemoArgs),
    /// Load and validate the config, list every problem, and exit.
    CheckConfig,
    /// Bring the database schema up to date and exit.
    Migrate,
    /// Manage workspaces.
    #[command(subcommand)]
    Workspaces(WorkspacesCmd),
    /// Manage users.
    #[command(subcommand)]
    Users(UsersCmd),
    /// Manage workspace members and their roles.
    #[command(subcommand)]
    Members(MembersCmd),
    /// Manage storage providers.
    #[command(subcommand)]
    Providers(ProvidersCmd),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Data-plane address (host:port; port 0 picks a free one).
    #[arg(long)]
    pub listen: Option<String>,
    /// Control-plane address.
    #[arg(long)]
    pub control_listen: Option<String>,
    /// Upstream peer host:port (repeatable), overriding the config.
    #[arg(long = "upstream")]
    pub upstream: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Data-plane address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Control-plane address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub control_listen: String,
    /// storage-backend address.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub backend_listen: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    Viewer,
    Editor,
    Admin,
}

#[derive(Debug, Subcommand)]
pub enum WorkspacesCmd {
    /// Create a workspace.
    Add {
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List workspaces.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// Create a user. The password is read from standard input with --password-stdin,
    /// or asked for at a prompt.
    Add {
        email: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        #[arg(long)]
        json: bool,
    },
    /// List users.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum MembersCmd {
    /// Add a user to a workspace, or change their role there.
    Add {
        /// Workspace name.
        #[arg(long)]
        workspace: String,
        /// User email.
        #[arg(long)]
        user: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        #[arg(long)]
        json: bool,
    },
    /// List the members of a workspace.
    List {
        #[arg(long)]
        workspace: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProvidersCmd {
    /// Register a storage provider owned by a workspace.
    Add {
        name: String,
        #[arg(long)]
        workspace: String,
        #[arg(long)]
        json: bool,
    },
    /// List providers.
    List {
        #[arg(long)]
        json: bool,
    },
}
