//! MQTT ingress: the embedded broker ([`broker`]) or a client of an external broker
//! ([`client`]), and the [`Publisher`] that the republish action uses on either.

pub mod broker;
pub mod client;
mod link;
pub mod publisher;
mod wire;

use bytes::Bytes;
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
    pub async fn publish(&self, topic: &str, payload: Bytes, qos: QoS) -> Result<(), String> {
        match self {
            Self::Embedded(b) => {
                b.publish(topic, payload, qos);
                Ok(())
            }
            Self::External(p) => p.publish(topic, payload, qos).await,
        }
    }
}
