//! A message on its way to one client ([`Delivery`]): what the router queues in a
//! session, what a connection sends, and what a saved queue holds.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use weir_engine::MqttProperties;

/// A message on its way to one client.
#[derive(Clone)]
pub struct Delivery {
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: u8,
    /// The RETAIN flag to send.
    pub retain: bool,
    pub properties: Option<Arc<MqttProperties>>,
    /// When MQTT 5's Message Expiry Interval runs out.
    pub expires_at: Option<Instant>,
    pub subscription_ids: Vec<u32>,
}

impl Delivery {
    /// What the message holds of memory, for the queue's bounds.
    pub fn size(&self) -> usize {
        self.topic.len() + self.payload.len() + 64
    }

    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}
