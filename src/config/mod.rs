//! Settings: every one is a command-line flag of `weir serve` (`--http-listen`), a
//! `WEIR_<SETTING>` environment variable (`WEIR_HTTP_LISTEN`) and a key in the `--config`
//! TOML file (`http_listen`). Precedence: defaults < file < environment < flags.
//!
//! Each setting is declared once, as a field of its section's flags with its default and
//! help; its environment variable and file key follow from its name ([`layers`]). Each
//! section checks its own values and resolves them into the settings the service runs on:
//!
//! * `storage.rs`: the data directory, outputs, rule files, and where the store is;
//! * `http.rs`: the HTTP API's listener, HTTPS, browsers;
//! * `auth.rs`: API tokens;
//! * `mqtt.rs`: the embedded broker's listeners, limits and access;
//! * `ingress.rs`: an external broker, the fleet's session takeover, Kafka sources;
//! * `pipeline.rs`: batches, budgets, action queues;
//! * `policy.rs`: what rules' inline destinations may reach;
//! * `runtime.rs`: threads and logs;
//! * `shadows.rs`: device shadows' limits.
//!
//! [`args`] holds the command line that gathers the sections, `values.rs` the checks they
//! share.

pub mod args;
mod auth;
mod http;
mod ingress;
pub mod layers;
mod mqtt;
mod pipeline;
mod policy;
mod runtime;
mod shadows;
mod storage;
#[cfg(test)]
mod tests;
mod values;

use std::collections::BTreeMap;

pub use args::{Cli, Command, FileConnection, ServeArgs};
pub use auth::{AdminToken, AuthSettings};
pub use http::{Browsers, HttpSettings};
pub use ingress::IngressSettings;
pub use layers::{ParseError, parse_from};
pub use mqtt::{MqttSettings, MqttTlsSettings};
pub use pipeline::PipelineSettings;
pub use policy::PolicySettings;
pub use runtime::RuntimeSettings;
pub use shadows::ShadowSettings;
pub use storage::StorageSettings;

/// The settings weir runs on, checked and resolved, section by section.
#[derive(Debug, Clone)]
pub struct Settings {
    pub storage: StorageSettings,
    pub http: HttpSettings,
    pub auth: AuthSettings,
    pub mqtt: MqttSettings,
    pub ingress: IngressSettings,
    pub pipeline: PipelineSettings,
    pub policy: PolicySettings,
    pub runtime: RuntimeSettings,
    pub shadows: ShadowSettings,
    /// The config file's connections.
    pub connections: BTreeMap<String, FileConnection>,
}

impl Settings {
    /// Checks every section's values and resolves them.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        let storage = args.storage.resolve()?;
        Ok(Self {
            policy: args.policy.resolve(&storage.output_dir)?,
            http: args.http.resolve()?,
            auth: args.auth.resolve()?,
            mqtt: args.mqtt.resolve()?,
            ingress: args.ingress.resolve()?,
            pipeline: args.pipeline.resolve()?,
            runtime: args.runtime.resolve()?,
            shadows: args.shadows.resolve()?,
            connections: args.connections.clone(),
            storage,
        })
    }
}
