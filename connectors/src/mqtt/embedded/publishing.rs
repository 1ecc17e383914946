//! A PUBLISH, from a client, a will or weir's own republish action: checked (topic alias,
//! topic name, receive maximum, ACL; a QoS 2 message is taken once), handed to the
//! rules with its acknowledgement, kept as its topic's retained message, and queued for
//! every matching subscription (one member of each shared subscription group, round
//! robin).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::DisconnectReasonCode as Reason;
use weir_engine::topic::validate_topic;
use weir_engine::{Ack, Message, MqttProperties, now_ms};

use super::access::Want;
use super::broker::{Broker, OwnService, lock};
use super::client::{Conn, Peer};
use super::connection::send;
use super::delivery::Delivery;
use super::error::ClientError;
use super::retained::Retained;
use super::session::{Offered, Session};
use super::signals::EndSignal;
use super::subscription::Sub;
use super::wire::{self, Outbound, RECEIVE_MAX, TOPIC_ALIAS_MAX};

/// A message entering the broker, from a client, a will or weir's own republish.
pub(super) struct Incoming<'a> {
    pub(super) topic: &'a str,
    pub(super) payload: Bytes,
    pub(super) qos: u8,
    pub(super) retain: bool,
    pub(super) properties: Option<Arc<MqttProperties>>,
    pub(super) expires_at: Option<Instant>,
    /// The publishing client, for no-local subscriptions.
    pub(super) publisher: Option<&'a str>,
    /// Whether it is the will of a client that went away.
    pub(super) will: bool,
}

pub(super) fn expires_at(seconds: Option<u32>) -> Option<Instant> {
    seconds.and_then(|s| Instant::now().checked_add(Duration::from_secs(u64::from(s))))
}

impl Broker {
    /// Names the service of weir's own that takes the messages of some topics (once):
    /// what weir publishes itself on them is handed to it too.
    pub fn serve_own(&self, service: OwnService) {
        let _ = self.inner.own_service.set(service);
    }

    /// A message weir publishes itself (a republish action's) on a topic one of weir's
    /// own services takes, such as a shadow's `update` topic: handed to that service as a
    /// client's would be. The answer is told once the service has let go of the message
    /// (the change is stored); `None` when no service takes the topic.
    pub async fn to_own_service(
        &self,
        topic: &str,
        payload: Bytes,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let service = self.inner.own_service.get()?;
        if !(service.wants)(topic) {
            return None;
        }
        let (done, held) = tokio::sync::oneshot::channel();
        let mut msg = Message::new(topic, payload);
        msg.ack = Ack::on_drop(move || {
            let _ = done.send(());
        });
        service.tx.send(Arc::new(msg)).await.ok()?;
        Some(held)
    }

    /// Delivers a message to the broker's subscribers (as a republish action does). It
    /// does not go back into weir's own pipeline (but see [`Broker::to_own_service`]).
    /// Returns how many subscribers got it.
    pub fn publish(&self, topic: &str, payload: Bytes, qos: QoS) -> usize {
        self.route(&Incoming {
            topic,
            payload,
            qos: qos as u8,
            retain: false,
            properties: None,
            expires_at: None,
            publisher: None,
            will: false,
        })
    }

    /// Queues a message for every session with a matching subscription (one member of
    /// each shared subscription group). Returns how many sessions took it.
    pub(super) fn route(&self, m: &Incoming<'_>) -> usize {
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
    pub(super) fn offer(&self, session: &Mutex<Session>, d: Delivery) -> bool {
        let limits = &self.inner.limits;
        let mut s = lock(session);
        if !self.allows(s.principal.as_deref(), &s.client_id, Want::Read, &d.topic) {
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
    pub(super) fn retain(&self, m: &Incoming<'_>) {
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
    pub(super) async fn accept_publish(
        &self,
        peer: &Peer,
        m: &Incoming<'_>,
        ack: Ack,
    ) -> Result<(), ClientError> {
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
            will: m.will,
        };
        self.take(m, msg).await
    }

    /// Takes a message published over HTTP (`POST /v1/topics/{topic}`) as its MQTT
    /// PUBLISH would be taken: `msg` (its topic, payload, who sent it and its
    /// acknowledgement) to the rules, kept as the topic's retained message if `retain`,
    /// queued for the subscribers at `qos`. The caller checked the topic and the ACL.
    /// False if the broker is stopping.
    pub async fn publish_from_http(&self, msg: Message, qos: QoS, retain: bool) -> bool {
        let topic = msg.topic.clone();
        let m = Incoming {
            topic: &topic,
            payload: msg.payload.clone(),
            qos: qos as u8,
            retain,
            properties: None,
            expires_at: None,
            publisher: None,
            will: false,
        };
        self.take(&m, msg).await.is_ok()
    }

    async fn take(&self, m: &Incoming<'_>, msg: Message) -> Result<(), ClientError> {
        self.inner.metrics.broker_received.inc();
        if self.inner.ingress.send(msg).await.is_err() {
            return Err(ClientError::ShuttingDown);
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

    pub(super) async fn incoming_publish(
        &self,
        c: &mut Conn,
        p: wire::Publish,
    ) -> Result<(), ClientError> {
        // MQTT 5 topic aliases: an alias with a topic sets it; an alias alone uses it.
        let topic = match p.alias {
            None => p.topic,
            Some(a) if a == 0 || a > TOPIC_ALIAS_MAX => {
                c.refuse(Reason::TopicAliasInvalid).await;
                return Err(ClientError::AliasOutOfRange(a));
            }
            Some(a) if p.topic.is_empty() => {
                match c.aliases.as_ref().and_then(|x| x.inbound.get(&a)) {
                    Some(t) => t.clone(),
                    None => {
                        c.refuse(Reason::ProtocolError).await;
                        return Err(ClientError::AliasNeverSet(a));
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
            return Err(ClientError::InvalidTopic(topic.into()));
        }
        if p.qos > 0 && c.v5 {
            let unacknowledged = c.acks.as_ref().map_or(0, |a| a.len())
                + lock(&c.session).queued().incoming_qos2.len();
            if unacknowledged >= usize::from(RECEIVE_MAX) {
                c.refuse(Reason::ReceiveMaximumExceeded).await;
                return Err(ClientError::ReceiveMaximum);
            }
        }
        if !self.allows(
            c.peer.principal.as_deref(),
            &c.peer.client_id,
            Want::Write,
            &topic,
        ) {
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
            will: false,
        };
        self.accept_publish(&c.peer, &m, ack).await
    }
}

/// Adds `pkid` unless the list has it; whether it was added.
fn insert_new(list: &mut Vec<u16>, pkid: u16) -> bool {
    if list.contains(&pkid) {
        return false;
    }
    list.push(pkid);
    true
}
