//! The hub of the embedded broker: [`Broker`], the handle weir and every connection
//! hold, and its state ([`Inner`]), which the rooms of the broker act on, each in an
//! `impl Broker` of its own file:
//!
//! * `admission.rs`: the listeners, a client's CONNECT, authentication, the ACL, the
//!   limits on connections and sessions;
//! * `connection.rs`: a client's connection, served from its CONNACK until it ends or
//!   is parked;
//! * `sessions.rs`: a connection attached to its session and detached, session expiry,
//!   wills;
//! * `subscriptions.rs`: SUBSCRIBE and UNSUBSCRIBE, retained messages for a new
//!   subscription;
//! * `publishing.rs`: a PUBLISH to the rules and to the subscribers;
//! * `persistence.rs`: what survives a restart.
//!
//! The rooms import from here and from the leaves below them; nothing here imports a
//! room. The counters every room moves are here too ([`Broker::refused`],
//! [`Broker::dropped`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;
use weir_engine::Message;
use weir_engine::topic::TopicTrie;

use super::access::Access;
use super::client::{Conn, Life};
use super::limits::Limits;
use super::park::Parker;
use super::retained::RetainedStore;
use super::session::Session;
use super::store::Store;
use super::subscription::Sub;
use crate::metrics::Metrics;

/// A handle to the embedded broker: publish into it from inside weir.
#[derive(Clone)]
pub struct Broker {
    pub(super) inner: Arc<Inner>,
}

/// The broker's state: what its handles and every room share.
pub(super) struct Inner {
    pub(super) subscriptions: RwLock<TopicTrie<Sub>>,
    pub(super) sessions: Mutex<HashMap<Arc<str>, Arc<Mutex<Session>>>>,
    pub(super) retained: Mutex<RetainedStore>,
    pub(super) next_id: AtomicU64,
    pub(super) ingress: mpsc::Sender<Message>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) limits: Limits,
    /// Permits for [`Limits::max_connections`].
    pub(super) connection_permits: Arc<tokio::sync::Semaphore>,
    pub(super) access: Access,
    /// Picks the member of a shared subscription group that gets the next message.
    pub(super) share_cursor: AtomicUsize,
    /// Where sessions and retained messages are saved; none: kept in memory only.
    pub(super) store: std::sync::OnceLock<Store>,
    /// Persistent sessions or their subscriptions changed since they were saved.
    pub(super) sessions_dirty: AtomicBool,
    /// Retained messages changed since they were saved.
    pub(super) retained_dirty: AtomicBool,
    /// Idle plain-TCP connections, off tokio (see `park.rs`), and the runtime that serves
    /// them again; made with the first connection, `None` if it could not be.
    pub(super) parker: std::sync::OnceLock<Option<(Arc<Parker<Sleeper>>, tokio::runtime::Handle)>>,
    /// A service of weir's own that takes the messages of some topics (the device
    /// shadows), for what weir publishes itself on them (see `publishing.rs`).
    pub(super) own_service: std::sync::OnceLock<OwnService>,
}

/// A service of weir's own that takes the messages published on some topics, beside the
/// rules (the device shadows' requests): the filters it reads (for an external broker's
/// subscription), a test of a topic, and its queue.
#[derive(Clone)]
pub struct OwnService {
    pub filters: &'static [&'static str],
    pub wants: fn(&str) -> bool,
    pub tx: mpsc::Sender<Arc<Message>>,
}

/// A parked connection: see `park.rs`.
pub(super) struct Sleeper {
    pub(super) broker: Broker,
    pub(super) conn: Conn,
    pub(super) life: Life,
}

/// Locks a mutex, and takes it even if a holder panicked.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Broker {
    /// A broker that hands every PUBLISH it receives to `ingress`, open to every client.
    pub fn new(ingress: mpsc::Sender<Message>, metrics: Arc<Metrics>) -> Self {
        Self::with_limits(ingress, metrics, Limits::default())
    }

    /// [`Broker::new`], with these limits on its clients.
    pub fn with_limits(
        ingress: mpsc::Sender<Message>,
        metrics: Arc<Metrics>,
        limits: Limits,
    ) -> Self {
        let open = Access {
            allow_anonymous: true,
            ..Access::default()
        };
        Self::with_access(ingress, metrics, limits, open)
    }

    /// [`Broker::with_limits`], letting in and confining clients as `access` says.
    pub fn with_access(
        ingress: mpsc::Sender<Message>,
        metrics: Arc<Metrics>,
        limits: Limits,
        access: Access,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                subscriptions: RwLock::new(TopicTrie::new()),
                sessions: Mutex::new(HashMap::new()),
                retained: Mutex::new(RetainedStore::default()),
                next_id: AtomicU64::new(1),
                ingress,
                metrics,
                limits,
                connection_permits: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
                access,
                share_cursor: AtomicUsize::new(0),
                store: std::sync::OnceLock::new(),
                sessions_dirty: AtomicBool::new(false),
                retained_dirty: AtomicBool::new(false),
                parker: std::sync::OnceLock::new(),
                own_service: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The routing trie, to change.
    pub(super) fn trie_mut(&self) -> std::sync::RwLockWriteGuard<'_, TopicTrie<Sub>> {
        self.inner
            .subscriptions
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A persistent session changed: it is saved soon.
    pub(super) fn changed(&self, s: &Session) {
        if s.expiry > 0 {
            self.inner.sessions_dirty.store(true, Ordering::Release);
        }
    }

    /// Counts a connection refused, by reason (`weir_broker_connections_refused_total`).
    pub(super) fn refused(&self, reason: &str) {
        self.inner
            .metrics
            .broker_refused
            .with_label_values(&[reason])
            .inc();
    }

    /// Counts a message not passed on, by reason (`weir_broker_messages_dropped_total`).
    pub(super) fn dropped(&self, reason: &str) {
        self.inner
            .metrics
            .broker_dropped
            .with_label_values(&[reason])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::super::signals::Signals;
    use super::*;

    /// What an idle connection holds: the bench (weir-conns) measures the whole; this
    /// names the parts, so that a field added to any of them is a choice, not a drift.
    /// (Sizes of a 64-bit target; each is one allocation with its 8-byte header, rounded
    /// up to 16 by the allocator.)
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn an_idle_connection_stays_small() {
        eprintln!(
            "parked {} B, session {} B, signals {} B",
            std::mem::size_of::<Sleeper>(),
            std::mem::size_of::<Session>(),
            std::mem::size_of::<Signals>()
        );
        assert!(std::mem::size_of::<Sleeper>() <= 184);
        assert!(std::mem::size_of::<Session>() <= 96);
        assert!(std::mem::size_of::<Signals>() <= 72);
    }
}
