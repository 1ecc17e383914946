//! Publishing to an external broker with confirmation: the republish action's output
//! counts as delivered only when the broker acknowledged it (PUBACK for QoS 1; for QoS 0,
//! when it was written to the connection).
//!
//! rumqttc's client does not say which publish a PUBACK answers, so weir keeps its own
//! connection for publishing, driven by one task that is the only one to hand publishes
//! to the client. The client writes them in the order it received them, and reports each
//! write with its packet id (`Outgoing::Publish(pkid)`), so the task matches writes to
//! waiting callers in order, and PUBACKs to callers by packet id. When the connection
//! fails, every waiting caller gets an error and the client's own retransmission queue is
//! emptied: the action retries from its disk buffer instead, so no publish is both
//! retried and retransmitted out of step with the callers.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::Packet;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Request};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Publishes in flight at most (written, not yet acknowledged).
const WINDOW: usize = 100;

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
    /// Connects with `options` (weir's broker settings, its own client id) and serves
    /// publishes until `cancel` fires.
    pub fn start(mut options: MqttOptions, cancel: CancellationToken) -> Self {
        options.set_clean_session(true);
        options.set_inflight(WINDOW as u16);
        let (tx, rx) = mpsc::channel(WINDOW);
        tokio::spawn(run(options, rx, cancel));
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

async fn run(options: MqttOptions, mut rx: mpsc::Receiver<Job>, cancel: CancellationToken) {
    let broker = format!(
        "{}:{}",
        options.broker_address().0,
        options.broker_address().1
    );
    let (client, mut eventloop) = AsyncClient::new(options, WINDOW * 2);
    eventloop.set_network_options(super::client::no_delay());
    // Handed to the client, not yet written, in order.
    let mut written: VecDeque<Reply> = VecDeque::new();
    // Written QoS 1 publishes by packet id.
    let mut unacked: HashMap<u16, Reply> = HashMap::new();
    let mut connected = false;
    let mut failures: u32 = 0;
    loop {
        let room = written.len() + unacked.len() < WINDOW;
        tokio::select! {
            _ = cancel.cancelled() => return,
            job = rx.recv(), if connected && room => {
                let Some(job) = job else { return };
                match client.try_publish(job.topic, job.qos, false, job.payload.to_vec()) {
                    Ok(()) => written.push_back(job.reply),
                    Err(e) => { let _ = job.reply.send(Err(e.to_string())); }
                }
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    failures = 0;
                    tracing::info!(broker = %broker, "publisher connected");
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(reply) = written.pop_front() {
                        if pkid == 0 {
                            let _ = reply.send(Ok(()));
                        } else {
                            unacked.insert(pkid, reply);
                        }
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(reply) = unacked.remove(&ack.pkid) {
                        let _ = reply.send(Ok(()));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    connected = false;
                    failures += 1;
                    // Everything not acknowledged fails back to its action; nothing is
                    // retransmitted behind the callers' backs.
                    eventloop.pending.retain(|r| !matches!(r, Request::Publish(_)));
                    let why = format!("connection to {broker} failed: {e}");
                    for reply in written.drain(..).chain(unacked.drain().map(|(_, r)| r)) {
                        let _ = reply.send(Err(why.clone()));
                    }
                    if failures == 1 || failures.is_multiple_of(20) {
                        tracing::warn!(broker = %broker, error = %e, "publisher connection failed");
                    }
                    let wait = Duration::from_millis(100 * u64::from(failures.min(50)));
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}
