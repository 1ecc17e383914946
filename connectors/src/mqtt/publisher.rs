//! Publishing to an external broker with confirmation: the republish action's output
//! counts as delivered only when the broker acknowledged it (PUBACK for QoS 1; for QoS 0,
//! when it was written to the connection).
//!
//! weir keeps its own MQTT 5 connection for publishing (client id `<id>-pub`, clean
//! session), driven by one task. The task takes every publish that is waiting, encodes
//! them into one buffer and writes them with one call: an action's batch of outputs costs
//! one write, not one per output. QoS 0 publishes are confirmed once written, QoS 1
//! publishes when their PUBACK comes. When the connection fails, every waiting caller
//! gets an error and nothing is retransmitted: the action retries from its disk buffer
//! instead, so no publish is both retried and retransmitted out of step with the callers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, Publish};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::client::ExternalConfig;
use super::link::{Backoff, Dialer, KeepAlive, Link, connect_packet, reason};

/// QoS 1 publishes in flight at most (written, not yet acknowledged), unless the broker
/// allows fewer: its CONNACK's Receive Maximum (Mosquitto's `max_inflight_messages`, 20
/// by default), which an MQTT 5 client must not exceed.
const WINDOW: usize = 1024;

type Reply = oneshot::Sender<Result<(), String>>;

struct Job {
    topic: String,
    payload: Bytes,
    qos: QoS,
    reply: Reply,
}

/// A confirmed publisher on its own connection to the external broker.
#[derive(Clone)]
pub struct ConfirmedPublisher {
    tx: mpsc::Sender<Job>,
    timeout: Duration,
}

impl ConfirmedPublisher {
    /// Connects as `client_id` with the rest of `config` (a clean session) and serves
    /// publishes until `cancel` fires.
    pub(super) fn start(
        config: Arc<ExternalConfig>,
        dialer: Arc<Dialer>,
        client_id: String,
        cancel: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(WINDOW);
        let task = Task {
            config,
            dialer,
            client_id,
            rx,
            cancel,
            unacked: HashMap::new(),
            written: Vec::new(),
            pkid: 0,
        };
        tokio::spawn(task.run());
        Self {
            tx,
            timeout: Duration::from_secs(30),
        }
    }

    /// Publishes and waits for the broker's acknowledgement.
    pub async fn publish(&self, topic: &str, payload: Bytes, qos: QoS) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            topic: topic.to_owned(),
            payload,
            qos,
            reply,
        };
        self.tx
            .send(job)
            .await
            .map_err(|_| "the publisher stopped".to_owned())?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("the publisher stopped".to_owned()),
            Err(_) => Err(format!(
                "no acknowledgement from the broker within {:?}",
                self.timeout
            )),
        }
    }
}

struct Task {
    config: Arc<ExternalConfig>,
    dialer: Arc<Dialer>,
    client_id: String,
    rx: mpsc::Receiver<Job>,
    cancel: CancellationToken,
    /// QoS 1 publishes written and waiting for their PUBACK, by packet id.
    unacked: HashMap<u16, Reply>,
    /// QoS 0 publishes queued for the next write: confirmed once it is written.
    written: Vec<Reply>,
    pkid: u16,
}

impl Task {
    async fn run(mut self) {
        let (connect, login) = connect_packet(&self.config, &self.client_id, true);
        let url = self.config.url.clone();
        let mut backoff = Backoff::default();
        loop {
            let connected = tokio::select! {
                _ = self.cancel.cancelled() => return,
                c = self.dialer.connect(connect.clone(), login.clone()) => c,
            };
            let error = match connected {
                Ok((link, ack)) => {
                    backoff.connected();
                    tracing::info!(broker = %url, "publisher connected");
                    let window = ack
                        .properties
                        .and_then(|p| p.receive_max)
                        .map_or(WINDOW, |m| usize::from(m).clamp(1, WINDOW));
                    match self.serve(link, window).await {
                        Ok(()) => return,
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            // Everything not confirmed fails back to its action.
            let why = format!("connection to {url} failed: {error}");
            for reply in self
                .written
                .drain(..)
                .chain(self.unacked.drain().map(|(_, r)| r))
            {
                let _ = reply.send(Err(why.clone()));
            }
            if !backoff.pause(&self.cancel, &url, "publisher", &error).await {
                return;
            }
        }
    }

    /// Serves one connection; `Ok` when weir is shutting down or every publisher handle
    /// is gone, `Err` when the connection failed.
    async fn serve(&mut self, mut link: Link, window: usize) -> Result<(), String> {
        let mut keep_alive = KeepAlive::new(self.config.keep_alive);
        let mut jobs: Vec<Job> = Vec::new();
        loop {
            let room = window.saturating_sub(self.unacked.len());
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    link.goodbye().await;
                    return Ok(());
                }
                read = link.read() => {
                    if read? == 0 {
                        return Err("the broker closed the connection".to_owned());
                    }
                    keep_alive.heard();
                    while let Some(packet) = link.next_packet()? {
                        match packet {
                            Packet::PubAck(ack) => {
                                if let Some(reply) = self.unacked.remove(&ack.pkid) {
                                    let result = match ack.reason {
                                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                                        refused => Err(format!("the broker refused the publish: {refused:?}")),
                                    };
                                    let _ = reply.send(result);
                                }
                            }
                            Packet::PingResp(_) => keep_alive.answered(),
                            Packet::Disconnect(d) => {
                                return Err(format!(
                                    "the broker disconnected weir's publisher: {:?}{}",
                                    d.reason_code,
                                    reason(d.properties.and_then(|p| p.reason_string))
                                ));
                            }
                            _ => {}
                        }
                    }
                }
                n = self.rx.recv_many(&mut jobs, room), if room > 0 => {
                    if n == 0 {
                        return Ok(());
                    }
                    for job in jobs.drain(..) {
                        self.queue(&mut link, job);
                    }
                }
                _ = tokio::time::sleep_until(keep_alive.due()), if keep_alive.enabled() => {
                    keep_alive.ping(&mut link)?;
                }
            }
            link.flush().await?;
            for reply in self.written.drain(..) {
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Encodes a publish into the write buffer.
    fn queue(&mut self, link: &mut Link, job: Job) {
        let qos = match job.qos {
            QoS::AtMostOnce => QoS5::AtMostOnce,
            _ => QoS5::AtLeastOnce,
        };
        let mut publish = Publish::new(job.topic, qos, job.payload, None);
        if qos != QoS5::AtMostOnce {
            publish.pkid = self.next_pkid();
        }
        if let Err(e) = link.queue(&Packet::Publish(publish)) {
            let _ = job.reply.send(Err(e));
            return;
        }
        if qos == QoS5::AtMostOnce {
            self.written.push(job.reply);
        } else {
            let pkid = self.pkid;
            self.unacked.insert(pkid, job.reply);
        }
    }

    /// A packet id that no unacknowledged publish holds.
    fn next_pkid(&mut self) -> u16 {
        loop {
            self.pkid = self.pkid.checked_add(1).unwrap_or(1);
            if !self.unacked.contains_key(&self.pkid) {
                return self.pkid;
            }
        }
    }
}
