//! The command line: `weir serve` with its flags, section by section, and `weir rules`.
//! Each setting is a field of its section's flags, declared once with its default; its
//! environment variable and config-file key follow from its name (`layers.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use super::auth::AuthArgs;
use super::http::HttpArgs;
use super::ingress::IngressArgs;
use super::mqtt::MqttArgs;
use super::pipeline::PipelineArgs;
use super::policy::PolicyArgs;
use super::runtime::RuntimeArgs;
use super::shadows::ShadowArgs;
use super::storage::StorageArgs;

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "A stream-processing rules engine: MQTT in, SQL rules on DataFusion, actions out."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve(Box<ServeArgs>),
    /// Manage the rules of a running weir over its API: list, apply a directory, test,
    /// delete, export.
    Rules(crate::cli::RulesArgs),
}

/// The settings of `weir serve`, from the command line, the environment and the config
/// file, before they are checked and resolved ([`super::Settings::resolve`]).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML file with settings (keys as the flags, with '_' for '-').
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub mqtt: MqttArgs,
    #[command(flatten)]
    pub ingress: IngressArgs,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub shadows: ShadowArgs,
    /// Named connections, in the config file only: `[connections.<name>.<kind>]` tables
    /// (see docs/security.md). They replace stored connections of the same name at start.
    #[arg(skip)]
    pub connections: BTreeMap<String, FileConnection>,
}

/// A connection of the config file; its `Debug` shows no secret.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct FileConnection(pub weir_connectors::sinks::ConnectionConfig);

impl std::fmt::Debug for FileConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0.redacted())
    }
}
