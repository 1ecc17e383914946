//! The packets the broker's session logic reads and writes, whichever protocol level a
//! client speaks: its CONNECT ([`Connect`], with its [`Will`]), what it sends after
//! ([`Inbound`]) and what the broker sends it ([`Outbound`]), and why a CONNECT or a
//! SUBSCRIBE filter is refused. `v4.rs` and `v5.rs` translate them to and from each
//! codec's own packets.

use std::sync::Arc;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5;
use weir_engine::MqttProperties;

/// A client's CONNECT, whichever version sent it.
pub struct Connect {
    pub client_id: String,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    /// Never logged.
    pub password: Option<String>,
    pub will: Option<Will>,
    /// How long the session outlives the connection, in seconds: MQTT 5's Session Expiry
    /// Interval (`u32::MAX`: for ever); for MQTT 3.1.1, 0 with a clean session and for
    /// ever without.
    pub session_expiry: u32,
    /// The most QoS 1 and 2 messages the client takes unacknowledged (MQTT 5's Receive
    /// Maximum; 65,535 when absent).
    pub receive_max: u16,
    /// The most topic aliases the client takes from the broker (0: none).
    pub topic_alias_max: u16,
}

/// A will message, published when its client goes without a DISCONNECT.
#[derive(Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub properties: Option<Arc<MqttProperties>>,
    /// MQTT 5's Will Delay Interval, in seconds.
    pub delay: u32,
    /// MQTT 5's Message Expiry Interval of the will, in seconds.
    pub expiry: Option<u32>,
}

/// A PUBLISH from the client.
pub struct Publish {
    /// Empty when the client sent only a topic alias.
    pub topic: String,
    pub pkid: u16,
    /// 0, 1 or 2.
    pub qos: u8,
    pub retain: bool,
    pub payload: Bytes,
    pub properties: Option<Arc<MqttProperties>>,
    /// MQTT 5's Topic Alias.
    pub alias: Option<u16>,
    /// MQTT 5's Message Expiry Interval, in seconds.
    pub expiry: Option<u32>,
}

/// One filter of a SUBSCRIBE, with its options.
pub struct SubRequest {
    pub filter: String,
    pub qos: u8,
    /// MQTT 5: not sent what the client itself published.
    pub no_local: bool,
    /// MQTT 5: the retain flag as the publisher set it.
    pub retain_as_published: bool,
    /// MQTT 5: 0 send retained messages, 1 only for a new subscription, 2 never.
    pub retain_handling: u8,
}

/// A packet from the client after CONNECT.
pub enum Inbound {
    Publish(Publish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pkid: u16,
        filters: Vec<SubRequest>,
        /// MQTT 5's Subscription Identifier.
        id: Option<u32>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect {
        /// MQTT 5's reason 0x04: publish the will anyway.
        with_will: bool,
        /// MQTT 5: a new Session Expiry Interval.
        session_expiry: Option<u32>,
    },
}

/// A PUBLISH to the client.
pub struct OutPublish<'a> {
    /// Empty to send the alias alone.
    pub topic: &'a str,
    pub pkid: u16,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub payload: Bytes,
    pub properties: Option<&'a MqttProperties>,
    pub alias: Option<u16>,
    /// Seconds left of the message's expiry interval.
    pub expiry: Option<u32>,
    pub subscription_ids: &'a [u32],
}

/// A packet to the client.
pub enum Outbound<'a> {
    ConnAck {
        session_present: bool,
        /// The client id the broker chose, for a client that sent none.
        assigned_client_id: Option<String>,
        /// MQTT 5's Server Keep Alive: the keep-alive the client must use instead of its
        /// own.
        server_keep_alive: Option<u16>,
    },
    Publish(OutPublish<'a>),
    PubAck(u16),
    PubRec(u16),
    /// A PUBLISH the client may not send: MQTT 5 clients are told (0x87 Not authorized);
    /// MQTT 3.1.1 has no way to say so, so they get the plain acknowledgement, as from
    /// Mosquitto.
    PubAckDenied(u16),
    PubRecDenied(u16),
    PubRel(u16),
    PubComp(u16),
    /// The QoS granted per filter, or why it was refused.
    SubAck {
        pkid: u16,
        granted: Vec<Result<u8, SubRefusal>>,
    },
    UnsubAck {
        pkid: u16,
        count: usize,
    },
    PingResp,
    /// MQTT 5 only: why the broker closes the connection. MQTT 3.1.1 clients just see it
    /// close.
    Disconnect(v5::DisconnectReasonCode),
}

/// The most QoS 1 and 2 PUBLISHes an MQTT 5 client may have unacknowledged at the broker
/// (told in the CONNACK as Receive Maximum); one more closes the connection (0x93).
pub const RECEIVE_MAX: u16 = 100;

/// The most topic aliases an MQTT 5 client may set (told in the CONNACK).
pub const TOPIC_ALIAS_MAX: u16 = 10;

/// Why a connection was refused at CONNECT.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    ProtocolVersion,
    ClientId,
    /// An unknown username or a wrong password.
    BadCredentials,
    /// No credentials where they are needed.
    NotAuthorized,
    /// The broker holds its maximum of sessions (3.1.1: 3, server unavailable; 5: 0x97).
    Quota,
}

/// Why a SUBSCRIBE filter was refused. MQTT 3.1.1 says 0x80 for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubRefusal {
    /// Not a valid topic filter (0x8F).
    Invalid,
    /// The ACL does not let the client read it (0x80).
    NotAuthorized,
    /// The client holds its maximum of subscriptions (0x97).
    Quota,
}
