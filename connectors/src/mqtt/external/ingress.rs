//! weir's subscribing connection to the external broker, across reconnections: it
//! subscribes to exactly the topic filters of the enabled rules and follows rule changes,
//! hands every message it reads to the router, and acknowledges each once every holder
//! has let go of it (see [`weir_engine::Ack`]).
//!
//! Each read takes what the socket holds, decodes every packet in it and hands the
//! messages to the router; the acknowledgements, SUBSCRIBEs and PINGREQs that came up
//! meanwhile go out in one write. QoS 2 messages are acknowledged with PUBREC and released
//! with PUBCOMP; a QoS 2 message the broker sends again before its PUBREL is acknowledged
//! again, not processed twice.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    DisconnectReasonCode, Filter, Packet, PubAck, PubComp, PubRec, Publish, Subscribe,
    SubscribeReasonCode, Unsubscribe,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use weir_engine::{Ack, Message, MqttProperties, now_ms};

use super::config::ExternalConfig;
use super::connection::{
    Dialer, KeepAlive, Link, READ_BUFFER, READ_PACE, Reconnect, connect_packet,
};
use super::error::LinkError;
use crate::metrics::Metrics;
use crate::mqtt::packets::{properties_from_v5, qos_v5};

/// The properties of a message that came without any: one shared value, not one
/// allocation per message.
fn no_properties() -> Arc<MqttProperties> {
    static NONE: std::sync::OnceLock<Arc<MqttProperties>> = std::sync::OnceLock::new();
    NONE.get_or_init(|| Arc::new(properties_from_v5(Default::default())))
        .clone()
}

/// An acknowledgement to send: the packet id and QoS of a message every holder let go of.
type AckToken = (u16, QoS);

/// Packet ids of weir's SUBSCRIBE and UNSUBSCRIBE packets: 1 to 65535, then again.
fn next_pkid(pkid: &mut u16) -> u16 {
    *pkid = pkid.checked_add(1).unwrap_or(1);
    *pkid
}

/// weir's subscribing connection to the external broker, across reconnections.
pub(super) struct Session {
    pub(super) config: Arc<ExternalConfig>,
    pub(super) dialer: Arc<Dialer>,
    pub(super) ingress: mpsc::Sender<Message>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) cancel: CancellationToken,
    pub(super) filters_rx: watch::Receiver<BTreeSet<String>>,
    /// QoS 2 messages whose PUBREC was sent and whose PUBREL has not come yet: a PUBLISH
    /// with one of these packet ids is the broker resending one that weir already has.
    pub(super) awaiting_release: HashSet<u16>,
    /// Set for the session of another replica that this one adopted (see
    /// [`super::AdoptedSession`]): the client id is `config.client_id`, and the session
    /// ends, instead of connecting again, when its owner takes it back.
    pub(super) adopted: Option<Arc<Activity>>,
}

/// What an adopted session has done, for whoever retires it: messages received, and
/// subscription changes the broker has not acknowledged yet.
#[derive(Default)]
pub(super) struct Activity {
    pub(super) received: std::sync::atomic::AtomicU64,
    pub(super) pending_changes: std::sync::atomic::AtomicUsize,
    /// Filters subscribed on the current connection.
    pub(super) subscribed: std::sync::atomic::AtomicUsize,
}

/// What one connection keeps while it lasts.
#[derive(Default)]
struct ConnectionState {
    /// The filters subscribed on this connection (without the share prefix).
    subscribed: BTreeSet<String>,
    /// SUBSCRIBE and UNSUBSCRIBE packets waiting for their SUBACK or UNSUBACK, by packet id.
    pending: HashMap<u16, Change>,
    pkid: u16,
}

/// A subscription change sent to the broker and not acknowledged yet.
struct Change {
    subscription: String,
    subscribe: bool,
    sent: std::time::Instant,
}

impl Change {
    fn new(subscription: String, subscribe: bool) -> Self {
        Self {
            subscription,
            subscribe,
            sent: std::time::Instant::now(),
        }
    }
}

/// A broker that takes longer than this to acknowledge a subscription change is logged
/// at warning level: until it does, a new rule receives nothing, and a deleted rule's
/// messages keep coming (and are dropped). Mosquitto, for one, reads one packet per
/// connection per turn of its loop, so under load weir's SUBSCRIBE can wait behind many
/// PUBACKs.
const SLOW_SUBSCRIPTION_CHANGE: Duration = Duration::from_secs(1);

impl Session {
    pub(super) async fn run(mut self) {
        // Acknowledgements come from whichever task lets go of a message last; they reach
        // the connection through this channel, in the order they come.
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<AckToken>();
        let (connect, login) = connect_packet(
            &self.config,
            &self.config.client_id,
            self.config.clean_session,
        );
        let url = self.config.url.clone();
        let mut connections = Reconnect::new(connect, login, "broker");
        while let Some((link, _)) = connections.connect(&self.dialer, &url, &self.cancel).await {
            let served = self.serve(link, &ack_tx, &mut ack_rx).await;
            // A new connection subscribes afresh.
            if self.adopted.is_none() {
                self.metrics.external_subscriptions_pending.set(0);
            }
            match served {
                Ok(()) => return,
                Err(Ended::TakenOver) => {
                    tracing::info!(client_id = %self.config.client_id, broker = %url, "the adopted session's owner took it back");
                    return;
                }
                Err(Ended::Failed(e)) if !connections.lost(&url, &self.cancel, &e).await => return,
                Err(Ended::Failed(_)) => {}
            }
        }
    }

    /// Serves one connection: subscribes to every wanted filter, then reads messages,
    /// follows filter changes, sends acknowledgements and keeps the connection alive.
    /// `Ok` when weir is shutting down, `Err` when the connection failed or (for an
    /// adopted session) its owner took it back.
    async fn serve(
        &mut self,
        link: Link,
        ack_tx: &mpsc::UnboundedSender<AckToken>,
        ack_rx: &mut mpsc::UnboundedReceiver<AckToken>,
    ) -> Result<(), Ended> {
        let mut taken_over = false;
        let served = self.serve_link(link, ack_tx, ack_rx, &mut taken_over).await;
        match served {
            Err(_) if taken_over && self.adopted.is_some() => Err(Ended::TakenOver),
            other => other.map_err(Ended::Failed),
        }
    }

    async fn serve_link(
        &mut self,
        mut link: Link,
        ack_tx: &mpsc::UnboundedSender<AckToken>,
        ack_rx: &mut mpsc::UnboundedReceiver<AckToken>,
        taken_over: &mut bool,
    ) -> Result<(), LinkError> {
        let mut state = ConnectionState::default();
        let wanted = self.filters_rx.borrow_and_update().clone();
        self.subscribe(&mut link, &mut state, wanted)?;
        link.flush().await?;
        let mut keep_alive = KeepAlive::new(self.config.keep_alive);
        let mut batch: Vec<Message> = Vec::new();
        let mut acks: Vec<AckToken> = Vec::new();
        let mut next_read = std::time::Instant::now();
        loop {
            // The thread sleeps, not the task: see `READ_PACE`.
            let now = std::time::Instant::now();
            if next_read > now {
                std::thread::sleep(next_read - now);
            }
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    link.goodbye().await;
                    return Ok(());
                }
                _ = ack_rx.recv_many(&mut acks, 1024) => {
                    for (pkid, qos) in acks.drain(..) {
                        self.queue_ack(&mut link, pkid, qos)?;
                    }
                }
                changed = self.filters_rx.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    let wanted = self.filters_rx.borrow_and_update().clone();
                    self.subscribe(&mut link, &mut state, wanted)?;
                }
                read = link.read() => {
                    let n = read?;
                    if n == 0 {
                        return Err(LinkError::Closed);
                    }
                    keep_alive.heard();
                    // A read that took a good part of the buffer may have left more behind.
                    if n < READ_BUFFER / 4 {
                        next_read = std::time::Instant::now() + READ_PACE;
                    }
                    // Everything in one read arrived at once.
                    let received_at_ms = now_ms();
                    while let Some(packet) = link.next_packet()? {
                        match packet {
                            Packet::Publish(p) => {
                                self.receive(p, received_at_ms, &mut link, ack_tx, &mut batch)?
                            }
                            Packet::PubRel(r) => {
                                self.awaiting_release.remove(&r.pkid);
                                link.queue(&Packet::PubComp(PubComp::new(r.pkid, None)))?;
                            }
                            Packet::SubAck(ack) => {
                                let refused = match ack.return_codes.first() {
                                    Some(SubscribeReasonCode::Success(_)) => None,
                                    code => Some(format!("{code:?}")),
                                };
                                self.acknowledged(&mut state, ack.pkid, refused);
                            }
                            Packet::UnsubAck(ack) => self.acknowledged(&mut state, ack.pkid, None),
                            Packet::PingResp(_) => keep_alive.answered(),
                            Packet::Disconnect(d) => {
                                *taken_over =
                                    d.reason_code == DisconnectReasonCode::SessionTakenOver;
                                return Err(LinkError::Disconnected {
                                    code: d.reason_code,
                                    reason: d.properties.and_then(|p| p.reason_string),
                                });
                            }
                            Packet::PubAck(_)
                            | Packet::PubRec(_)
                            | Packet::PubComp(_) => {}
                            other => {
                                return Err(LinkError::Unexpected(format!("{other:?}")));
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(keep_alive.due()), if keep_alive.enabled() => {
                    keep_alive.ping(&mut link)?;
                }
            }
            if !batch.is_empty() {
                self.metrics.ingress_messages.inc_by(batch.len() as u64);
                if let Some(a) = &self.adopted {
                    a.received
                        .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                let delivered = tokio::select! {
                    _ = self.cancel.cancelled() => false,
                    ok = deliver(&self.ingress, &mut batch) => ok,
                };
                if !delivered {
                    return Ok(());
                }
            }
            link.flush().await?;
        }
    }

    /// Turns a PUBLISH into a message for the rules.
    fn receive(
        &mut self,
        p: Publish,
        received_at_ms: i64,
        link: &mut Link,
        ack_tx: &mpsc::UnboundedSender<AckToken>,
        batch: &mut Vec<Message>,
    ) -> Result<(), LinkError> {
        if p.qos == QoS::ExactlyOnce && self.awaiting_release.contains(&p.pkid) {
            // A resend of a QoS 2 message weir has: acknowledge it again, process it once.
            return self.queue_ack(link, p.pkid, p.qos);
        }
        let Ok(topic) = std::str::from_utf8(&p.topic) else {
            tracing::warn!(broker = %self.config.url, "a message with a topic that is not UTF-8 was skipped");
            return self.queue_ack(link, p.pkid, p.qos);
        };
        let ack = if p.qos == QoS::AtMostOnce {
            Ack::default()
        } else {
            let (tx, cancel, token) = (ack_tx.clone(), self.cancel.clone(), (p.pkid, p.qos));
            Ack::on_drop(move || {
                // After shutdown began, nothing more is acknowledged: what is dropped then
                // was not delivered.
                if !cancel.is_cancelled() {
                    let _ = tx.send(token);
                }
            })
        };
        let properties = match p.properties {
            Some(props) => Arc::new(properties_from_v5(props)),
            None => no_properties(),
        };
        batch.push(Message {
            topic: topic.to_owned(),
            client_id: None,
            principal: None,
            source_ip: None,
            payload: p.payload,
            received_at_ms,
            seq: weir_engine::next_seq(),
            // An MQTT 5 broker leaves the properties out when the publisher set none, or
            // spoke MQTT 3.1.1: then they are all Undefined but for format_indicator.
            properties: Some(properties),
            ack,
            // The broker does not say whether a message was a will.
            will: false,
        });
        Ok(())
    }

    /// Queues the acknowledgement of a message: PUBACK for QoS 1, PUBREC for QoS 2.
    fn queue_ack(&mut self, link: &mut Link, pkid: u16, qos: QoS) -> Result<(), LinkError> {
        match qos {
            QoS::AtMostOnce => Ok(()),
            QoS::AtLeastOnce => link.queue(&Packet::PubAck(PubAck::new(pkid, None))),
            QoS::ExactlyOnce => {
                self.awaiting_release.insert(pkid);
                link.queue(&Packet::PubRec(PubRec::new(pkid, None)))
            }
        }
    }

    /// Subscribes to the wanted filters not yet subscribed and unsubscribes from those no
    /// rule wants any more.
    fn subscribe(
        &self,
        link: &mut Link,
        state: &mut ConnectionState,
        wanted: BTreeSet<String>,
    ) -> Result<(), LinkError> {
        for f in wanted.difference(&state.subscribed) {
            let sub = self.config.subscription(f);
            let mut packet =
                Subscribe::new(Filter::new(sub.clone(), qos_v5(self.config.qos)), None);
            packet.pkid = next_pkid(&mut state.pkid);
            link.queue(&Packet::Subscribe(packet.clone()))?;
            state.pending.insert(packet.pkid, Change::new(sub, true));
        }
        for f in state.subscribed.difference(&wanted) {
            let sub = self.config.subscription(f);
            let mut packet = Unsubscribe::new(sub.clone(), None);
            packet.pkid = next_pkid(&mut state.pkid);
            link.queue(&Packet::Unsubscribe(packet.clone()))?;
            state.pending.insert(packet.pkid, Change::new(sub, false));
        }
        state.subscribed = wanted;
        self.pending_changed(state);
        Ok(())
    }

    /// Shows how many subscription changes wait for the broker: in the gauge for weir's
    /// own session, to whoever retires an adopted one.
    fn pending_changed(&self, state: &ConnectionState) {
        match &self.adopted {
            None => self
                .metrics
                .external_subscriptions_pending
                .set(state.pending.len() as i64),
            Some(a) => {
                use std::sync::atomic::Ordering::Relaxed;
                a.pending_changes.store(state.pending.len(), Relaxed);
                a.subscribed.store(state.subscribed.len(), Relaxed);
            }
        }
    }

    /// Reports the broker's answer to a SUBSCRIBE or an UNSUBSCRIBE; `refused` holds the
    /// reason code of a SUBACK that refused.
    fn acknowledged(&self, state: &mut ConnectionState, pkid: u16, refused: Option<String>) {
        let Some(change) = state.pending.remove(&pkid) else {
            return;
        };
        self.pending_changed(state);
        let (filter, broker) = (&change.subscription, &self.config.url);
        let took = change.sent.elapsed();
        let after_ms = took.as_millis() as u64;
        match refused {
            None => {
                let what = if change.subscribe {
                    "subscribed"
                } else {
                    "unsubscribed"
                };
                if took > SLOW_SUBSCRIPTION_CHANGE {
                    tracing::warn!(%filter, %broker, after_ms, "{what}, late: the broker was slow to acknowledge");
                } else {
                    tracing::info!(%filter, %broker, after_ms, "{what}");
                }
            }
            Some(reason) => {
                tracing::warn!(%filter, %broker, %reason, "the broker refused the subscription")
            }
        }
    }
}

/// Why serving a connection ended, other than weir shutting down.
enum Ended {
    /// The connection failed: connect again.
    Failed(LinkError),
    /// The owner of an adopted session connected and the broker handed the session over.
    TakenOver,
}

/// Hands a batch of messages to the router, in order; false when the router stopped.
async fn deliver(ingress: &mpsc::Sender<Message>, batch: &mut Vec<Message>) -> bool {
    for m in batch.drain(..) {
        if ingress.send(m).await.is_err() {
            return false;
        }
    }
    true
}
