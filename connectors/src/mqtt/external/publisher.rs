//! Publishing to an external broker with confirmation: the republish action's output
//! counts as delivered only when the broker acknowledged it (PUBACK for QoS 1; for QoS 0,
//! when it was written to the connection).
//!
//! weir keeps its own MQTT 5 connection for publishing (client id `<id>-pub`, clean
//! session), driven by one task on a thread of its own, which reads the broker's PUBACKs
//! at most once a millisecond. An action hands over its whole batch of outputs as one
//! job and gets one answer, with a result per output, once every one of them is
//! confirmed: one hand-off and one wake-up per batch, not per output. The task takes
//! every job that is waiting, encodes their publishes into one buffer and writes them
//! with one call, as many as the broker's window allows. When the connection fails,
//! every waiting job gets an error for what was not confirmed and nothing is
//! retransmitted: the action retries from its disk buffer instead, so no publish is both
//! retried and retransmitted out of step with the callers.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, Publish};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::config::ExternalConfig;
use super::connection::{
    Dialer, KeepAlive, Link, READ_BUFFER, READ_PACE, Reconnect, connect_packet, spawn_thread,
};
use super::error::{LinkError, PublishError};

/// QoS 1 publishes in flight at most (written, not yet acknowledged), unless the broker
/// allows fewer: its CONNACK's Receive Maximum (Mosquitto's `max_inflight_messages`, 20
/// by default), which an MQTT 5 client must not exceed.
const WINDOW: usize = 1024;

/// Jobs (batches) waiting for the task; each action has at most one in flight.
const JOBS: usize = 64;

/// One output to publish: its topic and payload.
pub type Outgoing = (String, Bytes);

type Results = Vec<Result<(), PublishError>>;

struct Job {
    publishes: Vec<Outgoing>,
    qos: QoS,
    retain: bool,
    reply: oneshot::Sender<Results>,
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
        let (tx, rx) = mpsc::channel(JOBS);
        let task = Task {
            config,
            dialer,
            client_id,
            rx,
            cancel,
            jobs: HashMap::new(),
            next_job: 0,
            backlog: VecDeque::new(),
            unacked: HashMap::new(),
            written: Vec::new(),
            pkid: 0,
        };
        // A thread of its own, with a runtime of its own: see `READ_PACE`.
        spawn_thread("weir-publisher", "the publisher", task.run());
        Self {
            tx,
            timeout: Duration::from_secs(30),
        }
    }

    /// Publishes a batch, in order, and waits until the broker acknowledged each one:
    /// a result per publish, in the batch's order.
    pub async fn publish_batch(&self, publishes: Vec<Outgoing>, qos: QoS) -> Results {
        self.publish_retained(publishes, qos, false).await
    }

    /// [`ConfirmedPublisher::publish_batch`], with the retain flag set on each publish
    /// if `retain`.
    pub async fn publish_retained(
        &self,
        publishes: Vec<Outgoing>,
        qos: QoS,
        retain: bool,
    ) -> Results {
        let n = publishes.len();
        if n == 0 {
            return Vec::new();
        }
        let all = |e: PublishError| vec![Err(e); n];
        let (reply, rx) = oneshot::channel();
        let job = Job {
            publishes,
            qos,
            retain,
            reply,
        };
        if self.tx.send(job).await.is_err() {
            return all(PublishError::Stopped);
        }
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => all(PublishError::Stopped),
            Err(_) => all(PublishError::NoAck(self.timeout)),
        }
    }
}

/// A job being published: what is left to confirm, and the results so far.
struct Pending {
    publishes: Vec<Outgoing>,
    qos: QoS,
    retain: bool,
    results: Vec<Option<Result<(), PublishError>>>,
    outstanding: usize,
    reply: oneshot::Sender<Results>,
}

impl Pending {
    /// Records one publish's result; true once the job is complete.
    fn settle(&mut self, index: usize, result: Result<(), PublishError>) -> bool {
        if self.results[index].is_none() {
            self.results[index] = Some(result);
            self.outstanding -= 1;
        }
        self.outstanding == 0
    }

    fn answer(self) {
        let results = self
            .results
            .into_iter()
            .map(|r| r.unwrap_or(Err(PublishError::NotPublished)))
            .collect();
        let _ = self.reply.send(results);
    }
}

/// One publish of a job: the job's id and the publish's place in it.
type Slot = (u64, usize);

struct Task {
    config: Arc<ExternalConfig>,
    dialer: Arc<Dialer>,
    client_id: String,
    rx: mpsc::Receiver<Job>,
    cancel: CancellationToken,
    /// Jobs taken and not yet answered, by id.
    jobs: HashMap<u64, Pending>,
    next_job: u64,
    /// Publishes taken and not yet written (the broker's window was full), in order.
    backlog: VecDeque<Slot>,
    /// QoS 1 publishes written and waiting for their PUBACK, by packet id.
    unacked: HashMap<u16, Slot>,
    /// QoS 0 publishes queued for the next write: confirmed once it is written.
    written: Vec<Slot>,
    pkid: u16,
}

impl Task {
    async fn run(mut self) {
        let (connect, login) = connect_packet(&self.config, &self.client_id, true);
        let url = self.config.url.clone();
        let mut connections = Reconnect::new(connect, login, "publisher");
        while let Some((link, ack)) = connections.connect(&self.dialer, &url, &self.cancel).await {
            let window = ack
                .properties
                .and_then(|p| p.receive_max)
                .map_or(WINDOW, |m| usize::from(m).clamp(1, WINDOW));
            let Err(error) = self.serve(link, window).await else {
                return;
            };
            let error = Arc::new(error);
            self.fail_unconfirmed(&PublishError::ConnectionFailed {
                url: url.clone(),
                error: error.clone(),
            });
            if !connections.lost(&url, &self.cancel, &error).await {
                return;
            }
        }
    }

    /// Fails back every publish not confirmed yet, with `why`: the actions retry them.
    fn fail_unconfirmed(&mut self, why: &PublishError) {
        self.backlog.clear();
        self.unacked.clear();
        self.written.clear();
        for (_, mut job) in self.jobs.drain() {
            for i in 0..job.results.len() {
                job.settle(i, Err(why.clone()));
            }
            job.answer();
        }
    }

    /// Serves one connection; `Ok` when weir is shutting down or every publisher handle
    /// is gone, `Err` when the connection failed.
    async fn serve(&mut self, mut link: Link, window: usize) -> Result<(), LinkError> {
        let mut keep_alive = KeepAlive::new(self.config.keep_alive);
        let mut taken: Vec<Job> = Vec::new();
        let mut next_read = std::time::Instant::now();
        loop {
            // While PUBACKs are due, the thread sleeps between reads (see `READ_PACE`):
            // the broker writes each one on its own, and each would wake the thread.
            // Jobs that come meanwhile wait for the next turn.
            if !self.unacked.is_empty() {
                let now = std::time::Instant::now();
                if next_read > now {
                    std::thread::sleep(next_read - now);
                }
            }
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    link.goodbye().await;
                    return Ok(());
                }
                read = link.read() => {
                    let n = read?;
                    if n == 0 {
                        return Err(LinkError::Closed);
                    }
                    if n < READ_BUFFER / 4 {
                        next_read = std::time::Instant::now() + READ_PACE;
                    }
                    keep_alive.heard();
                    while let Some(packet) = link.next_packet()? {
                        match packet {
                            Packet::PubAck(ack) => {
                                if let Some(slot) = self.unacked.remove(&ack.pkid) {
                                    let result = match ack.reason {
                                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                                        refused => Err(PublishError::Refused(refused)),
                                    };
                                    self.settle(slot, result);
                                }
                            }
                            Packet::PingResp(_) => keep_alive.answered(),
                            Packet::Disconnect(d) => {
                                return Err(LinkError::PublisherDisconnected {
                                    code: d.reason_code,
                                    reason: d.properties.and_then(|p| p.reason_string),
                                });
                            }
                            _ => {}
                        }
                    }
                }
                // New jobs only once the backlog is written: the channel holds the rest.
                n = self.rx.recv_many(&mut taken, JOBS), if self.backlog.is_empty() => {
                    if n == 0 {
                        // Every handle is gone, so nobody waits for an answer.
                        return Ok(());
                    }
                    for job in taken.drain(..) {
                        self.take(job);
                    }
                }
                _ = tokio::time::sleep_until(keep_alive.due()), if keep_alive.enabled() => {
                    keep_alive.ping(&mut link)?;
                }
            }
            self.queue(&mut link, window);
            link.flush().await?;
            for slot in std::mem::take(&mut self.written) {
                self.settle(slot, Ok(()));
            }
        }
    }

    /// Takes a job's publishes into the backlog.
    fn take(&mut self, job: Job) {
        let id = self.next_job;
        self.next_job += 1;
        let n = job.publishes.len();
        if n == 0 {
            let _ = job.reply.send(Vec::new());
            return;
        }
        self.backlog.extend((0..n).map(|i| (id, i)));
        self.jobs.insert(
            id,
            Pending {
                publishes: job.publishes,
                qos: job.qos,
                retain: job.retain,
                results: vec![None; n],
                outstanding: n,
                reply: job.reply,
            },
        );
    }

    /// Encodes publishes from the backlog into the write buffer, QoS 1 ones while the
    /// broker's window has room.
    fn queue(&mut self, link: &mut Link, window: usize) {
        while let Some(&(id, i)) = self.backlog.front() {
            let Some(job) = self.jobs.get_mut(&id) else {
                self.backlog.pop_front();
                continue;
            };
            let qos = match job.qos {
                QoS::AtMostOnce => QoS5::AtMostOnce,
                _ => QoS5::AtLeastOnce,
            };
            if qos != QoS5::AtMostOnce && self.unacked.len() >= window {
                return;
            }
            self.backlog.pop_front();
            let (topic, payload) = std::mem::take(&mut job.publishes[i]);
            let mut publish = Publish::new(topic, qos, payload, None);
            publish.retain = job.retain;
            let pkid = match qos {
                QoS5::AtMostOnce => 0,
                _ => next_pkid(&mut self.pkid, &self.unacked),
            };
            publish.pkid = pkid;
            if let Err(e) = link.queue(&Packet::Publish(publish)) {
                self.settle((id, i), Err(PublishError::Link(Arc::new(e))));
                continue;
            }
            if pkid == 0 {
                self.written.push((id, i));
            } else {
                self.unacked.insert(pkid, (id, i));
            }
        }
    }

    /// Records one publish's result, and answers its job once that is complete.
    fn settle(&mut self, (id, i): Slot, result: Result<(), PublishError>) {
        let done = self.jobs.get_mut(&id).is_some_and(|j| j.settle(i, result));
        if done && let Some(job) = self.jobs.remove(&id) {
            job.answer();
        }
    }
}

/// A packet id that no unacknowledged publish holds.
fn next_pkid(pkid: &mut u16, unacked: &HashMap<u16, Slot>) -> u16 {
    loop {
        *pkid = pkid.checked_add(1).unwrap_or(1);
        if !unacked.contains_key(pkid) {
            return *pkid;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use rumqttc::v5::mqttbytes::v5::{ConnAck, ConnAckProperties, ConnectReturnCode, PubAck};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// The broker's side of one connection, for a unit test: reads and writes packets.
    struct FakeBroker {
        socket: TcpStream,
        rbuf: BytesMut,
    }

    impl FakeBroker {
        /// The next packet, or None if none comes within `wait`.
        async fn next(&mut self, wait: Duration) -> Option<Packet> {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                match Packet::read(&mut self.rbuf, None) {
                    Ok(p) => return Some(p),
                    Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => panic!("bad packet from the publisher: {e}"),
                }
                let read = tokio::time::timeout_at(deadline, self.socket.read_buf(&mut self.rbuf));
                match read.await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return None,
                }
            }
        }

        async fn send(&mut self, packet: Packet) {
            let mut buf = BytesMut::new();
            packet.write(&mut buf, None).unwrap();
            self.socket.write_all(&buf).await.unwrap();
        }

        /// The payload and packet id of the next publish.
        async fn publish(&mut self) -> (String, u16) {
            match self.next(Duration::from_secs(5)).await {
                Some(Packet::Publish(p)) => {
                    (String::from_utf8(p.payload.to_vec()).unwrap(), p.pkid)
                }
                other => panic!("expected a PUBLISH, got {other:?}"),
            }
        }
    }

    /// One batch of QoS 1 publishes against a broker whose Receive Maximum is 2: they
    /// leave in order, never more than two unacknowledged, and when the connection drops,
    /// those confirmed are Ok and the rest fail, so that the action retries only those.
    #[tokio::test]
    async fn a_batch_keeps_the_window_and_order_and_fails_only_the_unconfirmed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = ExternalConfig::for_test(&format!("mqtt://127.0.0.1:{port}"));
        let dialer = Arc::new(Dialer::new(&config).unwrap());
        let cancel = CancellationToken::new();
        let publisher =
            ConfirmedPublisher::start(Arc::new(config), dialer, "weir-pub".into(), cancel.clone());
        let batch: Vec<Outgoing> = (0..5)
            .map(|i| ("out".to_owned(), Bytes::from(i.to_string())))
            .collect();
        let published = tokio::spawn({
            let publisher = publisher.clone();
            async move { publisher.publish_batch(batch, QoS::AtLeastOnce).await }
        });

        let (socket, _) = listener.accept().await.unwrap();
        let mut broker = FakeBroker {
            socket,
            rbuf: BytesMut::new(),
        };
        assert!(matches!(
            broker.next(Duration::from_secs(5)).await,
            Some(Packet::Connect(..))
        ));
        let properties = ConnAckProperties {
            session_expiry_interval: None,
            receive_max: Some(2),
            max_qos: None,
            retain_available: None,
            max_packet_size: None,
            assigned_client_identifier: None,
            topic_alias_max: None,
            reason_string: None,
            user_properties: Vec::new(),
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: None,
            server_keep_alive: None,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        };
        broker
            .send(Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::Success,
                properties: Some(properties),
            }))
            .await;
        let (a, a_id) = broker.publish().await;
        let (b, b_id) = broker.publish().await;
        assert_eq!((a.as_str(), b.as_str()), ("0", "1"));
        // The window is full: nothing more until an acknowledgement.
        assert!(broker.next(Duration::from_millis(300)).await.is_none());
        broker.send(Packet::PubAck(PubAck::new(a_id, None))).await;
        broker.send(Packet::PubAck(PubAck::new(b_id, None))).await;
        let (c, c_id) = broker.publish().await;
        let (d, _) = broker.publish().await;
        assert_eq!((c.as_str(), d.as_str()), ("2", "3"));
        assert!(broker.next(Duration::from_millis(300)).await.is_none());
        broker.send(Packet::PubAck(PubAck::new(c_id, None))).await;
        // The connection drops with "3" unacknowledged and "4" not yet sent.
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(broker);
        drop(listener);

        let results = published.await.unwrap();
        let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [true, true, true, false, false], "{results:?}");
        let why = results[3].as_ref().unwrap_err().to_string();
        assert!(why.contains("failed"), "{why}");
        cancel.cancel();
    }
}
