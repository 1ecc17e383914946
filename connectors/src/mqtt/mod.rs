//! MQTT: how messages get into weir, and how the republish action gets them out again.
//!
//! * [`embedded`]: the broker devices connect to, weir's zero-setup default.
//! * [`external`]: weir as a client of another broker (`--broker`), reading the topics
//!   its rules want and publishing on a connection of its own.
//! * [`Publisher`]: where republished messages go, whichever of the two weir runs.

pub mod embedded;
pub mod external;
mod packets;

pub use rumqttc::mqttbytes::QoS;

pub use embedded::{Broker, OwnService};
pub use external::{
    AdoptedSession, ConfirmedPublisher, ExternalBroker, ExternalConfig, PublishError, no_delay,
};

/// Where republished messages go: the broker weir reads from. On an external broker a
/// publish returns once the broker acknowledged it.
#[derive(Clone)]
pub enum Publisher {
    Embedded(Broker),
    External(ConfirmedPublisher),
}

impl Publisher {
    /// Publishes a batch in order; a result per publish, once each is confirmed.
    pub async fn publish_batch(
        &self,
        publishes: Vec<external::publisher::Outgoing>,
        qos: QoS,
    ) -> Vec<Result<(), PublishError>> {
        match self {
            Self::Embedded(b) => {
                let n = publishes.len();
                let mut held = Vec::new();
                for (topic, payload) in publishes {
                    b.publish(&topic, payload.clone(), qos);
                    held.extend(b.to_own_service(&topic, payload).await);
                }
                // Confirmed once weir's own service has what was meant for it.
                for h in held {
                    let _ = h.await;
                }
                (0..n).map(|_| Ok(())).collect()
            }
            Self::External(p) => p.publish_batch(publishes, qos).await,
        }
    }
}
