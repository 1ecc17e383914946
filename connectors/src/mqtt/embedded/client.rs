//! One connected client as the broker holds it: who it is ([`Peer`]), its connection
//! ([`Conn`]: the wire, its session and signals, the acknowledgements it is owed, its
//! topic aliases), what serving it needs besides ([`Life`]: its will, its keep-alive, its
//! place under the connection limit), and a client just let in ([`Admitted`]). These
//! are kept while a connection is parked, so every byte counts (see the test
//! `an_idle_connection_stays_small` in `broker.rs`). Serving them is `connection.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::session::{ConnId, Session};
use super::signals::Signals;
use super::wire::{self, Outbound, Will, Wire};

/// Who is on the other end of a connection, as rules see it.
#[derive(Clone)]
pub(super) struct Peer {
    pub(super) client_id: Arc<str>,
    /// The username the client proved with its password; `None` for anonymous clients.
    pub(super) principal: Option<Arc<str>>,
    pub(super) source_ip: std::net::IpAddr,
}

/// A client let in: its connection, and what its CONNACK and its end need.
pub(super) struct Admitted {
    pub(super) conn: Conn,
    pub(super) will: Option<wire::Will>,
    pub(super) keep_alive: u16,
    pub(super) connack: Outbound<'static>,
}

/// One client's connection.
pub(super) struct Conn {
    pub(super) wire: Wire,
    pub(super) v5: bool,
    pub(super) id: ConnId,
    pub(super) peer: Peer,
    pub(super) session: Arc<Mutex<Session>>,
    pub(super) signals: Arc<Signals>,
    /// The most QoS 1 and 2 messages sent to the client and not acknowledged.
    pub(super) quota: u16,
    /// The most topic aliases the client takes.
    pub(super) alias_max: u16,
    /// MQTT 5 topic aliases, made with the first one either way (most clients use none).
    pub(super) aliases: Option<Box<Aliases>>,
    /// QoS 1 and 2 messages from the client, in the order received, each with whether
    /// the rules hold it yet: acknowledged in this order as they do. (Made with the
    /// first, dropped when the connection parks.) Boxed: 8 bytes in the parked state,
    /// where the empty list would be 32.
    #[allow(clippy::box_collection)]
    pub(super) acks: Option<Box<VecDeque<(u16, u8, bool)>>>,
    /// A plain TCP connection, which may be parked when idle.
    pub(super) parkable: bool,
}

/// A connection's MQTT 5 topic aliases.
#[derive(Default)]
pub(super) struct Aliases {
    /// Those the broker set, by topic.
    pub(super) out: HashMap<Arc<str>, u16>,
    /// Those the client set.
    pub(super) inbound: HashMap<u16, String>,
}

/// What serving a connection needs besides the connection, kept while it is parked.
pub(super) struct Life {
    pub(super) will: Option<Box<Will>>,
    /// The silence after which the client is let go (1.5 keep-alive periods), in ms.
    pub(super) idle_ms: u32,
    /// When that silence will have lasted.
    pub(super) deadline: Instant,
    pub(super) cancel: CancellationToken,
    /// Its place under `--mqtt-max-connections`.
    pub(super) _permit: tokio::sync::OwnedSemaphorePermit,
}
