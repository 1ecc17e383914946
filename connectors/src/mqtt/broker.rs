//! The embedded MQTT broker: weir's zero-setup default, so devices can publish to weir
//! itself with no other server.
//!
//! It speaks MQTT 3.1.1 over TCP (the packet codec is rumqttc's) and keeps what a rules
//! engine's front door needs: QoS 0, 1 and 2 in (QoS 2 exactly once per connection), QoS 0
//! and 1 out, subscriptions with `+`/`#` wildcards so other clients can read what the rules
//! republish, keep-alive, and client-id takeover. Sessions are not persisted and retained
//! messages are not stored: for those, point weir at a full broker with `--broker`.
//!
//! Every PUBLISH is handed to weir's pipeline with the publisher's client id (so
//! `clientid()` works) before it is acknowledged, and the hand-off waits when the pipeline
//! is full, which pushes back on the publishing client instead of growing memory.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    Codec, ConnAck, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, Publish, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use weir_engine::topic::{TopicTrie, validate_filter, validate_topic};
use weir_engine::{Message, now_ms};

use crate::metrics::Metrics;

/// Largest packet the broker accepts or sends.
const MAX_PACKET: usize = 1024 * 1024;
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
}

impl Broker {
    /// A broker that hands every PUBLISH it receives to `ingress`.
    pub fn new(ingress: mpsc::Sender<Message>, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                subscriptions: RwLock::new(TopicTrie::new()),
                connections: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                ingress,
                metrics,
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
        self.route(topic, payload, qos)
    }

    fn route(&self, topic: &str, payload: Bytes, qos: QoS) -> usize {
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
        use futures_util::{SinkExt, StreamExt};
        let mut framed = Framed::new(
            stream,
            Codec {
                max_incoming_size: MAX_PACKET,
                max_outgoing_size: MAX_PACKET,
            },
        );
        let connect = match tokio::time::timeout(CONNECT_TIMEOUT, framed.next()).await {
            Ok(Some(Ok(Packet::Connect(c)))) => c,
            Ok(Some(Ok(other))) => return Err(format!("expected CONNECT, got {other:?}")),
            Ok(Some(Err(e))) => {
                // An MQTT 5 or 3.1 client: say which protocol this broker speaks.
                if matches!(e, rumqttc::mqttbytes::Error::InvalidProtocolLevel(_)) {
                    let _ = framed
                        .send(Packet::ConnAck(ConnAck::new(
                            ConnectReturnCode::RefusedProtocolVersion,
                            false,
                        )))
                        .await;
                }
                return Err(format!("bad CONNECT: {e}"));
            }
            Ok(None) => return Err("closed before CONNECT".to_owned()),
            Err(_) => return Err("no CONNECT within 10s".to_owned()),
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let client_id = if connect.client_id.is_empty() {
            if !connect.clean_session {
                let _ = framed
                    .send(Packet::ConnAck(ConnAck::new(
                        ConnectReturnCode::BadClientId,
                        false,
                    )))
                    .await;
                return Err("empty client id needs a clean session".to_owned());
            }
            format!("weir-anon-{id}")
        } else {
            connect.client_id.clone()
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
        tracing::debug!(%peer, client_id, "mqtt client connected");
        let mut filters = Vec::new();
        let peer = Peer {
            client_id: client_id.clone(),
            principal: connect.login.as_ref().map(|l| l.username.clone()),
            source_ip: peer.ip().to_string(),
        };
        let result = self
            .session(
                &mut framed,
                id,
                &peer,
                connect.keep_alive,
                &mut rx,
                &mut filters,
                &kicked,
                &cancel,
            )
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
        framed: &mut Framed<TcpStream, Codec>,
        id: ConnId,
        peer: &Peer,
        keep_alive: u16,
        rx: &mut mpsc::Receiver<Outgoing>,
        my_filters: &mut Vec<String>,
        kicked: &CancellationToken,
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        use futures_util::{SinkExt, StreamExt};
        let (client_id, principal, source_ip) = (&peer.client_id, &peer.principal, &peer.source_ip);
        framed
            .send(Packet::ConnAck(ConnAck::new(
                ConnectReturnCode::Success,
                false,
            )))
            .await
            .map_err(|e| e.to_string())?;
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
                    let Some(Outgoing::Publish { topic, payload, qos }) = out else { return Ok(()) };
                    let mut p = Publish::from_bytes(topic.as_ref(), qos, payload);
                    if qos != QoS::AtMostOnce {
                        next_pkid = next_pkid.checked_add(1).unwrap_or(1);
                        p.pkid = next_pkid;
                    }
                    framed.send(Packet::Publish(p)).await.map_err(|e| e.to_string())?;
                }
                incoming = tokio::time::timeout(idle, framed.next()) => {
                    let packet = match incoming {
                        Err(_) => return Err("keep-alive timeout".to_owned()),
                        Ok(None) => return Ok(()),
                        Ok(Some(Err(e))) => return Err(e.to_string()),
                        Ok(Some(Ok(p))) => p,
                    };
                    match packet {
                        Packet::Publish(p) => {
                            if validate_topic(&p.topic).is_err() {
                                return Err(format!("invalid topic name '{}'", p.topic));
                            }
                            let fresh = match p.qos {
                                QoS::ExactlyOnce => qos2_inflight.insert(p.pkid),
                                _ => true,
                            };
                            if fresh {
                                self.inner.metrics.broker_received.inc();
                                let msg = Message {
                                    topic: p.topic.clone(),
                                    client_id: Some(client_id.to_owned()),
                                    principal: principal.clone(),
                                    source_ip: Some(source_ip.clone()),
                                    payload: p.payload.clone(),
                                    received_at_ms: now_ms(),
                                    seq: weir_engine::next_seq(),
                                    // Acknowledged on receipt, below.
                                    ack: Default::default(),
                                };
                                if self.inner.ingress.send(msg).await.is_err() {
                                    return Err("weir is shutting down".to_owned());
                                }
                                self.route(&p.topic, p.payload, p.qos);
                            }
                            match p.qos {
                                QoS::AtMostOnce => {}
                                QoS::AtLeastOnce => framed.send(Packet::PubAck(PubAck::new(p.pkid))).await.map_err(|e| e.to_string())?,
                                QoS::ExactlyOnce => framed.send(Packet::PubRec(PubRec::new(p.pkid))).await.map_err(|e| e.to_string())?,
                            }
                        }
                        Packet::PubRel(r) => {
                            qos2_inflight.remove(&r.pkid);
                            framed.send(Packet::PubComp(PubComp::new(r.pkid))).await.map_err(|e| e.to_string())?;
                        }
                        Packet::Subscribe(s) => {
                            let mut codes = Vec::with_capacity(s.filters.len());
                            for f in s.filters {
                                if validate_filter(&f.path).is_err() {
                                    codes.push(SubscribeReasonCode::Failure);
                                    continue;
                                }
                                let granted = (f.qos as u8).min(1);
                                let mut subs = self.inner.subscriptions.write().unwrap_or_else(|p| p.into_inner());
                                // Re-subscribing replaces the earlier subscription's QoS.
                                for q in 0..=1u8 {
                                    subs.remove(&f.path, &(id, q));
                                }
                                subs.insert(&f.path, (id, granted));
                                my_filters.retain(|x| x != &f.path);
                                my_filters.push(f.path);
                                codes.push(SubscribeReasonCode::Success(if granted == 1 { QoS::AtLeastOnce } else { QoS::AtMostOnce }));
                            }
                            framed.send(Packet::SubAck(SubAck::new(s.pkid, codes))).await.map_err(|e| e.to_string())?;
                        }
                        Packet::Unsubscribe(u) => {
                            {
                                let mut subs = self.inner.subscriptions.write().unwrap_or_else(|p| p.into_inner());
                                for f in &u.topics {
                                    for q in 0..=1u8 {
                                        subs.remove(f, &(id, q));
                                    }
                                    my_filters.retain(|x| x != f);
                                }
                            }
                            framed.send(Packet::UnsubAck(UnsubAck::new(u.pkid))).await.map_err(|e| e.to_string())?;
                        }
                        Packet::PingReq => framed.send(Packet::PingResp).await.map_err(|e| e.to_string())?,
                        Packet::Disconnect => return Ok(()),
                        // Acknowledgements of what we sent: QoS 1 out is fire-and-forget here.
                        Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) => {}
                        other => return Err(format!("unexpected packet {other:?}")),
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
