//! Where weir keeps things: its data directory (the store, the broker's sessions, the
//! actions' buffers), file outputs, the rule files it loads, and where the store is.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use crate::fleet::pg::redact_url;

#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// Directory for the store and default outputs.
    #[arg(long, default_value = "weir-data")]
    pub data_dir: PathBuf,
    /// Directory for file outputs of actions that name no URL [default: <data-dir>/out].
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Directory of `*.sql` rule files loaded at start.
    #[arg(long, default_value = "queries")]
    pub queries_dir: PathBuf,
    /// Where the rules, connections and tokens are kept: `local` (files under the data
    /// directory) or a PostgreSQL URL (`postgres://user:password@host/db`) that replicas
    /// of a fleet share; a change made through any replica runs on all.
    #[arg(long, default_value = "local", hide_env_values = true)]
    pub rule_store: String,
}

#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub data_dir: PathBuf,
    pub output_dir: PathBuf,
    pub queries_dir: PathBuf,
    /// The fleet's shared store (a PostgreSQL URL); `None`: files under the data dir.
    pub rule_store: Option<String>,
}

impl StorageArgs {
    pub fn resolve(&self) -> anyhow::Result<StorageSettings> {
        Ok(StorageSettings {
            data_dir: self.data_dir.clone(),
            output_dir: self
                .output_dir
                .clone()
                .unwrap_or_else(|| self.data_dir.join("out")),
            queries_dir: self.queries_dir.clone(),
            rule_store: match self.rule_store.as_str() {
                "local" => None,
                url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                    Some(url.to_owned())
                }
                other => bail!(
                    "--rule-store must be local or a postgres:// URL, got '{}'",
                    redact_url(other)
                ),
            },
        })
    }
}
