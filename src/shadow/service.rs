//! The shadow service's worker: requests from MQTT (through the pipeline) and from the
//! HTTP API, taken in batches, each batch applied in one store transaction and synced;
//! then, in order, every answer published (QoS 1, not retained), handed to the rules
//! that read its topic, and the HTTP callers answered; the MQTT requests are acknowledged
//! last, as their message is let go of.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use weir_connectors::metrics::Metrics;
use weir_connectors::mqtt::QoS;
use weir_engine::{Ack, Message};

use super::batch::{self, Job, Reply, Rules};
use super::document::Limits;
use super::request::ShadowError;
use super::store::ShadowBackend;
use super::throttle::{self, Throttle};
use super::topic::ShadowId;
use crate::pipeline::Pipeline;

/// Most requests applied in one transaction.
const BATCH: usize = 256;

pub struct Worker {
    pub store: Arc<dyn ShadowBackend>,
    pub pipeline: Arc<Pipeline>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub max_shadows: u64,
    /// Whether answers go to the rules here (embedded broker); an external broker sends
    /// them back to weir itself when a rule reads them.
    pub embedded: bool,
    /// Each thing's request rate.
    pub throttle: Throttle,
}

/// The epoch seconds of now.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Worker {
    fn rules(&self) -> Rules {
        Rules {
            limits: self.limits,
            max_shadows: self.max_shadows,
        }
    }

    /// Serves requests until both queues close.
    pub async fn run(
        mut self,
        mut mqtt: mpsc::Receiver<Arc<Message>>,
        mut http: mpsc::Receiver<Job>,
    ) {
        let mut msgs = Vec::new();
        let mut jobs = Vec::new();
        let (mut mqtt_open, mut http_open) = (true, true);
        while mqtt_open || http_open {
            tokio::select! {
                n = mqtt.recv_many(&mut msgs, BATCH), if mqtt_open => mqtt_open = n > 0,
                n = http.recv_many(&mut jobs, BATCH), if http_open => http_open = n > 0,
            }
            // What else is waiting joins this batch.
            while msgs.len() + jobs.len() < BATCH {
                match mqtt.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
            jobs.extend(msgs.drain(..).map(from_message));
            self.serve(std::mem::take(&mut jobs)).await;
        }
    }

    /// Applies a batch, commits it, publishes its answers and answers its callers.
    async fn serve(&mut self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let now = now_s();
        let refused = throttle::refused(&mut self.throttle, &jobs);
        let done = match batch::apply(&*self.store, &jobs, &refused, now, self.rules()).await {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "shadow requests failed: the store could not write them");
                jobs.iter()
                    .map(|j| batch::failed(j, ShadowError::internal(), now))
                    .collect()
            }
        };
        self.metrics.shadow_documents.set(self.store.count() as i64);
        self.metrics.shadow_bytes.set(self.store.bytes() as i64);
        let out: Vec<_> = done
            .iter()
            .flat_map(|d| d.published.iter().cloned())
            .collect();
        for r in self
            .pipeline
            .publisher()
            .publish_batch(out, QoS::AtLeastOnce)
            .await
        {
            if let Err(e) = r {
                tracing::warn!(error = %e, "a shadow answer could not be published");
            }
        }
        if self.embedded {
            let own = jobs.iter().zip(&done).flat_map(|(job, d)| {
                let client_id = match &job.reply {
                    Reply::Mqtt(m) => m.client_id.clone(),
                    Reply::Http(_) => None,
                };
                d.published
                    .iter()
                    .map(move |(t, p)| own_message(t, p.clone(), client_id.clone()))
            });
            self.pipeline.route_own(own.collect::<Vec<_>>()).await;
        }
        for (job, d) in jobs.into_iter().zip(done) {
            let outcome = d
                .result
                .as_ref()
                .map_or_else(|e| e.outcome(), |_| "accepted");
            self.metrics
                .shadow_requests
                .with_label_values(&[d.op.as_str(), outcome])
                .inc();
            self.metrics
                .shadow_latency
                .with_label_values(&[d.op.as_str()])
                .observe(job.received.elapsed().as_secs_f64());
            if let Reply::Http(tx) = job.reply {
                let _ = tx.send(d.result);
            }
            // An MQTT request's message is let go of here: its PUBACK leaves.
        }
    }
}

/// An answer as a message of weir's own, for the rules.
fn own_message(topic: &str, payload: Bytes, client_id: Option<String>) -> Message {
    Message {
        topic: topic.to_owned(),
        client_id,
        principal: None,
        source_ip: None,
        payload,
        received_at_ms: weir_engine::now_ms(),
        seq: weir_engine::next_seq(),
        properties: None,
        ack: Ack::default(),
        will: false,
    }
}

/// The job of an MQTT request.
fn from_message(m: Arc<Message>) -> Job {
    let (thing, name, op) =
        super::topic::request(&m.topic).expect("the pipeline hands on request topics only");
    let id = ShadowId::new(thing, name).map_err(|e| ShadowError::bad(&e.to_string()));
    Job {
        id,
        op,
        payload: m.payload.clone(),
        reply: Reply::Mqtt(m),
        received: Instant::now(),
    }
}
