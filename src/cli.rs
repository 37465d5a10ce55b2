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
    /// Replace the running keygate without dropping a connection: start a new one (this
    /// binary, this config) that takes over its listening sockets, and return once it serves
    /// (needs `[server] upgrade_socket` and `pid_file`).
    Upgrade,
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
    /// Manage API keys (with operator rights, directly on the database).
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Work with the policy files: validate, test, explain a decision, format.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Manage the keys keygate signs its JWTs with.
    #[command(subcommand)]
    SigningKeys(SigningKeysCmd),
}

#[derive(Debug, Subcommand)]
pub enum SigningKeysCmd {
    /// The keys that still verify tokens, newest first (public halves only).
    List {
        #[arg(long)]
        json: bool,
    },
    /// A new key signs from now on; the old ones keep verifying the tokens they signed until
    /// those can no longer be alive. Running instances pick it up within seconds.
    Rotate,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Validate the policies against the schema (strict mode); problems point at file and line.
    Validate {
        /// The policy folder (default: the config's [policies] dir).
        dir: Option<PathBuf>,
    },
    /// Run the scenario files in DIR/tests; exits non-zero on any mismatch.
    Test { dir: Option<PathBuf> },
    /// Validate a policy folder (schema, the route table's actions, its scenarios) and publish
    /// it to the database as a new version: every instance with [policies] source = "database"
    /// runs it within a second.
    Publish {
        /// The policy folder (default: the config's [policies] dir).
        dir: Option<PathBuf>,
        /// Why, for the history.
        #[arg(long)]
        note: Option<String>,
        /// Who publishes, for the history (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// The published versions, newest first.
    History {
        #[arg(long)]
        json: bool,
    },
    /// Publish an earlier version's files again, as a new version.
    Rollback {
        /// The version whose files to publish again.
        #[arg(value_name = "VERSION")]
        to: i64,
        #[arg(long)]
        note: Option<String>,
        #[arg(long)]
        by: Option<String>,
    },
    /// The decision a real request would get, the policies that decided it, and why.
    Explain {
        /// As this API key (its id).
        #[arg(long, required_unless_present = "user", conflicts_with = "user")]
        key: Option<String>,
        /// As this user signed in (their role in the provider's workspace sets the scopes).
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        method: String,
        /// The request path, as a client would send it.
        #[arg(long)]
        path: String,
        /// The Destination header, for MOVE and COPY.
        #[arg(long)]
        destination: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Prove whether NEW allows anything OLD does not (widening) or the reverse (narrowing),
    /// per action, over every request and entity store the schema allows (Cedar's symbolic
    /// compiler and the cvc5 solver). Each widening comes with a counterexample.
    /// Exits 0 when nothing widens (or only the --allow-widening actions), 1 on a widening,
    /// 2 on an error.
    Diff {
        /// The policy folder before the change.
        old: PathBuf,
        /// The policy folder after the change.
        new: PathBuf,
        /// An action this change is meant to widen (repeatable): reported, not failed.
        #[arg(long = "allow-widening", value_name = "ACTION")]
        allow_widening: Vec<String>,
        /// Accept a change to the schema's entity types (reviewed by hand): the proof then
        /// covers the entity stores valid under NEW's schema.
        #[arg(long)]
        allow_schema_change: bool,
        #[arg(long)]
        json: bool,
    },
    /// Find policies that never apply, policies whose evaluation can error, and permits that a
    /// forbid always overrides, each with its @id and file:line. Exits 0 when there is none,
    /// 1 when there are findings, 2 on an error.
    Lint {
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Format the .cedar files in place; with --check, list the unformatted ones and fail.
    Fmt {
        dir: Option<PathBuf>,
        #[arg(long)]
        check: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create a key; the full key is printed once.
    Create {
        /// The owner's email.
        #[arg(long)]
        owner: String,
        /// The workspace (may be left out when the owner belongs to exactly one).
        #[arg(long)]
        workspace: Option<String>,
        #[arg(long)]
        name: String,
        /// A scope (repeatable): one the policy schema marks @scope (shipped: read, write,
        /// admin, files:read, files:write, files:delete, folders:read, folders:write,
        /// search:read, trash:read, trash:write, workspace:admin, and the permissions
        /// files.read, storage.write, ...).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Restrict to a provider and base path, as PROVIDER or PROVIDER:/BASE/PATH
        /// (repeatable). Without it the key works on every provider, now and future.
        #[arg(long = "provider")]
        providers: Vec<String>,
        /// 30d, 90d, 1y, never, a date (2027-01-31) or an RFC 3339 time.
        #[arg(long, default_value = "never")]
        expires: String,
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets).
    List {
        /// Only the keys of this owner (email).
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        workspace: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one key.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a key's name, scopes, providers or expiry.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// Replace the scopes (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Replace the provider restrictions (repeatable), as with create.
        #[arg(long = "provider", conflicts_with = "all_providers")]
        providers: Vec<String>,
        /// Lift the provider restrictions.
        #[arg(long)]
        all_providers: bool,
        #[arg(long)]
        expires: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key, at once and for good.
    Revoke {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Issue a new secret with the same settings and revoke the old one.
    Rotate {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Requests, denials and bytes per day, and when the key was last used.
    Usage {
        id: String,
        #[arg(long)]
        json: bool,
    },
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
    /// Take over the listening sockets of the running keygate named in `[server] pid_file`
    /// (zero-downtime upgrade; needs `upgrade_socket` too). `keygate upgrade` runs this.
    #[arg(long)]
    pub upgrade: bool,
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
    /// Serve both planes over HTTPS, with a throwaway CA and certificate (the printed curl
    /// lines pass `--cacert`).
    #[arg(long)]
    pub tls: bool,
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
