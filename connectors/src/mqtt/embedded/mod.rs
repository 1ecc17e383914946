//! The embedded MQTT broker: weir's zero-setup default, so devices can publish to weir
//! itself with no other server.
//!
//! It speaks MQTT 3.1.1 and MQTT 5 over TCP, whichever each client's CONNECT asks for (see
//! [`wire`]; the packet codecs are rumqttc's), and keeps what a rules engine's front
//! door needs: QoS 0, 1 and 2 in (QoS 2 exactly once per connection), QoS 0 and 1 out,
//! subscriptions with `+`/`#` wildcards so other clients can read what the rules
//! republish, keep-alive, client-id takeover, and a PUBLISH's MQTT 5 properties passed to
//! the rules and to MQTT 5 subscribers. Sessions are not persisted, retained messages are
//! not stored, and MQTT 5's topic aliases, shared subscriptions and subscription
//! identifiers are not offered: for those, point weir at a full broker with `--broker`.
//!
//! Clients authenticate against a password file and are confined by an ACL file, both in
//! Mosquitto's formats ([`access`]); a refused client never touches another's session.
//!
//! No client takes the broker down ([`Limits`]): packets, connections, subscriptions per
//! client and the bytes queued for each subscriber are bounded; a subscriber that falls
//! further behind, or does not read for [`WRITE_TIMEOUT`], is disconnected (and counted)
//! instead of holding memory; a client that stays silent past its keep-alive (or
//! [`IDLE_WITHOUT_KEEP_ALIVE`], when it asked for none) is disconnected.
//!
//! Every PUBLISH is handed to weir's pipeline with the publisher's client id (so
//! `clientid()` works) before it is acknowledged, and the hand-off waits when the pipeline
//! is full, which pushes back on the publishing client instead of growing memory.

pub mod access;
mod wire;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weir_engine::topic::{TopicTrie, validate_filter, validate_topic};
use weir_engine::{Message, MqttProperties, now_ms};

use self::access::{Access, Denied, Want};
use self::wire::{Inbound, Outbound, Refusal, SubRefusal, Wire};
use crate::mqtt::packets::qos_v4;

use crate::metrics::Metrics;

/// Largest packet the broker accepts, unless configured otherwise (`--mqtt-max-packet-size`).
pub const DEFAULT_MAX_PACKET: usize = 128 * 1024;
/// Outgoing messages queued per subscriber; one more disconnects it as too slow.
const SUBSCRIBER_QUEUE: usize = 4096;
/// How long a new connection has to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may leave a packet of ours unread before it is disconnected.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client that asked for no keep-alive (0) may stay silent.
pub const IDLE_WITHOUT_KEEP_ALIVE: Duration = Duration::from_secs(3600);

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
    /// The most bytes (topic and payload) queued for one subscriber
    /// (`--mqtt-max-queued-bytes`); a subscriber that falls further behind is
    /// disconnected.
    pub max_queued_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_packet: DEFAULT_MAX_PACKET,
            max_connections: 10_000,
            max_subscriptions: 100,
            max_queued_bytes: 16 * 1024 * 1024,
        }
    }
}

type ConnId = u64;

/// Who is on the other end of a connection, as rules see it.
struct Peer {
    client_id: String,
    /// The username the client proved with its password; `None` for anonymous clients.
    principal: Option<String>,
    source_ip: String,
}

struct Connection {
    client_id: String,
    /// As [`Peer::principal`], for the ACL's read checks.
    principal: Option<String>,
    tx: mpsc::Sender<Outgoing>,
    /// Bytes queued in `tx`, against [`Limits::max_queued_bytes`].
    queued: Arc<AtomicUsize>,
    /// Cancelled when another connection takes over this client id.
    kicked: CancellationToken,
    /// Cancelled when the client falls too far behind with what it subscribed to.
    slow: CancellationToken,
}

enum Outgoing {
    Publish {
        topic: Arc<str>,
        payload: Bytes,
        qos: QoS,
        /// The publisher's MQTT 5 properties, forwarded to MQTT 5 subscribers.
        properties: Option<Arc<MqttProperties>>,
    },
}

/// A handle to the embedded broker: publish into it from inside weir.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    subscriptions: RwLock<TopicTrie<(ConnId, u8)>>,
    connections: Mutex<HashMap<ConnId, Connection>>,
    next_id: AtomicU64,
    ingress: mpsc::Sender<Message>,
    metrics: Arc<Metrics>,
    limits: Limits,
    /// Permits for [`Limits::max_connections`].
    connection_permits: Arc<tokio::sync::Semaphore>,
    access: Access,
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
                connections: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                ingress,
                metrics,
                limits,
                connection_permits: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
                access,
            }),
        }
    }

    /// Accepts connections on `listener` until `cancel` fires.
    pub async fn serve(self, listener: TcpListener, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
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
                        tokio::spawn(async move {
                            if let Err(e) = broker.connection(stream, peer, cancel).await {
                                tracing::debug!(%peer, error = %e, "mqtt connection closed");
                            }
                            drop(permit);
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

    /// Delivers a message to the broker's subscribers (as a republish action does). It
    /// does not go back into weir's own pipeline. Returns how many subscribers got it.
    pub fn publish(&self, topic: &str, payload: Bytes, qos: QoS) -> usize {
        self.route(topic, payload, qos, None)
    }

    fn route(
        &self,
        topic: &str,
        payload: Bytes,
        qos: QoS,
        properties: Option<Arc<MqttProperties>>,
    ) -> usize {
        let mut targets: HashMap<ConnId, u8> = HashMap::new();
        {
            let subs = self
                .inner
                .subscriptions
                .read()
                .unwrap_or_else(|p| p.into_inner());
            subs.for_each_match(topic, |(conn, granted)| {
                let q = targets.entry(*conn).or_insert(0);
                *q = (*q).max(*granted);
            });
        }
        if targets.is_empty() {
            return 0;
        }
        let topic: Arc<str> = Arc::from(topic);
        let size = topic.len() + payload.len();
        let conns = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut delivered = 0;
        for (conn, granted) in targets {
            let Some(c) = conns.get(&conn) else { continue };
            if let Some(acl) = &self.inner.access.acl
                && !acl.allows(c.principal.as_deref(), &c.client_id, Want::Read, &topic)
            {
                self.dropped("not_authorized");
                continue;
            }
            let out = Outgoing::Publish {
                topic: topic.clone(),
                payload: payload.clone(),
                qos: if granted.min(qos as u8) >= 1 {
                    QoS::AtLeastOnce
                } else {
                    QoS::AtMostOnce
                },
                properties: properties.clone(),
            };
            let queued = c.queued.fetch_add(size, Ordering::AcqRel) + size;
            let fits = queued <= self.inner.limits.max_queued_bytes;
            match fits.then(|| c.tx.try_send(out)) {
                Some(Ok(())) => delivered += 1,
                _ => {
                    c.queued.fetch_sub(size, Ordering::AcqRel);
                    self.dropped("slow_subscriber");
                    // A subscriber this far behind will not catch up: let it go, and
                    // its queue with it.
                    if !c.slow.is_cancelled() {
                        c.slow.cancel();
                        self.inner.metrics.broker_slow.inc();
                    }
                }
            }
        }
        delivered
    }

    async fn connection(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        cancel: CancellationToken,
    ) -> Result<(), String> {
        let (mut wire, connect) =
            Wire::accept(stream, self.inner.limits.max_packet, CONNECT_TIMEOUT)
                .await
                .inspect_err(|e| {
                    if e.starts_with(wire::UNSUPPORTED_PROTOCOL) {
                        self.refused("protocol");
                    }
                })?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let principal = match self.inner.access.authenticate(
            connect.username.as_deref(),
            connect.password.as_deref().map(str::as_bytes),
        ) {
            Ok(principal) => principal,
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
                wire.refuse(match denied {
                    Denied::Anonymous => Refusal::NotAuthorized,
                    Denied::BadCredentials => Refusal::BadCredentials,
                })
                .await;
                return Err(format!("refused: {}", denied.reason()));
            }
        };
        let (client_id, assigned) = if connect.client_id.is_empty() {
            // MQTT 3.1.1 allows an empty id only with a clean session; MQTT 5 always, and
            // the CONNACK tells the client the id it got.
            if !connect.clean_start && !wire.is_v5() {
                self.refused("client_id");
                wire.refuse(Refusal::ClientId).await;
                return Err("empty client id needs a clean session".to_owned());
            }
            let assigned = format!("weir-anon-{id}");
            (assigned.clone(), wire.is_v5().then_some(assigned))
        } else {
            (connect.client_id.clone(), None)
        };
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let kicked = CancellationToken::new();
        let slow = CancellationToken::new();
        let queued = Arc::new(AtomicUsize::new(0));
        {
            let mut conns = self
                .inner
                .connections
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            // MQTT 3.1.1 §3.1.4: a second connection with the same client id takes over.
            let old: Vec<ConnId> = conns
                .iter()
                .filter(|(_, c)| c.client_id == client_id)
                .map(|(k, _)| *k)
                .collect();
            for k in old {
                if let Some(c) = conns.remove(&k) {
                    c.kicked.cancel();
                }
            }
            conns.insert(
                id,
                Connection {
                    client_id: client_id.clone(),
                    principal: principal.clone(),
                    tx,
                    queued: queued.clone(),
                    kicked: kicked.clone(),
                    slow: slow.clone(),
                },
            );
        }
        self.inner.metrics.broker_connections.inc();
        tracing::debug!(%peer, client_id, v5 = wire.is_v5(), "mqtt client connected");
        let mut filters = Vec::new();
        let peer = Peer {
            client_id: client_id.clone(),
            principal,
            source_ip: peer.ip().to_string(),
        };
        let result = async {
            send(
                &mut wire,
                Outbound::ConnAck {
                    assigned_client_id: assigned,
                },
            )
            .await?;
            let mut queue = Queue { rx, queued, slow };
            self.session(
                &mut wire,
                id,
                &peer,
                connect.keep_alive,
                &mut queue,
                &mut filters,
                &kicked,
                &cancel,
            )
            .await
        }
        .await;
        self.inner.metrics.broker_connections.dec();
        self.inner
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        self.drop_subscriptions(id, &filters);
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn session(
        &self,
        wire: &mut Wire,
        id: ConnId,
        peer: &Peer,
        keep_alive: u16,
        queue: &mut Queue,
        my_filters: &mut Vec<String>,
        kicked: &CancellationToken,
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        let (client_id, principal, source_ip) = (&peer.client_id, &peer.principal, &peer.source_ip);
        // MQTT 3.1.1 §3.1.2.10: close after 1.5 keep-alive periods of silence; a client
        // that asked for none gets an hour.
        let idle = if keep_alive == 0 {
            IDLE_WITHOUT_KEEP_ALIVE
        } else {
            Duration::from_millis(u64::from(keep_alive) * 1500)
        };
        let max_subscriptions = self.inner.limits.max_subscriptions;
        let mut next_pkid: u16 = 0;
        let mut qos2_inflight: HashSet<u16> = HashSet::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = kicked.cancelled() => return Err("taken over by a new connection with the same client id".to_owned()),
                _ = queue.slow.cancelled() => return Err(format!(
                    "a slow subscriber: more than {} bytes or {SUBSCRIBER_QUEUE} messages waited for it",
                    self.inner.limits.max_queued_bytes
                )),
                out = queue.rx.recv() => {
                    let Some(Outgoing::Publish { topic, payload, qos, properties }) = out else { return Ok(()) };
                    queue.queued.fetch_sub(topic.len() + payload.len(), Ordering::AcqRel);
                    let mut pkid = 0;
                    if qos != QoS::AtMostOnce {
                        next_pkid = next_pkid.checked_add(1).unwrap_or(1);
                        pkid = next_pkid;
                    }
                    let publish = Outbound::Publish {
                        topic: &topic,
                        pkid,
                        qos: qos as u8,
                        payload,
                        properties: properties.as_deref(),
                    };
                    // A subscriber found too slow meanwhile is let go mid-write.
                    let sent = tokio::select! {
                        sent = send(wire, publish) => sent?,
                        _ = queue.slow.cancelled() => return Err("a slow subscriber".to_owned()),
                    };
                    if !sent {
                        self.dropped("too_large");
                    }
                }
                incoming = tokio::time::timeout(idle, wire.recv()) => {
                    let packet = match incoming {
                        Err(_) => return Err("keep-alive timeout".to_owned()),
                        Ok(None) => return Ok(()),
                        Ok(Some(Err(e))) => return Err(e),
                        Ok(Some(Ok(p))) => p,
                    };
                    match packet {
                        Inbound::Publish { topic, pkid, qos, payload, properties } => {
                            if validate_topic(&topic).is_err() {
                                return Err(format!("invalid topic name '{topic}'"));
                            }
                            if let Some(acl) = &self.inner.access.acl
                                && !acl.allows(principal.as_deref(), client_id, Want::Write, &topic)
                            {
                                self.dropped("not_authorized");
                                tracing::debug!(client_id, topic, "mqtt publish refused by the ACL");
                                match qos {
                                    0 => {}
                                    1 => { send(wire, Outbound::PubAckDenied(pkid)).await?; }
                                    _ => { send(wire, Outbound::PubRecDenied(pkid)).await?; }
                                }
                                continue;
                            }
                            let fresh = match qos {
                                2 => qos2_inflight.insert(pkid),
                                _ => true,
                            };
                            if fresh {
                                self.inner.metrics.broker_received.inc();
                                let msg = Message {
                                    topic: topic.clone(),
                                    client_id: Some(client_id.to_owned()),
                                    principal: principal.clone(),
                                    source_ip: Some(source_ip.clone()),
                                    payload: payload.clone(),
                                    received_at_ms: now_ms(),
                                    seq: weir_engine::next_seq(),
                                    properties: properties.clone(),
                                    // Acknowledged on receipt, below.
                                    ack: Default::default(),
                                };
                                if self.inner.ingress.send(msg).await.is_err() {
                                    return Err("weir is shutting down".to_owned());
                                }
                                self.route(&topic, payload, qos_v4(qos), properties);
                            }
                            match qos {
                                0 => {}
                                1 => { send(wire, Outbound::PubAck(pkid)).await?; }
                                _ => { send(wire, Outbound::PubRec(pkid)).await?; }
                            }
                        }
                        Inbound::PubRel(pkid) => {
                            qos2_inflight.remove(&pkid);
                            send(wire, Outbound::PubComp(pkid)).await?;
                        }
                        Inbound::Subscribe { pkid, filters } => {
                            let mut granted_all = Vec::with_capacity(filters.len());
                            for (path, asked) in filters {
                                let full = my_filters.len() >= max_subscriptions && !my_filters.contains(&path);
                                let refusal = if validate_filter(&path).is_err() {
                                    Some(SubRefusal::Invalid)
                                } else if full {
                                    Some(SubRefusal::Quota)
                                } else if self.inner.access.acl.as_ref().is_some_and(|acl| {
                                    !acl.allows(principal.as_deref(), client_id, Want::Subscribe, &path)
                                }) {
                                    Some(SubRefusal::NotAuthorized)
                                } else {
                                    None
                                };
                                if let Some(refusal) = refusal {
                                    self.inner.metrics.broker_subscriptions_refused.with_label_values(&[match refusal {
                                        SubRefusal::Invalid => "invalid",
                                        SubRefusal::Quota => "max_subscriptions",
                                        SubRefusal::NotAuthorized => "not_authorized",
                                    }]).inc();
                                    granted_all.push(Err(refusal));
                                    continue;
                                }
                                let granted = asked.min(1);
                                let mut subs = self.inner.subscriptions.write().unwrap_or_else(|p| p.into_inner());
                                // Re-subscribing replaces the earlier subscription's QoS.
                                for q in 0..=1u8 {
                                    subs.remove(&path, &(id, q));
                                }
                                subs.insert(&path, (id, granted));
                                my_filters.retain(|x| x != &path);
                                my_filters.push(path);
                                granted_all.push(Ok(granted));
                            }
                            send(wire, Outbound::SubAck { pkid, granted: granted_all }).await?;
                        }
                        Inbound::Unsubscribe { pkid, filters } => {
                            {
                                let mut subs = self.inner.subscriptions.write().unwrap_or_else(|p| p.into_inner());
                                for f in &filters {
                                    for q in 0..=1u8 {
                                        subs.remove(f, &(id, q));
                                    }
                                    my_filters.retain(|x| x != f);
                                }
                            }
                            send(wire, Outbound::UnsubAck { pkid, count: filters.len() }).await?;
                        }
                        Inbound::PingReq => { send(wire, Outbound::PingResp).await?; }
                        Inbound::Disconnect => return Ok(()),
                        // Acknowledgements of what we sent: QoS 1 out is fire-and-forget here.
                        Inbound::Ack => {}
                    }
                }
            }
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

    fn drop_subscriptions(&self, id: ConnId, filters: &[String]) {
        let mut subs = self
            .inner
            .subscriptions
            .write()
            .unwrap_or_else(|p| p.into_inner());
        for f in filters {
            for q in 0..=1u8 {
                subs.remove(f, &(id, q));
            }
        }
    }
}

/// A connection's queue of outgoing messages, with the bytes it holds.
struct Queue {
    rx: mpsc::Receiver<Outgoing>,
    queued: Arc<AtomicUsize>,
    /// Cancelled when the queue would outgrow its bounds.
    slow: CancellationToken,
}

/// Sends a packet, giving the client [`WRITE_TIMEOUT`] to take it. A PUBLISH larger than
/// the client accepts is not sent (`Ok(false)`).
async fn send(wire: &mut Wire, packet: Outbound<'_>) -> Result<bool, String> {
    tokio::time::timeout(WRITE_TIMEOUT, wire.send(packet))
        .await
        .map_err(|_| format!("the client read nothing for {WRITE_TIMEOUT:?}"))?
}
