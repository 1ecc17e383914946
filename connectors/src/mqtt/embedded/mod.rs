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
//! Every PUBLISH is handed to weir's pipeline with the publisher's client id (so
//! `clientid()` works) before it is acknowledged, and the hand-off waits when the pipeline
//! is full, which pushes back on the publishing client instead of growing memory.

mod wire;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weir_engine::topic::{TopicTrie, validate_filter, validate_topic};
use weir_engine::{Message, MqttProperties, now_ms};

use self::wire::{Inbound, Outbound, Refusal, Wire};
use crate::mqtt::packets::qos_v4;

use crate::metrics::Metrics;

/// Largest packet the broker accepts, unless configured otherwise (`--mqtt-max-packet-size`).
pub const DEFAULT_MAX_PACKET: usize = 128 * 1024;
/// Outgoing messages queued per subscriber before further ones are dropped (and counted).
const SUBSCRIBER_QUEUE: usize = 4096;
/// How long a new connection has to send CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type ConnId = u64;

/// Who is on the other end of a connection, as rules see it.
struct Peer {
    client_id: String,
    /// The MQTT username, if the client sent one.
    principal: Option<String>,
    source_ip: String,
}

struct Connection {
    client_id: String,
    tx: mpsc::Sender<Outgoing>,
    /// Cancelled when another connection takes over this client id.
    kicked: CancellationToken,
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
    /// The largest packet a client may send (a larger one closes its connection), told to
    /// MQTT 5 clients in the CONNACK.
    max_packet: usize,
}

impl Broker {
    /// A broker that hands every PUBLISH it receives to `ingress`.
    pub fn new(ingress: mpsc::Sender<Message>, metrics: Arc<Metrics>) -> Self {
        Self::with_max_packet(ingress, metrics, DEFAULT_MAX_PACKET)
    }

    /// [`Broker::new`], taking packets of at most `max_packet` bytes.
    pub fn with_max_packet(
        ingress: mpsc::Sender<Message>,
        metrics: Arc<Metrics>,
        max_packet: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                subscriptions: RwLock::new(TopicTrie::new()),
                connections: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                ingress,
                metrics,
                max_packet,
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
                        let _ = stream.set_nodelay(true);
                        let broker = self.clone();
                        let cancel = cancel.clone();
                        tokio::spawn(async move {
                            if let Err(e) = broker.connection(stream, peer, cancel).await {
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
        let conns = self
            .inner
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut delivered = 0;
        for (conn, granted) in targets {
            let Some(c) = conns.get(&conn) else { continue };
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
            match c.tx.try_send(out) {
                Ok(()) => delivered += 1,
                Err(_) => self.inner.metrics.broker_dropped.inc(),
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
            Wire::accept(stream, self.inner.max_packet, CONNECT_TIMEOUT).await?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (client_id, assigned) = if connect.client_id.is_empty() {
            // MQTT 3.1.1 allows an empty id only with a clean session; MQTT 5 always, and
            // the CONNACK tells the client the id it got.
            if !connect.clean_start && !wire.is_v5() {
                wire.refuse(Refusal::ClientId).await;
                return Err("empty client id needs a clean session".to_owned());
            }
            let assigned = format!("weir-anon-{id}");
            (assigned.clone(), wire.is_v5().then_some(assigned))
        } else {
            (connect.client_id.clone(), None)
        };
        let (tx, mut rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let kicked = CancellationToken::new();
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
                    tx,
                    kicked: kicked.clone(),
                },
            );
        }
        self.inner.metrics.broker_connections.inc();
        tracing::debug!(%peer, client_id, v5 = wire.is_v5(), "mqtt client connected");
        let mut filters = Vec::new();
        let peer = Peer {
            client_id: client_id.clone(),
            principal: connect.username.clone(),
            source_ip: peer.ip().to_string(),
        };
        let result = async {
            wire.send(Outbound::ConnAck {
                assigned_client_id: assigned,
            })
            .await?;
            self.session(
                &mut wire,
                id,
                &peer,
                connect.keep_alive,
                &mut rx,
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
        rx: &mut mpsc::Receiver<Outgoing>,
        my_filters: &mut Vec<String>,
        kicked: &CancellationToken,
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        let (client_id, principal, source_ip) = (&peer.client_id, &peer.principal, &peer.source_ip);
        // MQTT 3.1.1 §3.1.2.10: close after 1.5 keep-alive periods of silence.
        let idle = if keep_alive == 0 {
            Duration::from_secs(u64::MAX / 4)
        } else {
            Duration::from_millis(u64::from(keep_alive) * 1500)
        };
        let mut next_pkid: u16 = 0;
        let mut qos2_inflight: HashSet<u16> = HashSet::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = kicked.cancelled() => return Err("taken over by a new connection with the same client id".to_owned()),
                out = rx.recv() => {
                    let Some(Outgoing::Publish { topic, payload, qos, properties }) = out else { return Ok(()) };
                    let mut pkid = 0;
                    if qos != QoS::AtMostOnce {
                        next_pkid = next_pkid.checked_add(1).unwrap_or(1);
                        pkid = next_pkid;
                    }
                    let sent = wire.send(Outbound::Publish {
                        topic: &topic,
                        pkid,
                        qos: qos as u8,
                        payload,
                        properties: properties.as_deref(),
                    }).await?;
                    if !sent {
                        self.inner.metrics.broker_dropped.inc();
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
                                1 => { wire.send(Outbound::PubAck(pkid)).await?; }
                                _ => { wire.send(Outbound::PubRec(pkid)).await?; }
                            }
                        }
                        Inbound::PubRel(pkid) => {
                            qos2_inflight.remove(&pkid);
                            wire.send(Outbound::PubComp(pkid)).await?;
                        }
                        Inbound::Subscribe { pkid, filters } => {
                            let mut granted_all = Vec::with_capacity(filters.len());
                            for (path, asked) in filters {
                                if validate_filter(&path).is_err() {
                                    granted_all.push(None);
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
                                granted_all.push(Some(granted));
                            }
                            wire.send(Outbound::SubAck { pkid, granted: granted_all }).await?;
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
                            wire.send(Outbound::UnsubAck { pkid, count: filters.len() }).await?;
                        }
                        Inbound::PingReq => { wire.send(Outbound::PingResp).await?; }
                        Inbound::Disconnect => return Ok(()),
                        // Acknowledgements of what we sent: QoS 1 out is fire-and-forget here.
                        Inbound::Ack => {}
                    }
                }
            }
        }
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
