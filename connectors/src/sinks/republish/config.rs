//! The republish action's configuration: `{"republish": {"topic": "alerts/${topic(3)}",
//! "qos": 1}}`, to the broker weir reads from, or `{"republish": {"connection":
//! "plant-broker", "topic": "..."}}` to another broker an operator defined.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::mqttbytes::QoS;
use serde::{Deserialize, Serialize};
use weir_engine::template::{Template, TemplateExprs};
use weir_engine::topic::validate_topic;

use super::Republish;
use crate::delivery::retry::humantime_serde_compat;
use crate::delivery::secrets::REDACTED;
use crate::delivery::{ConfigError, SinkConfig, Validated};
use crate::mqtt::ExternalConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepublishConfig {
    /// A named MQTT connection (`/v1/connections`): publish there instead of to the broker
    /// weir reads from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// The topic; may use `${...}` templates.
    pub topic: String,
    /// QoS of the published message: 0 or 1.
    #[serde(default)]
    pub qos: u8,
    /// The named connection, once resolved; never written in a rule.
    #[serde(skip)]
    pub(crate) broker: Option<MqttConnection>,
}

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

    /// The connection as an API answer shows it: the password redacted.
    pub(crate) fn redact(&mut self) {
        if self.password.is_some() {
            self.password = Some(REDACTED.to_owned());
        }
    }

    /// A password sent back redacted keeps the one `old` has.
    pub(crate) fn restore(&mut self, old: Option<&MqttConnection>) -> Result<(), String> {
        if self.password.as_deref() == Some(REDACTED) {
            match old.and_then(|o| o.password.clone()) {
                Some(p) => self.password = Some(p),
                None => return Err(format!("password is {REDACTED}, but no password is stored")),
            }
        }
        Ok(())
    }

    /// The action as if written with the connection.
    pub(crate) fn apply(&self, action: &RepublishConfig) -> RepublishConfig {
        RepublishConfig {
            connection: None,
            broker: Some(self.clone()),
            ..action.clone()
        }
    }

    /// Checks the connection without connecting.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.external("r", "a")
            .validate()
            .map_err(|e| RepublishConfig::invalid(e.to_string()))
    }
}

/// A republish action, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub(super) topic: Template,
    pub(super) qos: QoS,
    /// Another broker to publish to, from a named connection.
    pub(super) broker: Option<Arc<MqttConnection>>,
}

impl SinkConfig for RepublishConfig {
    const KIND: &'static str = "republish";
    type Sink = Republish;

    fn validate(&self, exprs: &mut TemplateExprs) -> Result<Validated<Settings>, ConfigError> {
        let topic = Template::parse(&self.topic, exprs)?;
        if self.qos > 1 {
            return Err(Self::invalid(format!(
                "qos must be 0 or 1, got {}",
                self.qos
            )));
        }
        if self.topic.trim().is_empty() {
            return Err(Self::invalid("topic is empty".to_owned()));
        }
        if topic.is_literal() {
            validate_topic(&self.topic).map_err(|e| Self::invalid(e.to_string()))?;
        }
        let qos = if self.qos == 1 {
            QoS::AtLeastOnce
        } else {
            QoS::AtMostOnce
        };
        Ok(Validated::new(
            Settings {
                topic: topic.clone(),
                qos,
                broker: self.broker.clone().map(Arc::new),
            },
            vec![("topic".to_owned(), topic)],
        ))
    }
}
