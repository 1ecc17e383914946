//! The republish action: publish each output to an MQTT topic, on the embedded broker or
//! on the external broker weir reads from. The topic may use `${...}` templates, e.g.
//! `alerts/${topic(3)}`.

use rumqttc::mqttbytes::QoS;
use serde::{Deserialize, Serialize};
use weir_engine::template::{Template, TemplateExprs};
use weir_engine::topic::validate_topic;

use super::{ActionContext, ConfigError, Delivery, DeliveryError, render};
use crate::mqtt::Publisher;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepublishConfig {
    pub topic: String,
    /// QoS of the published message: 0 or 1.
    #[serde(default)]
    pub qos: u8,
}

impl RepublishConfig {
    pub(crate) fn validate(&self, exprs: &mut TemplateExprs) -> Result<Template, ConfigError> {
        let t = Template::parse(&self.topic, exprs)?;
        if self.qos > 1 {
            return Err(ConfigError::invalid(
                "republish",
                format!("qos must be 0 or 1, got {}", self.qos),
            ));
        }
        if self.topic.trim().is_empty() {
            return Err(ConfigError::invalid("republish", "topic is empty"));
        }
        if t.is_literal() {
            validate_topic(&self.topic)
                .map_err(|e| ConfigError::invalid("republish", e.to_string()))?;
        }
        Ok(t)
    }
}

pub struct Republish {
    topic: Template,
    qos: QoS,
    publisher: Publisher,
}

impl Republish {
    pub(crate) fn new(
        c: &RepublishConfig,
        exprs: &mut TemplateExprs,
        ctx: &ActionContext,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            topic: c.validate(exprs)?,
            qos: if c.qos == 1 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            },
            publisher: ctx.publisher.clone(),
        })
    }

    /// Publishes a whole batch at once and waits for every acknowledgement together, so
    /// the broker's round trip is paid once per batch, not once per output. Publishes
    /// leave in the batch's order.
    pub(crate) async fn deliver_batch(
        &mut self,
        batch: &[Delivery],
    ) -> Vec<Result<(), DeliveryError>> {
        let this = &*self;
        futures_util::future::join_all(batch.iter().map(|d| this.publish(d))).await
    }

    async fn publish(&self, d: &Delivery) -> Result<(), DeliveryError> {
        let topic = render(&self.topic, d);
        validate_topic(&topic).map_err(|e| {
            DeliveryError::fatal("invalid_topic", format!("republish to '{topic}': {e}"))
        })?;
        self.publisher
            .publish(&topic, d.payload.clone(), self.qos)
            .await
            .map_err(|e| DeliveryError::retryable("mqtt", format!("republish to '{topic}': {e}")))
    }
}
