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

pub mod access;
mod delivery;
mod park;
mod retained;
mod session;
mod signals;
mod store;
mod subscription;
pub mod tls;
mod wire;
mod ws;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode as Reason;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weir_engine::topic::{TopicTrie, validate_filter, validate_topic};
use weir_engine::{Ack, Message, MqttProperties, now_ms};

use self::access::{Access, Denied, Want};
use self::delivery::Delivery;
use self::park::Parker;
use self::retained::{Retained, RetainedStore};
use self::session::{ConnId, Flight, Link, MAX_INFLIGHT, Offered, Session};
use self::signals::{EndSignal, Signals};
use self::store::{SavedMessage, SavedQueue, SavedSession, SavedSub, Store};
use self::subscription::{Sub, SubOptions, shared};
use self::tls::ListenerOptions;
use self::wire::{
    Inbound, OutPublish, Outbound, RECEIVE_MAX, Refusal, Stream, SubRefusal, TOPIC_ALIAS_MAX, Will,
    Wire,
};
use crate::metrics::Metrics;

/// Largest packet the broker accepts, unless configured otherwise (`--mqtt-max-packet-size`).
pub const DEFAULT_MAX_PACKET: usize = 128 * 1024;
/// How long a new connection has to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may leave a packet of ours unread before it is disconnected.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client that asked for no keep-alive (0) may stay silent.
pub const IDLE_WITHOUT_KEEP_ALIVE: Duration = Duration::from_secs(3600);
/// Session expiry intervals longer than this (about ten years) count as "for ever".
const FOREVER_SECS: u32 = 10 * 365 * 24 * 3600;
/// The silence after which a connection that was busy is parked (see `park.rs`).
const PARK_AFTER: Duration = Duration::from_secs(1);

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

/// How a listener's connections carry MQTT.
#[derive(Clone)]
enum Transport {
    Tcp,
    Tls(rumqttc::tokio_rustls::TlsAcceptor),
    WebSocket,
}

/// A handle to the embedded broker: publish into it from inside weir.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    subscriptions: RwLock<TopicTrie<Sub>>,
    sessions: Mutex<HashMap<Arc<str>, Arc<Mutex<Session>>>>,
    retained: Mutex<RetainedStore>,
    next_id: AtomicU64,
    ingress: mpsc::Sender<Message>,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// Permits for [`Limits::max_connections`].
    connection_permits: Arc<tokio::sync::Semaphore>,
    access: Access,
    /// Picks the member of a shared subscription group that gets the next message.
    share_cursor: AtomicUsize,
    /// Where sessions and retained messages are saved; none: kept in memory only.
    store: std::sync::OnceLock<Store>,
    /// Persistent sessions or their subscriptions changed since they were saved.
    sessions_dirty: AtomicBool,
    /// Retained messages changed since they were saved.
    retained_dirty: AtomicBool,
    /// Idle plain-TCP connections, off tokio (see `park.rs`), and the runtime that serves
    /// them again; made with the first connection, `None` if it could not be.
    parker: std::sync::OnceLock<Option<(Arc<Parker<Sleeper>>, tokio::runtime::Handle)>>,
}

/// A message entering the broker, from a client, a will or weir's own republish.
struct Incoming<'a> {
    topic: &'a str,
    payload: Bytes,
    qos: u8,
    retain: bool,
    properties: Option<Arc<MqttProperties>>,
    expires_at: Option<Instant>,
    /// The publishing client, for no-local subscriptions.
    publisher: Option<&'a str>,
}

/// Who is on the other end of a connection, as rules see it.
#[derive(Clone)]
struct Peer {
    client_id: Arc<str>,
    /// The username the client proved with its password; `None` for anonymous clients.
    principal: Option<Arc<str>>,
    source_ip: std::net::IpAddr,
}

/// How a connection ended, when it ended without an error.
enum End {
    /// It is idle: park it (see `park.rs`).
    Park,
    /// The client sent DISCONNECT.
    Disconnect {
        with_will: bool,
        session_expiry: Option<u32>,
    },
    /// The client closed the connection without DISCONNECT.
    Closed,
    /// weir is shutting down.
    Shutdown,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn expires_at(seconds: Option<u32>) -> Option<Instant> {
    seconds.and_then(|s| Instant::now().checked_add(Duration::from_secs(u64::from(s))))
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
            }),
        }
    }

    /// Accepts connections on `listener` until `cancel` fires.
    pub async fn serve(self, listener: TcpListener, cancel: CancellationToken) {
        let options = ListenerOptions {
            allow_anonymous: self.inner.access.allow_anonymous,
            require_client_id: false,
        };
        self.accept_loop(listener, Transport::Tcp, options, cancel)
            .await;
    }

    /// Accepts MQTT over WebSocket on `listener` until `cancel` fires (`--mqtt-ws-listen`).
    pub async fn serve_websocket(
        self,
        listener: TcpListener,
        options: ListenerOptions,
        cancel: CancellationToken,
    ) {
        self.accept_loop(listener, Transport::WebSocket, options, cancel)
            .await;
    }

    /// Accepts TLS connections on `listener` until `cancel` fires (`--mqtts-listen`). A
    /// client whose certificate the acceptor verified is identified by the certificate.
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        acceptor: rumqttc::tokio_rustls::TlsAcceptor,
        options: ListenerOptions,
        cancel: CancellationToken,
    ) {
        self.accept_loop(listener, Transport::Tls(acceptor), options, cancel)
            .await;
    }

    async fn accept_loop(
        self,
        listener: TcpListener,
        transport: Transport,
        options: ListenerOptions,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    // Parked connections are served again, to be told weir is stopping.
                    if let Some(Some((parker, _))) = self.inner.parker.get() {
                        parker.stop();
                    }
                    return;
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Ok(permit) = self.inner.connection_permits.clone().try_acquire_owned() else {
                            self.refused("max_connections");
                            tracing::debug!(%peer, "mqtt connection refused: {} clients are connected", self.inner.limits.max_connections);
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let broker = self.clone();
                        let cancel = cancel.clone();
                        let transport = transport.clone();
                        tokio::spawn(async move {
                            // The task holds only these and one boxed future at a time:
                            // the handshake's (a TLS session holds kilobytes) until it is
                            // done, then the connection's. Thousands of idle devices each
                            // hold a task.
                            let parkable = matches!(transport, Transport::Tcp);
                            let result = async {
                                let (io, identity) = Box::pin(broker.handshake(stream, &transport)).await?;
                                let mut client = Box::pin(broker.admit(io, peer, identity, options)).await?;
                                client.conn.parkable = parkable;
                                Box::pin(broker.serve_client(client, cancel, permit)).await
                            }
                            .await;
                            if let Err(e) = result {
                                tracing::debug!(%peer, error = %e, "mqtt connection closed");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "mqtt accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }

    /// The transport's handshake on a new connection: the byte stream MQTT runs over and,
    /// with a client certificate, its common name.
    async fn handshake(
        &self,
        stream: TcpStream,
        transport: &Transport,
    ) -> Result<(Stream, Option<String>), String> {
        match transport {
            Transport::Tcp => Ok((Box::new(stream), None)),
            Transport::WebSocket => {
                let max = self.inner.limits.max_packet;
                match tokio::time::timeout(CONNECT_TIMEOUT, ws::accept(stream, max)).await {
                    Ok(Ok(ws)) => Ok((Box::new(ws), None)),
                    Ok(Err(e)) => {
                        self.refused("websocket");
                        Err(e)
                    }
                    Err(_) => {
                        self.refused("websocket");
                        Err(format!("no WebSocket handshake within {CONNECT_TIMEOUT:?}"))
                    }
                }
            }
            Transport::Tls(acceptor) => {
                match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let identity = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| tls::common_name(c));
                        Ok((Box::new(tls), identity))
                    }
                    Ok(Err(e)) => {
                        self.refused("tls");
                        Err(format!("TLS handshake failed: {e}"))
                    }
                    Err(_) => {
                        self.refused("tls");
                        Err(format!("no TLS handshake within {CONNECT_TIMEOUT:?}"))
                    }
                }
            }
        }
    }

    /// Delivers a message to the broker's subscribers (as a republish action does). It
    /// does not go back into weir's own pipeline. Returns how many subscribers got it.
    pub fn publish(&self, topic: &str, payload: Bytes, qos: QoS) -> usize {
        self.route(&Incoming {
            topic,
            payload,
            qos: qos as u8,
            retain: false,
            properties: None,
            expires_at: None,
            publisher: None,
        })
    }

    /// Queues a message for every session with a matching subscription (one member of
    /// each shared subscription group). Returns how many sessions took it.
    fn route(&self, m: &Incoming<'_>) -> usize {
        // Per client: the highest QoS granted, retain-as-published, the subscription
        // identifiers of every matching subscription.
        let mut direct: HashMap<Arc<str>, (u8, bool, Vec<u32>)> = HashMap::new();
        let mut groups: HashMap<(Arc<str>, Arc<str>), Vec<Sub>> = HashMap::new();
        {
            let subs = self
                .inner
                .subscriptions
                .read()
                .unwrap_or_else(|p| p.into_inner());
            subs.for_each_match(m.topic, |s| {
                if let Some(group) = &s.group {
                    groups
                        .entry((group.clone(), s.filter.clone()))
                        .or_default()
                        .push(s.clone());
                    return;
                }
                if s.opts.no_local && m.publisher == Some(&*s.client) {
                    return;
                }
                let e = direct
                    .entry(s.client.clone())
                    .or_insert((0, false, Vec::new()));
                e.0 = e.0.max(s.opts.qos);
                e.1 |= s.opts.retain_as_published;
                e.2.extend(s.opts.id);
            });
        }
        if direct.is_empty() && groups.is_empty() {
            return 0;
        }
        let sessions: HashMap<Arc<str>, Arc<Mutex<Session>>> = {
            let all = lock(&self.inner.sessions);
            direct
                .keys()
                .chain(groups.values().flatten().map(|s| &s.client))
                .filter_map(|c| Some((c.clone(), all.get(c)?.clone())))
                .collect()
        };
        let topic: Arc<str> = Arc::from(m.topic);
        let mut delivered = 0;
        for (client, (granted, rap, ids)) in direct {
            let Some(session) = sessions.get(&client) else {
                continue;
            };
            let d = Delivery {
                topic: topic.clone(),
                payload: m.payload.clone(),
                qos: granted.min(m.qos),
                retain: rap && m.retain,
                properties: m.properties.clone(),
                expires_at: m.expires_at,
                subscription_ids: ids,
            };
            delivered += usize::from(self.offer(session, d));
        }
        for (_, members) in groups {
            // The next connected member, round robin; any member when none is.
            let n = members.len();
            let start = self.inner.share_cursor.fetch_add(1, Ordering::Relaxed) % n;
            let connected = |s: &Sub| {
                sessions
                    .get(&s.client)
                    .is_some_and(|x| lock(x).link.is_some())
            };
            let pick = (0..n)
                .map(|i| &members[(start + i) % n])
                .find(|s| connected(s))
                .unwrap_or(&members[start]);
            let Some(session) = sessions.get(&pick.client) else {
                continue;
            };
            let d = Delivery {
                topic: topic.clone(),
                payload: m.payload.clone(),
                qos: pick.opts.qos.min(m.qos),
                retain: pick.opts.retain_as_published && m.retain,
                properties: m.properties.clone(),
                expires_at: m.expires_at,
                subscription_ids: pick.opts.id.into_iter().collect(),
            };
            delivered += usize::from(self.offer(session, d));
        }
        delivered
    }

    /// Queues `d` for one session, if the ACL lets its client read it. Whether it did.
    fn offer(&self, session: &Mutex<Session>, d: Delivery) -> bool {
        let limits = &self.inner.limits;
        let mut s = lock(session);
        if let Some(acl) = &self.inner.access.acl
            && !acl.allows(s.principal.as_deref(), &s.client_id, Want::Read, &d.topic)
        {
            self.dropped("not_authorized");
            return false;
        }
        match s.offer(
            d,
            limits.max_queued_bytes,
            &self.inner.metrics.broker_queued_bytes,
            limits.max_total_queued_bytes,
        ) {
            Offered::Queued => true,
            Offered::NotKept => false,
            Offered::Full => {
                match &s.link {
                    // A subscriber this far behind will not catch up: let it go.
                    Some(link) => {
                        self.dropped("slow_subscriber");
                        if link.signals.end(EndSignal::Slow) {
                            self.inner.metrics.broker_slow.inc();
                        }
                    }
                    None => self.dropped("queue_full"),
                }
                false
            }
        }
    }

    /// Stores or clears the retained message of a topic.
    fn retain(&self, m: &Incoming<'_>) {
        let mut store = lock(&self.inner.retained);
        let kept = store.set(
            m.topic,
            Retained {
                payload: m.payload.clone(),
                qos: m.qos,
                properties: m.properties.clone(),
                expires_at: m.expires_at,
            },
            self.inner.limits.max_retained_bytes,
        );
        if !kept {
            self.dropped("retained_full");
        }
        self.inner.retained_dirty.store(true, Ordering::Release);
        self.inner.metrics.broker_retained.set(store.len() as i64);
    }

    /// Takes a message a client published (or its will): to the rules, into the
    /// retained store, to the subscribers. `ack` goes with it to the rules.
    async fn accept_publish(&self, peer: &Peer, m: &Incoming<'_>, ack: Ack) -> Result<(), String> {
        self.inner.metrics.broker_received.inc();
        let msg = Message {
            topic: m.topic.to_owned(),
            client_id: Some(peer.client_id.to_string()),
            principal: peer.principal.as_deref().map(str::to_owned),
            source_ip: Some(peer.source_ip.to_string()),
            payload: m.payload.clone(),
            received_at_ms: now_ms(),
            seq: weir_engine::next_seq(),
            properties: m.properties.clone(),
            ack,
        };
        if self.inner.ingress.send(msg).await.is_err() {
            return Err("weir is shutting down".to_owned());
        }
        // Let the other connections woken with this one take their packets first: a
        // SUBSCRIBE that reached the broker before this PUBLISH is then in place when it
        // is routed, as in a broker that handles its sockets in turn.
        for _ in 0..2 {
            tokio::task::yield_now().await;
        }
        if m.retain {
            self.retain(m);
        }
        self.route(m);
        Ok(())
    }

    /// Reads a client's CONNECT and lets it in (its CONNACK yet to be sent), or refuses
    /// it.
    async fn admit(
        &self,
        stream: Stream,
        peer: SocketAddr,
        certificate: Option<String>,
        options: ListenerOptions,
    ) -> Result<Admitted, String> {
        let (mut wire, mut connect) = Box::pin(Wire::accept(
            stream,
            self.inner.limits.max_packet,
            CONNECT_TIMEOUT,
        ))
        .await
        .inspect_err(|e| {
            if e.starts_with(wire::UNSUPPORTED_PROTOCOL) {
                self.refused("protocol");
            }
        })?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        if options.require_client_id
            && certificate
                .as_deref()
                .is_some_and(|cn| cn != connect.client_id)
        {
            self.refused("client_id");
            tracing::info!(
                %peer,
                client_id = connect.client_id,
                certificate = certificate.as_deref().unwrap_or(""),
                "mqtt client refused: its client id is not its certificate's name"
            );
            Box::pin(wire.refuse(Refusal::ClientId)).await;
            return Err("client id differs from the certificate's name".to_owned());
        }
        let authenticated = match certificate {
            // A certificate the client CA signed is proof enough.
            Some(cn) => Ok(Some(cn)),
            None => self.inner.access.authenticate(
                connect.username.as_deref(),
                connect.password.as_deref().map(str::as_bytes),
                options.allow_anonymous,
            ),
        };
        let principal = match authenticated {
            Ok(principal) => principal.map(Arc::<str>::from),
            Err(denied) => {
                self.refused(denied.reason());
                // The username helps an operator find the device; the password is never
                // logged.
                tracing::info!(
                    %peer,
                    client_id = connect.client_id,
                    username = connect.username.as_deref().unwrap_or(""),
                    reason = denied.reason(),
                    "mqtt client refused"
                );
                Box::pin(wire.refuse(match denied {
                    Denied::Anonymous => Refusal::NotAuthorized,
                    Denied::BadCredentials => Refusal::BadCredentials,
                }))
                .await;
                return Err(format!("refused: {}", denied.reason()));
            }
        };
        let (client_id, assigned) = if connect.client_id.is_empty() {
            // MQTT 3.1.1 allows an empty id only with a clean session; MQTT 5 always, and
            // the CONNACK tells the client the id it got.
            if !connect.clean_start && !wire.is_v5() {
                self.refused("client_id");
                Box::pin(wire.refuse(Refusal::ClientId)).await;
                return Err("empty client id needs a clean session".to_owned());
            }
            let assigned = format!("weir-anon-{id}");
            (assigned.clone(), wire.is_v5().then_some(assigned))
        } else {
            (connect.client_id.clone(), None)
        };
        let client_id: Arc<str> = Arc::from(client_id);
        let signals = Arc::new(Signals::default());
        let link = Link {
            conn: id,
            signals: signals.clone(),
        };
        let session_expiry = if connect.session_expiry >= FOREVER_SECS {
            u32::MAX
        } else {
            connect.session_expiry
        };
        let Some((session, present)) = self.attach(
            &client_id,
            connect.clean_start,
            link,
            principal.clone(),
            session_expiry,
        ) else {
            self.refused("max_sessions");
            tracing::warn!(
                %peer,
                %client_id,
                max = self.inner.limits.max_sessions,
                "mqtt client refused: the broker holds its maximum of sessions (--mqtt-max-sessions)"
            );
            Box::pin(wire.refuse(Refusal::Quota)).await;
            return Err("the broker holds its maximum of sessions".to_owned());
        };
        tracing::debug!(%peer, %client_id, v5 = wire.is_v5(), present, "mqtt client connected");
        let peer = Peer {
            client_id: client_id.clone(),
            principal,
            source_ip: peer.ip(),
        };
        let max_keep_alive = self.inner.limits.max_keep_alive;
        let capped =
            wire.is_v5() && (connect.keep_alive == 0 || connect.keep_alive > max_keep_alive);
        let keep_alive = if capped {
            max_keep_alive
        } else {
            connect.keep_alive
        };
        let conn = Conn {
            v5: wire.is_v5(),
            wire,
            id,
            peer,
            session,
            signals,
            quota: connect.receive_max.min(MAX_INFLIGHT),
            alias_max: connect.topic_alias_max,
            aliases: None,
            acks: None,
            parkable: false,
        };
        Ok(Admitted {
            conn,
            // Only the will is needed from here on, not the rest of the CONNECT.
            will: connect.will.take(),
            keep_alive,
            connack: Outbound::ConnAck {
                session_present: present,
                assigned_client_id: assigned,
                server_keep_alive: capped.then_some(keep_alive),
            },
        })
    }

    /// Serves a client let in, from its CONNACK until it goes or is parked; then lets go
    /// of its session and sees to its will.
    async fn serve_client(
        self,
        client: Admitted,
        cancel: CancellationToken,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<(), String> {
        let Admitted {
            mut conn,
            will,
            keep_alive,
            connack,
        } = client;
        self.inner.metrics.broker_connections.inc();
        // MQTT 3.1.1 §3.1.2.10: close after 1.5 keep-alive periods of silence; a client
        // that asked for none gets an hour.
        let idle = if keep_alive == 0 {
            IDLE_WITHOUT_KEEP_ALIVE
        } else {
            Duration::from_millis(u64::from(keep_alive) * 1500)
        };
        let mut life = Life {
            will: will.map(Box::new),
            idle_ms: u32::try_from(idle.as_millis()).unwrap_or(u32::MAX),
            deadline: Instant::now() + idle,
            cancel,
            _permit: permit,
        };
        let started = async {
            Box::pin(send(&mut conn.wire, connack)).await?;
            Box::pin(self.resend_in_flight(&mut conn)).await?;
            Box::pin(self.flush(&mut conn)).await
        }
        .await;
        let result = match started {
            // Most devices say nothing for a while after connecting: parked at once.
            Ok(()) => self.serve_conn(&mut conn, &mut life, Instant::now()).await,
            Err(e) => Err(e),
        };
        self.finish(conn, life, result)
    }

    /// Serves a parked connection again, woken (see `park.rs`).
    async fn resume(self, mut conn: Conn, mut life: Life) {
        self.inner.metrics.broker_parked.dec();
        let result = match conn.wire.resume(self.inner.limits.max_packet) {
            Ok(()) => {
                // Not parked again before it had a moment to read what woke it.
                let park_at = Instant::now() + PARK_AFTER;
                self.serve_conn(&mut conn, &mut life, park_at).await
            }
            Err(e) => Err(format!(
                "a parked connection could not be served again: {e}"
            )),
        };
        if let Err(e) = self.finish(conn, life, result) {
            tracing::debug!(error = %e, "mqtt connection closed");
        }
    }

    /// After serving: parks the connection, or lets go of its session and sees to its will.
    fn finish(self, mut conn: Conn, life: Life, result: Result<End, String>) -> Result<(), String> {
        let result = match result {
            Ok(End::Park) => match conn.wire.park() {
                Ok(()) => {
                    // What it holds empty is given back while it sleeps.
                    conn.acks = None;
                    lock(&conn.session).trim();
                    let Some(Some((parker, _))) = self.inner.parker.get() else {
                        unreachable!("a connection parks only where there is a parker")
                    };
                    let parker = parker.clone();
                    self.inner.metrics.broker_parked.inc();
                    parker.park(Box::new(Sleeper {
                        broker: self,
                        conn,
                        life,
                    }));
                    return Ok(());
                }
                Err(e) => Err(format!("the connection could not be parked: {e}")),
            },
            other => other,
        };
        self.inner.metrics.broker_connections.dec();
        let Conn {
            id, peer, session, ..
        } = conn;
        let (will_due, expiry_now) = match &result {
            Ok(End::Disconnect {
                with_will,
                session_expiry,
            }) => (*with_will, *session_expiry),
            Ok(End::Shutdown | End::Park) => (false, None),
            Ok(End::Closed) | Err(_) => (true, None),
        };
        let left = self.detach(&peer.client_id, &session, id, expiry_now);
        if will_due
            && let Some(will) = life.will
            && let Some((generation, expiry)) = left
        {
            self.will_due(*will, peer, session, generation, expiry);
        }
        result.map(|_| ())
    }

    /// The parker, made with the first connection that could use it.
    fn parker(&self) -> bool {
        self.inner
            .parker
            .get_or_init(|| {
                let alive: std::sync::Weak<dyn Send + Sync> = Arc::downgrade(&self.inner) as _;
                match (Parker::start(alive), tokio::runtime::Handle::try_current()) {
                    (Ok(p), Ok(handle)) => Some((p, handle)),
                    (Err(e), _) => {
                        tracing::warn!(error = %e, "idle connections cannot be parked: each keeps its task");
                        None
                    }
                    (_, Err(_)) => None,
                }
            })
            .is_some()
    }

    /// Gives the connection its session: the one the client had, unless it asked for a
    /// clean start, or a new one. A connection the session had is kicked off. Returns
    /// the session and whether it was there before; `None` when a new session would be
    /// one more than [`Limits::max_sessions`].
    fn attach(
        &self,
        client_id: &Arc<str>,
        clean_start: bool,
        link: Link,
        principal: Option<Arc<str>>,
        expiry: u32,
    ) -> Option<(Arc<Mutex<Session>>, bool)> {
        let mut sessions = lock(&self.inner.sessions);
        let existing = sessions.get(client_id).cloned();
        if existing.is_none() && sessions.len() >= self.inner.limits.max_sessions {
            return None;
        }
        if let Some(old) = &existing {
            let mut s = lock(old);
            // MQTT 3.1.1 §3.1.4: a second connection with the same client id takes over.
            if let Some(l) = s.link.take() {
                l.signals.end(EndSignal::Kicked);
            }
            if clean_start {
                self.end_session(&mut s);
            }
        }
        let (session, present) = match existing {
            Some(s) if !clean_start => (s, true),
            _ => {
                let s = Arc::new(Mutex::new(Session::new(client_id.clone())));
                sessions.insert(client_id.clone(), s.clone());
                (s, false)
            }
        };
        {
            let mut s = lock(&session);
            s.link = Some(link);
            s.generation = s.generation.wrapping_add(1);
            s.principal = principal;
            if expiry > 0 || s.expiry > 0 {
                self.inner.sessions_dirty.store(true, Ordering::Release);
            }
            s.expiry = expiry;
        }
        self.inner
            .metrics
            .broker_sessions
            .set(sessions.len() as i64);
        Some((session, present))
    }

    /// Lets go of the session when connection `conn` ends (unless another connection
    /// took it over): it ends now if its expiry is 0, or is set to end after its expiry.
    /// Returns its generation and expiry when the session was this connection's.
    fn detach(
        &self,
        client_id: &Arc<str>,
        session: &Arc<Mutex<Session>>,
        conn: ConnId,
        new_expiry: Option<u32>,
    ) -> Option<(u32, u32)> {
        let mut sessions = lock(&self.inner.sessions);
        let mut s = lock(session);
        if s.link.as_ref().map(|l| l.conn) != Some(conn) {
            return None;
        }
        s.link = None;
        if let Some(e) = new_expiry {
            if s.expiry > 0 || e > 0 {
                self.inner.sessions_dirty.store(true, Ordering::Release);
            }
            s.expiry = if e >= FOREVER_SECS { u32::MAX } else { e };
        }
        let left = (s.generation, s.expiry);
        if s.expiry == 0 {
            self.end_session(&mut s);
            if sessions
                .get(client_id)
                .is_some_and(|x| Arc::ptr_eq(x, session))
            {
                sessions.remove(client_id);
            }
        } else {
            self.expire_later(client_id, session, s.generation, s.expiry);
        }
        self.inner
            .metrics
            .broker_sessions
            .set(sessions.len() as i64);
        Some(left)
    }

    /// Sets the session to end after `expiry` seconds unless its client comes back.
    fn expire_later(
        &self,
        client_id: &Arc<str>,
        session: &Arc<Mutex<Session>>,
        generation: u32,
        expiry: u32,
    ) {
        if expiry == u32::MAX {
            return;
        }
        let broker = self.clone();
        let (client_id, session) = (client_id.clone(), session.clone());
        let after = Duration::from_secs(u64::from(expiry));
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            broker.expire(&client_id, &session, generation);
        });
    }

    /// Ends a session whose client has stayed away past its expiry.
    fn expire(&self, client_id: &Arc<str>, session: &Arc<Mutex<Session>>, generation: u32) {
        let mut sessions = lock(&self.inner.sessions);
        if !sessions
            .get(client_id)
            .is_some_and(|x| Arc::ptr_eq(x, session))
        {
            return;
        }
        let mut s = lock(session);
        if s.link.is_some() || s.generation != generation {
            return;
        }
        self.end_session(&mut s);
        sessions.remove(client_id);
        self.inner
            .metrics
            .broker_sessions
            .set(sessions.len() as i64);
    }

    /// Forgets a session's subscriptions, queue and messages in flight.
    fn end_session(&self, s: &mut Session) {
        self.changed(s);
        {
            let mut subs = self.trie_mut();
            for (filter, _) in std::mem::take(&mut s.subscriptions) {
                let (group, inner) = match shared(&filter) {
                    Ok(Some((g, f))) => (Some(Arc::from(g)), f.to_owned()),
                    _ => (None, filter.to_string()),
                };
                subs.remove(
                    &inner,
                    &Sub {
                        client: s.client_id.clone(),
                        filter: filter.clone(),
                        group,
                        opts: SubOptions {
                            qos: 0,
                            no_local: false,
                            retain_as_published: false,
                            id: None,
                        },
                    },
                );
            }
        }
        s.clear(&self.inner.metrics.broker_queued_bytes);
    }

    /// The client went away without DISCONNECT (or asked for its will): publishes its
    /// will now, or after its will delay unless the session is resumed meanwhile (MQTT 5:
    /// at the latest when the session ends).
    fn will_due(
        &self,
        will: Will,
        peer: Peer,
        session: Arc<Mutex<Session>>,
        generation: u32,
        expiry: u32,
    ) {
        let broker = self.clone();
        let delay = will.delay.min(expiry);
        tokio::spawn(async move {
            if delay > 0 {
                tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
                let resumed = {
                    let s = lock(&session);
                    s.generation != generation
                };
                if resumed {
                    return;
                }
            }
            if let Err(e) = broker.publish_will(&will, &peer).await {
                tracing::debug!(client_id = %peer.client_id, error = %e, "will not published");
            }
        });
    }

    async fn publish_will(&self, will: &Will, peer: &Peer) -> Result<(), String> {
        if validate_topic(&will.topic).is_err() {
            return Err(format!("invalid will topic '{}'", will.topic));
        }
        if let Some(acl) = &self.inner.access.acl
            && !acl.allows(
                peer.principal.as_deref(),
                &peer.client_id,
                Want::Write,
                &will.topic,
            )
        {
            self.dropped("not_authorized");
            return Err("the ACL does not let the client write its will topic".to_owned());
        }
        let m = Incoming {
            topic: &will.topic,
            payload: will.payload.clone(),
            qos: will.qos,
            retain: will.retain,
            properties: will.properties.clone(),
            expires_at: expires_at(will.expiry),
            publisher: Some(&peer.client_id),
        };
        self.accept_publish(peer, &m, Ack::default()).await
    }

    /// Serves one connected client until it goes, is let go, weir stops, or it is idle
    /// and may be parked (not before `park_at`).
    async fn serve_conn(
        &self,
        c: &mut Conn,
        life: &mut Life,
        mut park_at: Instant,
    ) -> Result<End, String> {
        loop {
            let parkable = c.parkable
                && c.acks.as_ref().is_none_or(|a| a.is_empty())
                && c.wire.is_quiet()
                && self.parker();
            let timer = if parkable {
                life.deadline.min(park_at)
            } else {
                life.deadline
            };
            tokio::select! {
                biased;
                _ = life.cancel.cancelled() => {
                    Box::pin(c.disconnect(Reason::ServerShuttingDown)).await;
                    return Ok(End::Shutdown);
                }
                _ = c.signals.wake.notified() => {
                    c.signals.take_pending();
                    match c.signals.ended() {
                        Some(EndSignal::Kicked) => {
                            Box::pin(c.disconnect(Reason::SessionTakenOver)).await;
                            return Err("taken over by a new connection with the same client id".to_owned());
                        }
                        Some(EndSignal::Slow) => return Err(format!(
                            "a slow subscriber: more than {} bytes or {} messages waited for it",
                            self.inner.limits.max_queued_bytes, session::MAX_QUEUED_MESSAGES
                        )),
                        None => {}
                    }
                    for pkid in c.signals.take_acked() {
                        Box::pin(c.acknowledged(pkid)).await?;
                    }
                    Box::pin(self.flush(c)).await?;
                }
                incoming = c.wire.recv() => {
                    let packet = match incoming {
                        None => return Ok(End::Closed),
                        Some(Err(e)) => {
                            if e.contains("has been exceeded by packet") {
                                Box::pin(c.disconnect(Reason::PacketTooLarge)).await;
                            } else {
                                Box::pin(c.disconnect(Reason::MalformedPacket)).await;
                            }
                            return Err(e);
                        }
                        Some(Ok(p)) => p,
                    };
                    let now = Instant::now();
                    life.deadline = now + Duration::from_millis(u64::from(life.idle_ms));
                    park_at = now + PARK_AFTER;
                    // Boxed, as are the flushes: the task then holds, while the client is
                    // idle, only what waiting takes, not room for the largest handling.
                    if let Some(end) = Box::pin(self.handle(c, packet)).await? {
                        return Ok(end);
                    }
                }
                _ = tokio::time::sleep_until(timer.into()) => {
                    if Instant::now() >= life.deadline {
                        Box::pin(c.disconnect(Reason::KeepAliveTimeout)).await;
                        return Err("keep-alive timeout".to_owned());
                    }
                    // Quiet still: the read just polled may have taken part of a packet.
                    if parkable && c.wire.is_quiet() {
                        return Ok(End::Park);
                    }
                }
            }
        }
    }

    /// Handles one packet from the client; `Some` when it ends the connection.
    async fn handle(&self, c: &mut Conn, packet: Inbound) -> Result<Option<End>, String> {
        match packet {
            Inbound::Publish(p) => self.incoming_publish(c, p).await?,
            Inbound::PubAck(pkid) => {
                lock(&c.session).acked(pkid, &self.inner.metrics.broker_queued_bytes);
                self.flush(c).await?;
            }
            Inbound::PubRec(pkid) => {
                if lock(&c.session).received(pkid, &self.inner.metrics.broker_queued_bytes) {
                    send(&mut c.wire, Outbound::PubRel(pkid)).await?;
                }
            }
            Inbound::PubRel(pkid) => {
                lock(&c.session).released(pkid);
                send(&mut c.wire, Outbound::PubComp(pkid)).await?;
            }
            Inbound::PubComp(pkid) => {
                lock(&c.session).completed(pkid);
                self.flush(c).await?;
            }
            Inbound::Subscribe { pkid, filters, id } => {
                // Boxed: rare, and the connection's future need not keep room for it.
                Box::pin(self.subscribe(c, pkid, filters, id)).await?;
            }
            Inbound::Unsubscribe { pkid, filters } => {
                {
                    let mut s = lock(&c.session);
                    let mut subs = self.trie_mut();
                    self.changed(&s);
                    for f in &filters {
                        if let Some((full, opts)) = s.subscriptions.remove_entry(f.as_str()) {
                            let (group, inner) = match shared(f) {
                                Ok(Some((g, inner))) => (Some(Arc::from(g)), inner),
                                _ => (None, f.as_str()),
                            };
                            subs.remove(
                                inner,
                                &Sub {
                                    client: c.peer.client_id.clone(),
                                    filter: full,
                                    group,
                                    opts,
                                },
                            );
                        }
                    }
                }
                send(
                    &mut c.wire,
                    Outbound::UnsubAck {
                        pkid,
                        count: filters.len(),
                    },
                )
                .await?;
            }
            Inbound::PingReq => {
                send(&mut c.wire, Outbound::PingResp).await?;
            }
            Inbound::Disconnect {
                with_will,
                session_expiry,
            } => {
                return Ok(Some(End::Disconnect {
                    with_will,
                    session_expiry,
                }));
            }
        }
        Ok(None)
    }

    async fn incoming_publish(&self, c: &mut Conn, p: wire::Publish) -> Result<(), String> {
        // MQTT 5 topic aliases: an alias with a topic sets it; an alias alone uses it.
        let topic = match p.alias {
            None => p.topic,
            Some(a) if a == 0 || a > TOPIC_ALIAS_MAX => {
                c.refuse(Reason::TopicAliasInvalid).await;
                return Err(format!(
                    "topic alias {a} is not from 1 to {TOPIC_ALIAS_MAX}"
                ));
            }
            Some(a) if p.topic.is_empty() => {
                match c.aliases.as_ref().and_then(|x| x.inbound.get(&a)) {
                    Some(t) => t.clone(),
                    None => {
                        c.refuse(Reason::ProtocolError).await;
                        return Err(format!("topic alias {a} was never set"));
                    }
                }
            }
            Some(a) => {
                c.aliases
                    .get_or_insert_with(Box::default)
                    .inbound
                    .insert(a, p.topic.clone());
                p.topic
            }
        };
        if validate_topic(&topic).is_err() {
            c.disconnect(Reason::TopicNameInvalid).await;
            return Err(format!("invalid topic name '{topic}'"));
        }
        if p.qos > 0 && c.v5 {
            let unacknowledged = c.acks.as_ref().map_or(0, |a| a.len())
                + lock(&c.session).queued().incoming_qos2.len();
            if unacknowledged >= usize::from(RECEIVE_MAX) {
                c.refuse(Reason::ReceiveMaximumExceeded).await;
                return Err(format!(
                    "more than {RECEIVE_MAX} QoS 1 and 2 messages unacknowledged"
                ));
            }
        }
        if let Some(acl) = &self.inner.access.acl
            && !acl.allows(
                c.peer.principal.as_deref(),
                &c.peer.client_id,
                Want::Write,
                &topic,
            )
        {
            self.dropped("not_authorized");
            tracing::debug!(client_id = %c.peer.client_id, topic, "mqtt publish refused by the ACL");
            match p.qos {
                0 => {}
                1 => {
                    send(&mut c.wire, Outbound::PubAckDenied(p.pkid)).await?;
                }
                _ => {
                    send(&mut c.wire, Outbound::PubRecDenied(p.pkid)).await?;
                }
            }
            return Ok(());
        }
        // A QoS 1 or 2 message whose acknowledgement is still to come is not taken twice;
        // a QoS 2 message already taken (and not released) is acknowledged again.
        if p.qos > 0
            && c.acks
                .as_ref()
                .is_some_and(|a| a.iter().any(|(id, _, _)| *id == p.pkid))
        {
            return Ok(());
        }
        if p.qos == 2 && !insert_new(&mut lock(&c.session).queues().incoming_qos2, p.pkid) {
            send(&mut c.wire, Outbound::PubRec(p.pkid)).await?;
            return Ok(());
        }
        let ack = if p.qos > 0 {
            c.acks
                .get_or_insert_default()
                .push_back((p.pkid, p.qos, false));
            let signals = c.signals.clone();
            let pkid = p.pkid;
            Ack::on_drop(move || signals.acked(pkid))
        } else {
            Ack::default()
        };
        let m = Incoming {
            topic: &topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties,
            expires_at: expires_at(p.expiry),
            publisher: Some(&c.peer.client_id),
        };
        self.accept_publish(&c.peer, &m, ack).await
    }

    async fn subscribe(
        &self,
        c: &mut Conn,
        pkid: u16,
        filters: Vec<wire::SubRequest>,
        id: Option<u32>,
    ) -> Result<(), String> {
        let max_subscriptions = self.inner.limits.max_subscriptions;
        let mut granted = Vec::with_capacity(filters.len());
        // Filters that get the retained messages they match, once the SUBACK is out.
        let mut retained_for = Vec::new();
        for req in filters {
            let split = shared(&req.filter);
            let inner = match split {
                Ok(Some((_, f))) => f,
                _ => req.filter.as_str(),
            };
            let refusal = {
                let s = lock(&c.session);
                let full = s.subscriptions.len() >= max_subscriptions
                    && !s.subscriptions.contains_key(req.filter.as_str());
                if split.is_err() || validate_filter(inner).is_err() {
                    Some(SubRefusal::Invalid)
                } else if full {
                    Some(SubRefusal::Quota)
                } else if self.inner.access.acl.as_ref().is_some_and(|acl| {
                    !acl.allows(
                        c.peer.principal.as_deref(),
                        &c.peer.client_id,
                        Want::Subscribe,
                        inner,
                    )
                }) {
                    Some(SubRefusal::NotAuthorized)
                } else {
                    None
                }
            };
            if let Some(refusal) = refusal {
                self.inner
                    .metrics
                    .broker_subscriptions_refused
                    .with_label_values(&[match refusal {
                        SubRefusal::Invalid => "invalid",
                        SubRefusal::Quota => "max_subscriptions",
                        SubRefusal::NotAuthorized => "not_authorized",
                    }])
                    .inc();
                granted.push(Err(refusal));
                continue;
            }
            let opts = SubOptions {
                qos: req.qos.min(2),
                no_local: req.no_local,
                retain_as_published: req.retain_as_published,
                id,
            };
            let full: Arc<str> = Arc::from(req.filter.as_str());
            let group = match split {
                Ok(Some((g, _))) => Some(Arc::from(g)),
                _ => None,
            };
            let existed = {
                let mut s = lock(&c.session);
                let existed = s.subscriptions.insert(full.clone(), opts).is_some();
                self.changed(&s);
                let mut subs = self.trie_mut();
                let sub = Sub {
                    client: c.peer.client_id.clone(),
                    filter: full,
                    group: group.clone(),
                    opts,
                };
                // Subscribing again replaces the options.
                subs.remove(inner, &sub);
                subs.insert(inner, sub);
                existed
            };
            let wants_retained = match req.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
            // Shared subscriptions get no retained messages (MQTT 5 §4.8.2).
            if wants_retained && group.is_none() {
                retained_for.push((inner.to_owned(), opts));
            }
            granted.push(Ok(opts.qos));
        }
        send(&mut c.wire, Outbound::SubAck { pkid, granted }).await?;
        for (filter, opts) in retained_for {
            let matching = lock(&self.inner.retained).matching(&filter);
            for (topic, r) in matching {
                let d = Delivery {
                    topic,
                    payload: r.payload,
                    qos: r.qos.min(opts.qos),
                    retain: true,
                    properties: r.properties,
                    expires_at: r.expires_at,
                    subscription_ids: opts.id.into_iter().collect(),
                };
                self.offer(&c.session, d);
            }
        }
        Ok(())
    }

    /// Sends again what was in flight when the client last went away: PUBLISH marked DUP,
    /// or PUBREL.
    async fn resend_in_flight(&self, c: &mut Conn) -> Result<(), String> {
        let again: Vec<(u16, Option<Delivery>)> = lock(&c.session)
            .queued()
            .inflight
            .iter()
            .map(|(pkid, f)| {
                (
                    *pkid,
                    match f {
                        Flight::Sent(d) => Some(d.clone()),
                        Flight::Released => None,
                    },
                )
            })
            .collect();
        for (pkid, d) in again {
            match d {
                Some(d) => {
                    c.publish(pkid, &d, true, self).await?;
                }
                None => {
                    send(&mut c.wire, Outbound::PubRel(pkid)).await?;
                }
            }
        }
        Ok(())
    }

    /// Sends what the session has queued, as far as the client's receive maximum allows.
    async fn flush(&self, c: &mut Conn) -> Result<(), String> {
        let total = &self.inner.metrics.broker_queued_bytes;
        let (batch, expired) = lock(&c.session).take_sendable(c.id, c.quota, total);
        for _ in 0..expired {
            self.dropped("expired");
        }
        for (pkid, d) in batch {
            c.publish(pkid, &d, false, self).await?;
        }
        // More may have come meanwhile; the wake-up is remembered if so.
        Ok(())
    }

    /// Loads what an earlier run saved in `dir` (persistent sessions, retained messages,
    /// and, after a clean stop, the messages queued for the sessions), and from then on
    /// saves sessions and retained messages there as they change, until `cancel`.
    pub fn open_store(&self, dir: PathBuf, cancel: CancellationToken) {
        let store = Store::new(dir);
        let mut corrupt = 0;
        let sessions: Vec<SavedSession> = store
            .read("sessions.json", &mut corrupt)
            .unwrap_or_default();
        let retained: Vec<SavedMessage> = store
            .read("retained.json", &mut corrupt)
            .unwrap_or_default();
        let queues: Vec<SavedQueue> = store.read("queues.json", &mut corrupt).unwrap_or_default();
        store.remove("queues.json");
        self.inner.metrics.broker_state_corrupt.inc_by(corrupt);
        let max_sessions = self.inner.limits.max_sessions;
        if sessions.len() > max_sessions {
            tracing::warn!(
                saved = sessions.len(),
                max = max_sessions,
                "more sessions were saved than --mqtt-max-sessions allows: the rest are dropped"
            );
        }
        let (restored, kept) = (sessions.len().min(max_sessions), retained.len());
        {
            let mut map = lock(&self.inner.sessions);
            let mut subs = self.trie_mut();
            for saved in sessions.into_iter().take(max_sessions) {
                let client: Arc<str> = Arc::from(saved.client_id.as_str());
                let mut s = Session::new(client.clone());
                s.expiry = saved.expiry;
                for sub in saved.subscriptions {
                    let opts = sub.options();
                    let full: Arc<str> = Arc::from(sub.filter.as_str());
                    let (group, inner) = match shared(&sub.filter) {
                        Ok(Some((g, f))) => (Some(Arc::from(g)), f.to_owned()),
                        Ok(None) => (None, sub.filter.clone()),
                        Err(()) => continue,
                    };
                    if validate_filter(&inner).is_err() {
                        continue;
                    }
                    s.subscriptions.insert(full.clone(), opts);
                    subs.insert(
                        &inner,
                        Sub {
                            client: client.clone(),
                            filter: full,
                            group,
                            opts,
                        },
                    );
                }
                let session = Arc::new(Mutex::new(s));
                // The client has the whole of its expiry from this start to come back.
                self.expire_later(&client, &session, 0, saved.expiry);
                map.insert(client, session);
            }
            self.inner.metrics.broker_sessions.set(map.len() as i64);
            let total = &self.inner.metrics.broker_queued_bytes;
            for q in queues {
                let Some(session) = map.get(q.client_id.as_str()) else {
                    continue;
                };
                let mut s = lock(session);
                for (pkid, m) in q.inflight {
                    s.restore_in_flight(pkid, m.and_then(SavedMessage::into_delivery), total);
                }
                for m in q
                    .pending
                    .into_iter()
                    .filter_map(SavedMessage::into_delivery)
                {
                    // Within the same bounds as while running: a queues.json larger
                    // than them (edited, or from a run with larger limits) is cut.
                    let limits = &self.inner.limits;
                    if s.offer(
                        m,
                        limits.max_queued_bytes,
                        total,
                        limits.max_total_queued_bytes,
                    ) == Offered::Full
                    {
                        self.dropped("queue_full");
                    }
                }
            }
        }
        {
            let mut retained_store = lock(&self.inner.retained);
            for m in retained {
                if let Some((topic, r)) = m.into_retained() {
                    retained_store.set(&topic, r, self.inner.limits.max_retained_bytes);
                }
            }
            self.inner
                .metrics
                .broker_retained
                .set(retained_store.len() as i64);
        }
        if restored + kept > 0 {
            tracing::info!(
                sessions = restored,
                retained = kept,
                dir = %store.dir().display(),
                "the embedded broker's saved state is loaded"
            );
        }
        let _ = self.inner.store.set(store);
        let broker = self.clone();
        tokio::spawn(async move {
            let mut retained_saved = Instant::now();
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(store::AUTOSAVE) => {}
                }
                let b = broker.clone();
                let due = retained_saved.elapsed() >= store::RETAINED_AUTOSAVE;
                let wrote_retained = tokio::task::spawn_blocking(move || b.autosave(due))
                    .await
                    .unwrap_or(false);
                if wrote_retained {
                    retained_saved = Instant::now();
                }
            }
        });
    }

    /// Writes what changed; returns whether it wrote the retained messages.
    fn autosave(&self, retained_due: bool) -> bool {
        if self.inner.sessions_dirty.swap(false, Ordering::AcqRel) {
            self.save_sessions();
        }
        if retained_due && self.inner.retained_dirty.swap(false, Ordering::AcqRel) {
            self.save_retained();
            return true;
        }
        false
    }

    fn save_sessions(&self) {
        let Some(store) = self.inner.store.get() else {
            return;
        };
        let sessions: Vec<SavedSession> = lock(&self.inner.sessions)
            .values()
            .filter_map(|s| {
                let s = lock(s);
                (s.expiry > 0).then(|| SavedSession {
                    client_id: s.client_id.to_string(),
                    expiry: s.expiry,
                    subscriptions: s
                        .subscriptions
                        .iter()
                        .map(|(f, o)| SavedSub::new(f, o))
                        .collect(),
                })
            })
            .collect();
        if let Err(e) = store.write("sessions.json", &sessions) {
            self.inner.sessions_dirty.store(true, Ordering::Release);
            tracing::error!(error = %e, "cannot save the embedded broker's sessions");
        }
    }

    fn save_retained(&self) {
        let Some(store) = self.inner.store.get() else {
            return;
        };
        let retained: Vec<SavedMessage> = lock(&self.inner.retained)
            .all()
            .map(|(t, r)| SavedMessage::from_retained(t, r))
            .collect();
        if let Err(e) = store.write("retained.json", &retained) {
            self.inner.retained_dirty.store(true, Ordering::Release);
            tracing::error!(error = %e, "cannot save the embedded broker's retained messages");
        }
    }

    /// Saves everything, with the messages queued and in flight for each persistent
    /// session, once its clients are gone (weir stops). Waits up to `grace` for the
    /// connections to close first.
    pub async fn save(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while self.inner.metrics.broker_connections.get() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let Some(store) = self.inner.store.get().cloned() else {
            return;
        };
        let b = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            b.save_sessions();
            b.save_retained();
            let queues: Vec<SavedQueue> = lock(&b.inner.sessions)
                .values()
                .filter_map(|s| {
                    let s = lock(s);
                    (s.expiry > 0).then(|| s.saved_queue())
                })
                .filter(|q| !q.inflight.is_empty() || !q.pending.is_empty())
                .collect();
            if let Err(e) = store.write("queues.json", &queues) {
                tracing::error!(
                    error = %e,
                    "cannot save the messages queued for the embedded broker's sessions"
                );
            }
        })
        .await;
    }

    fn trie_mut(&self) -> std::sync::RwLockWriteGuard<'_, TopicTrie<Sub>> {
        self.inner
            .subscriptions
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A persistent session changed: it is saved soon.
    fn changed(&self, s: &Session) {
        if s.expiry > 0 {
            self.inner.sessions_dirty.store(true, Ordering::Release);
        }
    }

    fn refused(&self, reason: &str) {
        self.inner
            .metrics
            .broker_refused
            .with_label_values(&[reason])
            .inc();
    }

    fn dropped(&self, reason: &str) {
        self.inner
            .metrics
            .broker_dropped
            .with_label_values(&[reason])
            .inc();
    }
}

/// A client let in: its connection, and what its CONNACK and its end need.
struct Admitted {
    conn: Conn,
    will: Option<wire::Will>,
    keep_alive: u16,
    connack: Outbound<'static>,
}

/// One client's connection.
struct Conn {
    wire: Wire,
    v5: bool,
    id: ConnId,
    peer: Peer,
    session: Arc<Mutex<Session>>,
    signals: Arc<Signals>,
    /// The most QoS 1 and 2 messages sent to the client and not acknowledged.
    quota: u16,
    /// The most topic aliases the client takes.
    alias_max: u16,
    /// MQTT 5 topic aliases, made with the first one either way (most clients use none).
    aliases: Option<Box<Aliases>>,
    /// QoS 1 and 2 messages from the client, in the order received, each with whether
    /// the rules hold it yet: acknowledged in this order as they do. (Made with the
    /// first, dropped when the connection parks.) Boxed: 8 bytes in the parked state,
    /// where the empty list would be 32.
    #[allow(clippy::box_collection)]
    acks: Option<Box<VecDeque<(u16, u8, bool)>>>,
    /// A plain TCP connection, which may be parked when idle.
    parkable: bool,
}

/// Adds `pkid` unless the list has it; whether it was added.
fn insert_new(list: &mut Vec<u16>, pkid: u16) -> bool {
    if list.contains(&pkid) {
        return false;
    }
    list.push(pkid);
    true
}

/// A connection's MQTT 5 topic aliases.
#[derive(Default)]
struct Aliases {
    /// Those the broker set, by topic.
    out: HashMap<Arc<str>, u16>,
    /// Those the client set.
    inbound: HashMap<u16, String>,
}

/// What serving a connection needs besides the connection, kept while it is parked.
struct Life {
    will: Option<Box<Will>>,
    /// The silence after which the client is let go (1.5 keep-alive periods), in ms.
    idle_ms: u32,
    /// When that silence will have lasted.
    deadline: Instant,
    cancel: CancellationToken,
    /// Its place under `--mqtt-max-connections`.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// A parked connection: see `park.rs`.
struct Sleeper {
    broker: Broker,
    conn: Conn,
    life: Life,
}

impl park::Resumable for Sleeper {
    fn signals(&self) -> &Signals {
        &self.conn.signals
    }

    fn deadline(&self) -> Instant {
        self.life.deadline
    }

    fn stopping(&self) -> bool {
        self.life.cancel.is_cancelled()
    }

    fn fd(&self) -> std::os::fd::RawFd {
        self.conn.wire.parked_fd().unwrap_or(-1)
    }

    fn resume(self: Box<Self>) {
        let Some(Some((_, runtime))) = self.broker.inner.parker.get() else {
            return;
        };
        let runtime = runtime.clone();
        let Sleeper { broker, conn, life } = *self;
        runtime.spawn(broker.resume(conn, life));
    }
}

impl Conn {
    /// The rules hold message `pkid`: sends every acknowledgement now due, in order.
    async fn acknowledged(&mut self, pkid: u16) -> Result<(), String> {
        let Some(acks) = self.acks.as_deref_mut() else {
            return Ok(());
        };
        if let Some(e) = acks.iter_mut().find(|(id, _, done)| *id == pkid && !done) {
            e.2 = true;
        }
        while let Some(&(id, qos, true)) = acks.front() {
            acks.pop_front();
            let ack = if qos == 1 {
                Outbound::PubAck(id)
            } else {
                Outbound::PubRec(id)
            };
            send(&mut self.wire, ack).await?;
        }
        Ok(())
    }

    /// Sends one message, with a topic alias where the client takes them.
    async fn publish(
        &mut self,
        pkid: u16,
        d: &Delivery,
        dup: bool,
        broker: &Broker,
    ) -> Result<(), String> {
        let set = self.aliases.as_ref().map_or(0, |a| a.out.len());
        let (topic, alias, new_alias) =
            match self.aliases.as_ref().and_then(|a| a.out.get(&d.topic)) {
                Some(&a) => ("", Some(a), false),
                None if set < usize::from(self.alias_max) => {
                    let a = set as u16 + 1;
                    self.aliases
                        .get_or_insert_with(Box::default)
                        .out
                        .insert(d.topic.clone(), a);
                    (&*d.topic, Some(a), true)
                }
                None => (&*d.topic, None, false),
            };
        let expiry = d.expires_at.map(|t| {
            let left = t.saturating_duration_since(Instant::now());
            u32::try_from(left.as_secs() + u64::from(left.subsec_nanos() > 0))
                .unwrap_or(u32::MAX)
                .max(1)
        });
        let out = Outbound::Publish(OutPublish {
            topic,
            pkid,
            qos: d.qos,
            retain: d.retain,
            dup,
            payload: d.payload.clone(),
            properties: d.properties.as_deref(),
            alias,
            expiry,
            subscription_ids: &d.subscription_ids,
        });
        // A subscriber found too slow meanwhile is let go mid-write.
        let sent = tokio::select! {
            sent = send(&mut self.wire, out) => sent,
            _ = self.signals.ending() => return Err("let go while writing (a slow subscriber, or taken over)".to_owned()),
        };
        self.signals.rewake();
        let sent = sent?;
        if !sent {
            broker.dropped("too_large");
            if new_alias && let Some(a) = self.aliases.as_mut() {
                a.out.remove(&d.topic);
            }
            if pkid != 0 {
                lock(&self.session).unsendable(pkid, &broker.inner.metrics.broker_queued_bytes);
            }
        }
        Ok(())
    }

    /// Tells an MQTT 5 client which rule it broke, and reads (and drops) what it still
    /// sends for a moment before closing, so that it gets to read why instead of failing
    /// on a reset connection.
    async fn refuse(&mut self, reason: Reason) {
        self.disconnect(reason).await;
        if self.v5 {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(Ok(_)) = self.wire.recv().await {}
            })
            .await;
        }
    }

    /// Tells an MQTT 5 client why it is let go (best effort: it may not be reading).
    async fn disconnect(&mut self, reason: Reason) {
        if self.v5 {
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                self.wire.send(Outbound::Disconnect(reason)),
            )
            .await;
        }
    }
}

/// Sends a packet, giving the client [`WRITE_TIMEOUT`] to take it. A PUBLISH larger than
/// the client accepts is not sent (`Ok(false)`).
async fn send(wire: &mut Wire, packet: Outbound<'_>) -> Result<bool, String> {
    tokio::time::timeout(WRITE_TIMEOUT, wire.send(packet))
        .await
        .map_err(|_| format!("the client read nothing for {WRITE_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
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
