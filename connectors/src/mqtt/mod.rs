//! MQTT ingress: the embedded broker ([`broker`]) or a client of an external broker
//! ([`client`]), and the [`Publisher`] that the republish action uses on either.

pub mod broker;
pub mod client;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;

pub use broker::Broker;
pub use client::{ExternalBroker, ExternalConfig};

/// Where republished messages go: the broker weir reads from.
#[derive(Clone)]
pub enum Publisher {
    Embedded(Broker),
    External(rumqttc::AsyncClient),
}

impl Publisher {
    pub async fn publish(&self, topic: &str, payload: Bytes, qos: QoS) -> Result<(), String> {
        match self {
            Self::Embedded(b) => {
                b.publish(topic, payload, qos);
                Ok(())
            }
            Self::External(c) => c
                .publish_bytes(topic, qos, false, payload)
                .await
                .map_err(|e| e.to_string()),
        }
    }
}
