//! MQTT ingress: the embedded broker ([`broker`]) or a client of an external broker
//! ([`client`]), and the [`Publisher`] that the republish action uses on either.

pub mod broker;
pub mod client;
mod link;
pub mod publisher;
mod wire;

use rumqttc::mqttbytes::QoS;

pub use broker::Broker;
pub use client::{ExternalBroker, ExternalConfig};

/// Where republished messages go: the broker weir reads from. On an external broker a
/// publish returns once the broker acknowledged it.
#[derive(Clone)]
pub enum Publisher {
    Embedded(Broker),
    External(publisher::ConfirmedPublisher),
}

impl Publisher {
    /// Publishes a batch in order; a result per publish, once each is confirmed.
    pub async fn publish_batch(
        &self,
        publishes: Vec<publisher::Outgoing>,
        qos: QoS,
    ) -> Vec<Result<(), String>> {
        match self {
            Self::Embedded(b) => publishes
                .into_iter()
                .map(|(topic, payload)| {
                    b.publish(&topic, payload, qos);
                    Ok(())
                })
                .collect(),
            Self::External(p) => p.publish_batch(publishes, qos).await,
        }
    }
}
