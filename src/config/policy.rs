//! The operator's policy on what rules' inline destinations may reach: directories for
//! `file://`, link-local addresses, weir's own listeners, librdkafka properties and
//! object-store options beyond the built-in lists, ambient cloud credentials.

use std::path::{Path, PathBuf};

use clap::Args;

use super::values::absolute_dir;

#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Directories, besides the output directory, below which rules' `file://`
    /// destinations may write (comma-separated) [default: none].
    #[arg(long, value_delimiter = ',')]
    pub allow_file_dirs: Vec<PathBuf>,
    /// Let rules' destinations be link-local addresses, where cloud metadata services
    /// answer.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub allow_link_local: bool,
    /// Let rules' webhooks reach weir's own listeners.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub allow_weir_listeners: bool,
    /// librdkafka properties rules may set beyond the built-in list (comma-separated),
    /// e.g. ssl.ca.location [default: none].
    #[arg(long, value_delimiter = ',')]
    pub allow_kafka_properties: Vec<String>,
    /// Object-store options rules may set beyond the built-in list (comma-separated),
    /// e.g. aws_web_identity_token_file [default: none].
    #[arg(long, value_delimiter = ',')]
    pub allow_store_options: Vec<String>,
    /// Let rules' cloud destinations without credentials of their own use weir's
    /// (AWS_*/GOOGLE_*/AZURE_* variables, instance metadata).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub allow_ambient_credentials: bool,
}

/// The operator's policy on what rules' inline destinations may reach (see
/// [`weir_connectors::delivery::Policy`], which adds the listeners once they are bound).
#[derive(Debug, Clone, Default)]
pub struct PolicySettings {
    pub file_dirs: Vec<PathBuf>,
    pub allow_link_local: bool,
    pub allow_weir_listeners: bool,
    pub kafka_properties: Vec<String>,
    pub store_options: Vec<String>,
    pub allow_ambient_credentials: bool,
}

impl PolicyArgs {
    /// The policy, `file://` allowed below `output_dir` too.
    pub fn resolve(&self, output_dir: &Path) -> anyhow::Result<PolicySettings> {
        let file_dirs = std::iter::once(output_dir)
            .chain(self.allow_file_dirs.iter().map(PathBuf::as_path))
            .map(absolute_dir)
            .collect::<anyhow::Result<_>>()?;
        Ok(PolicySettings {
            file_dirs,
            allow_link_local: self.allow_link_local,
            allow_weir_listeners: self.allow_weir_listeners,
            kafka_properties: self.allow_kafka_properties.clone(),
            store_options: self.allow_store_options.clone(),
            allow_ambient_credentials: self.allow_ambient_credentials,
        })
    }
}
