//! What the broker lets its clients hold ([`Limits`], set by flags: packets,
//! connections, subscriptions, sessions, queued and retained bytes, keep-alive) and the
//! fixed times it gives them (to send CONNECT, to read what it writes, to stay silent).

use std::time::Duration;

/// Largest packet the broker accepts, unless configured otherwise (`--mqtt-max-packet-size`).
pub const DEFAULT_MAX_PACKET: usize = 128 * 1024;
/// How long a new connection has to send CONNECT.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may leave a packet of ours unread before it is disconnected.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client that asked for no keep-alive (0) may stay silent.
pub const IDLE_WITHOUT_KEEP_ALIVE: Duration = Duration::from_secs(3600);
/// Session expiry intervals longer than this (about ten years) count as "for ever".
pub const FOREVER_SECS: u32 = 10 * 365 * 24 * 3600;
/// The silence after which a connection that was busy is parked (see `park.rs`).
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// What one client may hold of the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest packet a client may send (`--mqtt-max-packet-size`); a larger one
    /// closes its connection. Told to MQTT 5 clients in the CONNACK.
    pub max_packet: usize,
    /// The most clients connected at once (`--mqtt-max-connections`); one more is closed
    /// before its CONNECT is read.
    pub max_connections: usize,
    /// The most subscriptions one client may hold (`--mqtt-max-subscriptions`); one more
    /// gets a failure return code in the SUBACK.
    pub max_subscriptions: usize,
    /// The most sessions, of connected clients and of away clients whose session has
    /// not expired (`--mqtt-max-sessions`); a client that would start one more is
    /// refused (CONNACK 3, MQTT 5: 0x97). A client with a session comes back in.
    pub max_sessions: usize,
    /// The most bytes (topic and payload) queued for one subscriber
    /// (`--mqtt-max-queued-bytes`); a connected subscriber that falls further behind is
    /// disconnected, and what does not fit in an offline client's queue is dropped.
    pub max_queued_bytes: usize,
    /// The most bytes queued for all clients together; past it, messages for any
    /// client are dropped as for a full queue.
    pub max_total_queued_bytes: usize,
    /// The most bytes of retained messages; a retained message that does not fit is
    /// passed on but not retained.
    pub max_retained_bytes: usize,
    /// The longest keep-alive an MQTT 5 client may use, in seconds
    /// (`--mqtt-max-keep-alive`): one that asks for more, or for none, is told this one
    /// in the CONNACK (Server Keep Alive). MQTT 3.1.1 cannot be told.
    pub max_keep_alive: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_packet: DEFAULT_MAX_PACKET,
            max_connections: 10_000,
            max_subscriptions: 100,
            max_sessions: 100_000,
            max_queued_bytes: 16 * 1024 * 1024,
            max_total_queued_bytes: 1024 * 1024 * 1024,
            max_retained_bytes: 64 * 1024 * 1024,
            max_keep_alive: 60,
        }
    }
}
