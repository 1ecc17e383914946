//! The republish action's configuration: `{"republish": {"topic": "alerts/${topic(3)}",
//! "qos": 1}}`, to the broker weir reads from, or `{"republish": {"connection":
//! "plant-broker", "topic": "..."}}` to another broker an operator defined.

use std::sync::Arc;

use rumqttc::mqttbytes::QoS;
use serde::{Deserialize, Serialize};
use weir_engine::template::{Template, TemplateExprs};
use weir_engine::topic::validate_topic;

use super::connection::MqttConnection;
use super::sink::{Republish, Settings};
use crate::delivery::secrets::{REDACTED, SecretError};
use crate::delivery::{ConfigError, Connection, SinkConfig, Validated};

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

impl Connection for MqttConnection {
    const KIND: &'static str = "mqtt";
    type Action = RepublishConfig;

    /// Checks the connection without connecting.
    fn validate(&self) -> Result<(), ConfigError> {
        self.external("r", "a")
            .validate()
            .map_err(|e| RepublishConfig::invalid(e.to_string()))
    }

    /// The action as if written with the connection.
    fn apply(&self, _name: &str, action: &RepublishConfig) -> Result<RepublishConfig, ConfigError> {
        Ok(RepublishConfig {
            connection: None,
            broker: Some(self.clone()),
            ..action.clone()
        })
    }

    /// The connection as an API answer shows it: the password redacted.
    fn redacted(&self) -> Self {
        let mut shown = self.clone();
        if shown.password.is_some() {
            shown.password = Some(REDACTED.to_owned());
        }
        shown
    }

    /// A password sent back redacted keeps the one `old` has.
    fn restore_secrets(&mut self, old: Option<&Self>) -> Result<(), SecretError> {
        if self.password.as_deref() == Some(REDACTED) {
            match old.and_then(|o| o.password.clone()) {
                Some(p) => self.password = Some(p),
                None => return Err(SecretError::NoStoredPassword),
            }
        }
        Ok(())
    }
}

impl SinkConfig for RepublishConfig {
    const KIND: &'static str = "republish";
    type Sink = Republish;

    fn connection(&self) -> Option<&str> {
        self.connection.as_deref()
    }

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
