//! Who may use the HTTP API: whether requests need a token, where the admin token comes
//! from, whether `/metrics` needs one too.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// API authentication: `on` (every /v1 request needs `Authorization: Bearer <token>`)
    /// or `off`.
    #[arg(long, default_value = "on", value_name = "on|off")]
    pub auth: String,
    /// File holding the admin token, e.g. a container secret [default:
    /// <data-dir>/admin.token, made at the first start]. WEIR_ADMIN_TOKEN gives the token
    /// itself instead.
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// Whether GET /metrics needs a token too (any role).
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub metrics_auth: bool,
}

/// Who may use the HTTP API.
#[derive(Clone)]
pub struct AuthSettings {
    /// Whether `/v1/*` requests need a token.
    pub enabled: bool,
    /// Where the admin token comes from.
    pub admin_token: AdminToken,
    /// Whether `/metrics` needs a token too.
    pub metrics: bool,
}

/// Where the admin token comes from.
#[derive(Clone)]
pub enum AdminToken {
    /// `<data-dir>/admin.token`, made at the first start.
    DataDir,
    /// `--admin-token-file`.
    File(PathBuf),
    /// `WEIR_ADMIN_TOKEN`.
    Value(String),
}

/// The token itself is never shown.
impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DataDir => f.write_str("DataDir"),
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
            Self::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("enabled", &self.enabled)
            .field("admin_token", &self.admin_token)
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl AuthArgs {
    pub fn resolve(&self) -> anyhow::Result<AuthSettings> {
        Ok(AuthSettings {
            enabled: match self.auth.as_str() {
                "on" => true,
                "off" => false,
                other => bail!("--auth must be on or off, got '{other}'"),
            },
            admin_token: match (&self.admin_token_file, std::env::var("WEIR_ADMIN_TOKEN")) {
                (Some(path), _) => AdminToken::File(path.clone()),
                (None, Ok(token)) => AdminToken::Value(token),
                (None, Err(_)) => AdminToken::DataDir,
            },
            metrics: self.metrics_auth,
        })
    }
}
