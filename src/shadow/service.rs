//! The shadow service's worker: requests from MQTT (through the pipeline) and from the
//! HTTP API, taken in batches, each batch applied in one store transaction and synced;
//! then, in order, every answer published (QoS 1, not retained), handed to the rules
//! that read its topic, and the HTTP callers answered; the MQTT requests are acknowledged
//! last, as their message is let go of.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use weir_connectors::metrics::Metrics;
use weir_connectors::mqtt::QoS;
use weir_engine::{Ack, Message};

use super::document::{self, Limits};
use super::request::{self, ShadowError};
use super::store::{ShadowStore, Writes};
use super::topic::{Op, ShadowId};
use crate::pipeline::Pipeline;

/// Most requests applied in one transaction.
const BATCH: usize = 256;

/// What a request came by, and where its answer goes.
pub enum Reply {
    /// A PUBLISH on a request topic: answers on `<topic>/<answer>`; acknowledged when
    /// the message is let go of.
    Mqtt(Arc<Message>),
    /// An HTTP request: its answer, and its MQTT answers on the shadow's topics.
    Http(oneshot::Sender<Result<Value, ShadowError>>),
}

/// One request.
pub struct Job {
    pub id: Result<ShadowId, ShadowError>,
    pub op: Op,
    pub payload: Bytes,
    pub reply: Reply,
    pub received: Instant,
}

/// A request's result: the messages it publishes (topic, answer) and what an HTTP caller
/// gets.
struct Done {
    op: Op,
    published: Vec<(String, Bytes)>,
    result: Result<Value, ShadowError>,
}

pub struct Worker {
    pub store: Arc<ShadowStore>,
    pub pipeline: Arc<Pipeline>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub max_shadows: u64,
    /// Whether answers go to the rules here (embedded broker); an external broker sends
    /// them back to weir itself when a rule reads them.
    pub embedded: bool,
}

/// The epoch seconds of now.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Worker {
    /// Serves requests until both queues close.
    pub async fn run(self, mut mqtt: mpsc::Receiver<Arc<Message>>, mut http: mpsc::Receiver<Job>) {
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
    async fn serve(&self, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let now = now_s();
        let store = self.store.clone();
        let (limits, max) = (self.limits, self.max_shadows);
        let (jobs, results) = tokio::task::spawn_blocking(move || {
            let results = store.write(|w| {
                jobs.iter()
                    .map(|j| apply(w, j, now, limits, max, store.count()))
                    .collect::<anyhow::Result<Vec<_>>>()
            });
            (jobs, results)
        })
        .await
        .expect("the shadow batch does not panic");
        let done = match results {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "shadow requests failed: the store could not write them");
                jobs.iter()
                    .map(|j| failed(j, ShadowError::internal(), now))
                    .collect()
            }
        };
        self.metrics.shadow_documents.set(self.store.count() as i64);
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
            if self.embedded {
                let client_id = match &job.reply {
                    Reply::Mqtt(m) => m.client_id.clone(),
                    Reply::Http(_) => None,
                };
                for (topic, payload) in &d.published {
                    self.pipeline
                        .route_own(own_message(topic, payload.clone(), client_id.clone()))
                        .await;
                }
            }
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

/// Where a request's answers go: `<request topic>/<answer>`.
fn answer_topic(job: &Job, answer: &str) -> String {
    match (&job.reply, &job.id) {
        (Reply::Mqtt(m), _) => format!("{}/{answer}", m.topic),
        (Reply::Http(_), Ok(id)) => id.answer(job.op, answer),
        (Reply::Http(_), Err(_)) => String::new(),
    }
}

/// A request refused: its `/rejected` (MQTT only: an HTTP caller gets the error).
fn failed(job: &Job, e: ShadowError, now: u64) -> Done {
    let published = match &job.reply {
        Reply::Mqtt(_) => vec![(
            answer_topic(job, "rejected"),
            bytes(&document::rejected(
                &e,
                now,
                request::token_of(&job.payload).as_deref(),
            )),
        )],
        Reply::Http(_) => Vec::new(),
    };
    Done {
        op: job.op,
        published,
        result: Err(e),
    }
}

/// One request applied in the batch's transaction; an error of the store fails the batch.
fn apply(
    w: &mut Writes<'_>,
    job: &Job,
    now: u64,
    limits: Limits,
    max_shadows: u64,
    count: u64,
) -> anyhow::Result<Done> {
    let id = match &job.id {
        Ok(id) => id,
        Err(e) => return Ok(failed(job, e.clone(), now)),
    };
    let stored = w.get(id)?.filter(|r| !r.expired(now));
    let result = match job.op {
        Op::Get => request::parse_plain(&job.payload).and_then(|token| {
            document::get(stored.as_ref(), id.shown(), now, token.as_deref())
                .map(|doc| vec![(answer_topic(job, "accepted"), doc)])
        }),
        Op::Delete => {
            let token = request::parse_plain(&job.payload).ok().flatten();
            match document::delete(stored.as_ref(), id.shown(), now, token.as_deref()) {
                Ok((tombstone, accepted)) => {
                    w.put(id, &tombstone)?;
                    Ok(vec![(answer_topic(job, "accepted"), accepted)])
                }
                Err(e) => Err(e),
            }
        }
        Op::Update => {
            let updated = request::parse_update(&job.payload)
                .and_then(|req| document::update(stored.as_ref(), &req, now, limits));
            match updated {
                Ok(_)
                    if stored.is_none()
                        && w.get(id)?.is_none()
                        && count as i64 + w.added() >= max_shadows as i64 =>
                {
                    Err(ShadowError::new(
                        429,
                        "Too Many Requests: weir holds as many shadows as --max-shadows allows",
                    ))
                }
                Ok(u) => {
                    w.put(id, &u.record)?;
                    let mut out = vec![(answer_topic(job, "accepted"), u.accepted)];
                    if let Some(delta) = u.delta {
                        out.push((answer_topic(job, "delta"), delta));
                    }
                    out.push((answer_topic(job, "documents"), u.documents));
                    Ok(out)
                }
                Err(e) => Err(e),
            }
        }
    };
    Ok(match result {
        Ok(mut answers) => {
            let published = answers.iter().map(|(t, v)| (t.clone(), bytes(v))).collect();
            Done {
                op: job.op,
                published,
                result: Ok(answers.swap_remove(0).1),
            }
        }
        Err(e) => failed(job, e, now),
    })
}

fn bytes(v: &Value) -> Bytes {
    Bytes::from(v.to_string())
}
