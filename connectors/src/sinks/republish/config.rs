//! The republish action's configuration: `{"republish": {"topic": "alerts/${topic(3)}",
//! "qos": 1}}`.

use rumqttc::mqttbytes::QoS;
use serde::{Deserialize, Serialize};
use weir_engine::template::{Template, TemplateExprs};
use weir_engine::topic::validate_topic;

use super::Republish;
use crate::sink::{ConfigError, SinkConfig, Validated};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepublishConfig {
    /// The topic; may use `${...}` templates.
    pub topic: String,
    /// QoS of the published message: 0 or 1.
    #[serde(default)]
    pub qos: u8,
}

/// A republish action, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub(super) topic: Template,
    pub(super) qos: QoS,
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
            },
            vec![("topic".to_owned(), topic)],
        ))
    }
}
