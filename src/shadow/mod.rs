//! Device shadows, as AWS IoT defines them (docs/shadows.md): a desired, a reported and
//! a delta state per device, the classic shadow and named ones, over MQTT on AWS's topics,
//! over the HTTP API, and to the rules as messages.
//!
//! * `topic.rs`: which shadow a topic names, and where its answers go;
//! * `request.rs`: a request's payload checked, and AWS's error codes and texts;
//! * `document.rs`: what requests do to a document (merge, metadata, versions, delta);
//! * `store/`: where shadows are kept (this replica's disk, or the fleet's PostgreSQL),
//!   synced before an answer leaves;
//! * `batch.rs`: a batch of requests applied to its shadows and committed;
//! * `throttle.rs`: each thing's request rate;
//! * `service.rs`: the worker that takes requests in batches and publishes the answers;
//! * `reader.rs`: `get_thing_shadow()` in rules, reading the store.

mod batch;
pub mod document;
mod reader;
pub mod request;
mod service;
pub mod store;
#[cfg(test)]
mod tests;
mod throttle;
pub mod topic;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use weir_connectors::mqtt::OwnService;

use crate::config::ShadowSettings;
use crate::pipeline::Pipeline;
use batch::{Job, Reply};
pub use request::ShadowError;
use service::Worker;
use store::ShadowBackend;
pub use topic::{Op, ShadowId};

/// Requests queued for the worker, from MQTT and from HTTP each.
const QUEUE: usize = 1024;
/// How often deleted shadows' tombstones are looked at, to forget those past 48 hours.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// The shadow service: its store, and the queue of the HTTP API's requests.
pub struct Shadows {
    store: Arc<dyn ShadowBackend>,
    http: mpsc::Sender<Job>,
}

/// A page of a thing's named shadows.
pub struct Page {
    pub names: Vec<String>,
    /// Where the next page starts, when there is one.
    pub next: Option<String>,
}

impl Shadows {
    /// Opens the store (the fleet's PostgreSQL at `fleet`, or `<data_dir>/shadows/`),
    /// attaches the service to the pipeline (the request topics' messages come to it) and
    /// starts its worker.
    pub async fn start(
        settings: &ShadowSettings,
        data_dir: &Path,
        fleet: Option<&str>,
        pipeline: &Arc<Pipeline>,
        embedded: bool,
        stop: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let store: Arc<dyn ShadowBackend> = match fleet {
            Some(url) => Arc::new(store::postgres::Postgres::open(url).await?),
            None => Arc::new(store::local::Local::open(
                &data_dir.join("shadows"),
                settings.cache_bytes,
            )?),
        };
        let (mqtt_tx, mqtt_rx) = mpsc::channel(QUEUE);
        let (http_tx, http_rx) = mpsc::channel(QUEUE);
        pipeline.attach(OwnService {
            filters: topic::REQUEST_FILTERS,
            wants: |t| topic::request(t).is_some(),
            tx: mqtt_tx,
        });
        let metrics = pipeline.metrics().clone();
        metrics.shadow_documents.set(store.count() as i64);
        metrics.shadow_bytes.set(store.bytes() as i64);
        let worker = Worker {
            store: store.clone(),
            pipeline: pipeline.clone(),
            metrics,
            limits: document::Limits {
                max_bytes: settings.max_bytes,
            },
            max_shadows: settings.max_shadows as u64,
            embedded,
            throttle: throttle::Throttle::new(settings.requests_per_second_per_thing),
        };
        tokio::spawn(worker.run(mqtt_rx, http_rx));
        tokio::spawn(sweep(store.clone(), stop));
        Ok(Arc::new(Self {
            store,
            http: http_tx,
        }))
    }

    /// An HTTP request: its answer (the `/accepted` document), after the shadow's MQTT
    /// answers were published.
    pub async fn request(
        &self,
        id: ShadowId,
        op: Op,
        payload: Bytes,
    ) -> Result<Value, ShadowError> {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            id: Ok(id),
            op,
            payload,
            reply: Reply::Http(tx),
            received: Instant::now(),
        };
        if self.http.send(job).await.is_err() {
            return Err(ShadowError::internal());
        }
        rx.await.unwrap_or_else(|_| Err(ShadowError::internal()))
    }

    /// A page of a thing's named shadows, in name order, starting after `after`.
    pub async fn list(
        &self,
        thing: &str,
        after: Option<String>,
        size: usize,
    ) -> Result<Page, ShadowError> {
        match self.store.list(thing, after.as_deref(), size).await {
            Ok((names, more)) => {
                let next = more.then(|| names.last().cloned()).flatten();
                Ok(Page { names, next })
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "listing shadows failed");
                Err(ShadowError::internal())
            }
        }
    }

    /// What `get_thing_shadow()` in a rule reads through: the committed documents.
    pub fn reader(&self) -> Arc<dyn weir_engine::ShadowReader> {
        Arc::new(reader::Reader(self.store.clone()))
    }

    /// The epoch seconds of now, as answers say it.
    pub fn now() -> u64 {
        service::now_s()
    }
}

/// Forgets tombstones past their 48 hours, at start and then every hour.
async fn sweep(store: Arc<dyn ShadowBackend>, stop: CancellationToken) {
    loop {
        match store.sweep(service::now_s()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tombstones = n, "deleted shadows forgotten after 48 hours"),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "sweeping shadow tombstones failed")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}
