//! The embedded broker's connection to one client, in either MQTT 3.1.1 or MQTT 5: the
//! broker's session logic sees one set of packets ([`Inbound`], [`Outbound`]) and this
//! module reads and writes them with the codec of the version the client's CONNECT asked
//! for. Both codecs are rumqttc's.
//!
//! What MQTT 5 adds here: a PUBLISH's properties reach the rules (`get_mqtt_property()`,
//! `get_user_properties()`) and are forwarded to MQTT 5 subscribers; acknowledgements carry
//! reason codes; the CONNACK tells the client the broker's bounds (receive maximum,
//! maximum packet size, topic aliases, server keep-alive) and the client id it was given
//! when it sent none.
//!
//! * `packets.rs`: the packets as the session logic sees them, in either version;
//! * `connect.rs`: a new connection's CONNECT, and the codec it picks;
//! * `codec.rs`: [`Wire`], one client's stream and codec, parked and resumed;
//! * `v4.rs`, `v5.rs`: each version's packets to and from the broker's;
//! * `error.rs`: what can go wrong on the wire ([`WireError`]).

mod codec;
mod connect;
mod error;
mod packets;
mod v4;
mod v5;

pub use codec::{Stream, Wire};
pub use error::WireError;
pub use packets::{
    Inbound, OutPublish, Outbound, Publish, RECEIVE_MAX, Refusal, SubRefusal, SubRequest,
    TOPIC_ALIAS_MAX, Will,
};
