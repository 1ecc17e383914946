//! The command line of `weir rules`: where weir is, the token, and each command.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct RulesArgs {
    /// The weir to talk to: its HTTP API.
    #[arg(
        long,
        env = "WEIR_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// API token: `viewer` for list, export and test (`editor` for test too), `editor`
    /// for apply and delete. Not needed with `--auth off`.
    #[arg(long, env = "WEIR_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A file holding the API token (instead of --token).
    #[arg(long, env = "WEIR_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// A PEM CA certificate to trust for an https:// URL (besides the system's roots).
    #[arg(long, env = "WEIR_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    pub command: RulesCommand,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// List the rules: name, enabled, topic filter and where each came from.
    List {
        /// Print weir's answer as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Make weir's rules those of a directory: prints the plan (create, update, delete,
    /// unchanged), then carries it out. A rule whose SQL, actions or tests fail is refused
    /// by weir and reported; the others are applied. Exits 1 if any change failed.
    Apply {
        dir: PathBuf,
        /// Also delete the rules weir has and the directory does not.
        #[arg(long)]
        prune: bool,
        /// Print the plan and check each new or changed rule (SQL, actions, tests) on weir
        /// without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run the tests of rule files (or of every rule file in a directory) on weir,
    /// storing nothing. Exits 1 if any fails, printing the differences.
    Test {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Delete rules.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Write every rule as DIR/NAME.json (an API body; secrets as "<redacted>", which
    /// `apply` sends back to keep the stored values), or as one JSON object to stdout.
    Export { dir: Option<PathBuf> },
}
