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
    /// the broker's round trip and the hand-off to the publisher are paid once per batch,
    /// not once per output. Publishes leave in the batch's order.
    pub(crate) async fn deliver_batch(
        &mut self,
        batch: &[Delivery],
    ) -> Vec<Result<(), DeliveryError>> {
        let mut results: Vec<Result<(), DeliveryError>> = Vec::with_capacity(batch.len());
        let mut publishes = Vec::with_capacity(batch.len());
        // The batch's place of each publish.
        let mut sent: Vec<usize> = Vec::with_capacity(batch.len());
        for (i, d) in batch.iter().enumerate() {
            let topic = render(&self.topic, d);
            match validate_topic(&topic) {
                Ok(()) => {
                    results.push(Ok(()));
                    sent.push(i);
                    publishes.push((topic, d.payload.clone()));
                }
                Err(e) => results.push(Err(DeliveryError::fatal(
                    "invalid_topic",
                    format!("republish to '{topic}': {e}"),
                ))),
            }
        }
        let confirmed = self.publisher.publish_batch(publishes, self.qos).await;
        for (i, r) in sent.into_iter().zip(confirmed) {
            if let Err(e) = r {
                // Rendered again only for the message: failures are rare, outputs many.
                let topic = render(&self.topic, &batch[i]);
                results[i] = Err(DeliveryError::retryable(
                    "mqtt",
                    format!("republish to '{topic}': {e}"),
                ));
            }
        }
        results
    }
}
