//! The embedded MQTT broker: weir's zero-setup default, so devices can publish to weir
//! itself with no other server, and for them weir is the broker.
//!
//! It speaks MQTT 3.1.1 and MQTT 5 over TCP, whichever each client's CONNECT asks for (see
//! [`wire`]; the packet codecs are rumqttc's). The session logic is weir's own
//! ([`session`]): QoS 0, 1 and 2 both ways; persistent sessions (subscriptions, the
//! offline queue, messages in flight, sent again on reconnect) with MQTT 5's session
//! expiry; retained messages ([`retained`]); will messages, with MQTT 5's will delay;
//! MQTT 5's message expiry, topic aliases both ways, subscription identifiers,
//! subscribe options (no-local, retain-as-published, retain handling), shared
//! subscriptions (`$share/<group>/<filter>`), receive maximum both ways and reason codes.
//!
//! Clients authenticate against a password file and are confined by an ACL file, both in
//! Mosquitto's formats ([`access`]); a refused client never touches another's session.
//!
//! No client takes the broker down ([`Limits`]): packets, connections, subscriptions per
//! client, the bytes queued for each client and for all, and retained bytes are bounded;
//! a connected subscriber that falls further behind, or does not read for
//! [`WRITE_TIMEOUT`], is disconnected (and counted) instead of holding memory; a client
//! that stays silent past its keep-alive (or [`IDLE_WITHOUT_KEEP_ALIVE`], when it asked
//! for none) is disconnected.
//!
//! Every PUBLISH is handed to weir's pipeline with the publisher's client id (so
//! `clientid()` works), and a QoS 1 or 2 PUBLISH is acknowledged (PUBACK, PUBREC, in the
//! order received) only once the rules that match it hold their outputs: delivered, or in
//! a disk buffer. The hand-off waits when the pipeline is full, which pushes back on the
//! publishing client instead of growing memory.
//!
//! Where things are:
//!
//! * [`Broker`] (`broker.rs`) is the hub: the handle and the state every room shares.
//!   The rooms, each an `impl Broker` of its own: `admission.rs` (listeners, CONNECT,
//!   authentication, the ACL, limits on connections and sessions), `connection.rs` (a
//!   client's connection served, until it ends or is parked), `sessions.rs` (attach,
//!   detach, expiry, wills), `subscriptions.rs` (SUBSCRIBE, UNSUBSCRIBE, retained
//!   messages for a new subscription), `publishing.rs` (a PUBLISH to the rules and to the
//!   subscribers), `persistence.rs` (loading and saving what survives a restart).
//! * What they share, below them: `limits.rs`, `client.rs` (a connected client's state),
//!   `session.rs` (one session's queue and messages in flight), `subscription.rs`,
//!   `delivery.rs` (a message on its way to a client), `signals.rs` (what other tasks
//!   tell a connection), `park.rs` (idle connections without a task), `retained.rs`,
//!   `store.rs` (the saved files), `error.rs` (why a client was refused or let go),
//!   [`wire`] (the codecs), [`access`], [`tls`], `ws.rs`.

pub mod access;
mod admission;
mod broker;
mod client;
mod connection;
mod delivery;
mod error;
mod limits;
mod park;
mod persistence;
mod publishing;
mod retained;
mod session;
mod sessions;
mod signals;
mod store;
mod subscription;
mod subscriptions;
pub mod tls;
mod wire;
mod ws;

pub use broker::{Broker, OwnService};
pub use limits::{DEFAULT_MAX_PACKET, IDLE_WITHOUT_KEEP_ALIVE, Limits, WRITE_TIMEOUT};
