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
use weir_engine::{Ack, Message};

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

    /// Publishes a message a device sent over HTTP as its MQTT PUBLISH at `qos` would
    /// be: on the embedded broker, to the rules, the retained store if `retain` and the
    /// subscribers, returning (at QoS 1) once the rules let go of it, as the PUBACK
    /// would be sent; on an external broker, to that broker (where weir's rules read it
    /// as any device's), returning once it acknowledged the publish.
    pub async fn publish_from_http(
        &self,
        mut msg: Message,
        qos: QoS,
        retain: bool,
    ) -> Result<(), PublishError> {
        match self {
            Self::Embedded(b) => {
                let (done, held) = tokio::sync::oneshot::channel();
                let at_least_once = qos != QoS::AtMostOnce;
                if at_least_once {
                    msg.ack = Ack::on_drop(move || {
                        let _ = done.send(());
                    });
                }
                if !b.publish_from_http(msg, qos, retain).await {
                    return Err(PublishError::Stopped);
                }
                if at_least_once {
                    held.await.map_err(|_| PublishError::Stopped)?;
                }
                Ok(())
            }
            Self::External(p) => {
                let one = vec![(msg.topic, msg.payload)];
                p.publish_retained(one, qos, retain)
                    .await
                    .pop()
                    .unwrap_or(Err(PublishError::NotPublished))
            }
        }
    }
}
