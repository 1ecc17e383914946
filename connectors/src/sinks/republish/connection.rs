//! An MQTT connection an operator defines for republish actions: another broker, its
//! credentials and TLS files (`{"mqtt": {"url": "mqtts://broker:8883", ...}}`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::delivery::retry::humantime_serde_compat;
use crate::mqtt::ExternalConfig;

/// An MQTT connection an operator defines: another broker that republish actions naming
/// it publish to, with its credentials and TLS files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConnection {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The client id's prefix: each action publishes as `<client_id>-<rule>-<action>-pub`.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    #[serde(default = "default_keep_alive", with = "humantime_serde_compat")]
    pub keep_alive: Duration,
}

fn default_client_id() -> String {
    "weir".to_owned()
}

fn default_keep_alive() -> Duration {
    Duration::from_secs(30)
}

impl MqttConnection {
    /// How an action of `rule` labelled `label` connects.
    pub(crate) fn external(&self, rule: &str, label: &str) -> ExternalConfig {
        ExternalConfig {
            url: self.url.clone(),
            username: self.username.clone(),
            password: self.password.clone(),
            client_id: format!("{}-{rule}-{label}", self.client_id),
            clean_session: true,
            qos: 1,
            share_group: None,
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            keep_alive: self.keep_alive,
        }
    }
}
