//! The running republish sink: each output published to its rendered topic, a batch at a
//! time, on weir's broker or on a connection of its own to a named one.

use std::sync::Arc;

use rumqttc::mqttbytes::QoS;
use weir_engine::template::Template;
use weir_engine::topic::validate_topic;

use super::connection::MqttConnection;
use crate::delivery::{ConfigError, Delivery, Outcome, Reason, Sink, SinkContext};
use crate::mqtt::Publisher;

/// A republish action, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub(super) topic: Template,
    pub(super) qos: QoS,
    /// Another broker to publish to, from a named connection.
    pub(super) broker: Option<Arc<MqttConnection>>,
}

pub struct Republish {
    topic: Template,
    qos: QoS,
    publisher: Publisher,
    /// Stops the publisher's own connection, when it has one (a named connection).
    own: Option<tokio_util::sync::CancellationToken>,
}

impl Drop for Republish {
    fn drop(&mut self) {
        if let Some(stop) = &self.own {
            stop.cancel();
        }
    }
}

impl Sink for Republish {
    type Settings = Settings;

    /// With a named connection, the action publishes on a connection of its own to that
    /// broker (client id `<prefix>-<rule>-<action>-pub`); else on weir's broker.
    async fn build(settings: &Settings, ctx: &SinkContext) -> Result<Self, ConfigError> {
        let (publisher, own) = match &settings.broker {
            None => (ctx.publisher.clone(), None),
            Some(b) => {
                let config = b.external(&ctx.rule, &ctx.label);
                let url = config.url.clone();
                let broker = crate::mqtt::ExternalBroker::new(config)
                    .map_err(|e| ConfigError::invalid("republish", format!("broker {url}: {e}")))?;
                let stop = tokio_util::sync::CancellationToken::new();
                (
                    Publisher::External(broker.publisher(stop.clone())),
                    Some(stop),
                )
            }
        };
        Ok(Self {
            topic: settings.topic.clone(),
            qos: settings.qos,
            publisher,
            own,
        })
    }

    /// Publishes a whole batch at once and waits for every acknowledgement together, so
    /// the broker's round trip and the hand-off to the publisher are paid once per batch,
    /// not once per output. Publishes leave in the batch's order.
    async fn deliver_batch(&mut self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(batch.len());
        let mut publishes = Vec::with_capacity(batch.len());
        // The batch's place of each publish.
        let mut sent: Vec<usize> = Vec::with_capacity(batch.len());
        for (i, d) in batch.iter().enumerate() {
            let topic = d.render(&self.topic);
            match validate_topic(&topic) {
                Ok(()) => {
                    outcomes.push(Outcome::Delivered);
                    sent.push(i);
                    publishes.push((topic, d.payload.clone()));
                }
                Err(e) => outcomes.push(Outcome::dead_letter(
                    Reason::InvalidTopic,
                    format!("republish to '{topic}': {e}"),
                )),
            }
        }
        let confirmed = self.publisher.publish_batch(publishes, self.qos).await;
        for (i, r) in sent.into_iter().zip(confirmed) {
            if let Err(e) = r {
                // Rendered again only for the message: failures are rare, outputs many.
                let topic = batch[i].render(&self.topic);
                outcomes[i] = Outcome::retry(Reason::Mqtt, format!("republish to '{topic}': {e}"));
            }
        }
        outcomes
    }
}
