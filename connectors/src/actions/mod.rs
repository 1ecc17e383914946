//! A rule's actions: where its outputs go.
//!
//! Each action is a config type (what the user writes in the rule's `actions` list, checked
//! by a pure [`ActionConfig::validate`] that the HTTP API calls before accepting a rule)
//! and a runtime value built from it ([`Action::build`]) that delivers one output per
//! attempt. [`run_worker`] drives one action: a bounded queue in front, batches handed to
//! the sink, a disk buffer ([`spool`]) for what the sink did not take, retries with the
//! shared [`RetryPolicy`], and the rule's error action for what still fails.
//!
//! Adding a sink means one variant here, one module beside this one, and nothing else.

pub mod kafka;
pub mod republish;
pub mod spool;
pub mod store;
pub mod webhook;

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use weir_engine::Message;
use weir_engine::template::{Template, TemplateError, TemplateExprs};

use crate::metrics::Metrics;
use crate::mqtt::Publisher;
use crate::retry::RetryPolicy;

/// An action as written in a rule: `{"republish": {...}}`, `{"webhook": {...}}`,
/// `{"object_store": {...}}`, `{"kafka": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionConfig {
    Republish(republish::RepublishConfig),
    Webhook(webhook::WebhookConfig),
    ObjectStore(store::ObjectStoreConfig),
    Kafka(kafka::KafkaConfig),
}

/// Why an action configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{action}: {message}")]
    Invalid {
        action: &'static str,
        message: String,
    },
    #[error(transparent)]
    Template(#[from] TemplateError),
}

impl ConfigError {
    pub(crate) fn invalid(action: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            action,
            message: message.into(),
        }
    }
}

impl ActionConfig {
    /// The action's type, as written in the rule.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Republish(_) => "republish",
            Self::Webhook(_) => "webhook",
            Self::ObjectStore(_) => "object_store",
            Self::Kafka(_) => "kafka",
        }
    }

    /// Checks the configuration without touching the network or the disk.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.collect_templates(&mut TemplateExprs::default())
    }

    /// Adds the expressions of the action's `${...}` templates to `exprs`, in the order in
    /// which [`Action::build`] adds them.
    pub fn collect_templates(&self, exprs: &mut TemplateExprs) -> Result<(), ConfigError> {
        self.templates(exprs).map(drop)
    }

    /// The action's templated parameters by name (`topic`, `url`, `headers.<name>`), their
    /// expressions added to `exprs` as [`Self::collect_templates`] adds them.
    pub fn templates(
        &self,
        exprs: &mut TemplateExprs,
    ) -> Result<Vec<(String, Template)>, ConfigError> {
        Ok(match self {
            Self::Republish(c) => vec![("topic".to_owned(), c.validate(exprs)?)],
            Self::Webhook(c) => {
                let (url, headers) = c.validate(exprs)?;
                let mut out = vec![("url".to_owned(), url)];
                out.extend(
                    headers
                        .into_iter()
                        .map(|(k, t)| (format!("headers.{k}"), t)),
                );
                out
            }
            Self::ObjectStore(c) => c
                .validate(exprs)?
                .map(|t| ("path".to_owned(), t))
                .into_iter()
                .collect(),
            Self::Kafka(c) => {
                let t = c.validate(exprs)?;
                let mut out = vec![("topic".to_owned(), t.topic)];
                out.extend(t.key.map(|k| ("key".to_owned(), k)));
                out.extend(
                    t.headers
                        .into_iter()
                        .map(|(k, v)| (format!("headers.{k}"), v)),
                );
                out
            }
        })
    }

    /// The retry policy the action asked for, or the default.
    pub fn retry(&self) -> RetryPolicy {
        match self {
            Self::Republish(_) | Self::ObjectStore(_) | Self::Kafka(_) => RetryPolicy::default(),
            Self::Webhook(c) => c.retry.clone().unwrap_or_default(),
        }
    }
}

/// What an action needs from the running service.
#[derive(Clone)]
pub struct ActionContext {
    pub rule: String,
    /// The action's label in metrics and error records: `<position>-<type>` or `error-<type>`.
    pub label: String,
    pub publisher: Publisher,
    pub http: reqwest::Client,
    /// Where file outputs go when their action names no URL.
    pub output_dir: std::path::PathBuf,
    /// The action's own directory for state that must survive a restart (staging files).
    pub state_dir: std::path::PathBuf,
}

/// One output on its way to an action.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub payload: Bytes,
    /// Values of the rule's template expressions for this output.
    pub params: Arc<Vec<Option<String>>>,
    pub source: Arc<Message>,
}

/// Why one delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    pub retryable: bool,
    /// A short reason from a closed set, used as a metrics label.
    pub reason: &'static str,
    pub message: String,
}

impl DeliveryError {
    pub fn retryable(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            reason,
            message: message.into(),
        }
    }

    pub fn fatal(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            reason,
            message: message.into(),
        }
    }
}

/// A built action.
pub enum Action {
    Republish(republish::Republish),
    Webhook(webhook::Webhook),
    Store(Box<store::ObjectSink>),
    Kafka(Box<kafka::Kafka>),
}

impl Action {
    /// Builds the action, adding its template expressions to `exprs` (the rule evaluates
    /// them for every output).
    pub async fn build(
        config: &ActionConfig,
        exprs: &mut TemplateExprs,
        ctx: &ActionContext,
    ) -> Result<Self, ConfigError> {
        Ok(match config {
            ActionConfig::Republish(c) => {
                Self::Republish(republish::Republish::new(c, exprs, ctx)?)
            }
            ActionConfig::Webhook(c) => Self::Webhook(webhook::Webhook::new(c, exprs, ctx)?),
            ActionConfig::ObjectStore(c) => {
                Self::Store(Box::new(store::ObjectSink::open(c, exprs, ctx).await?))
            }
            ActionConfig::Kafka(c) => Self::Kafka(Box::new(kafka::Kafka::new(c, exprs, ctx)?)),
        })
    }

    /// One attempt at each delivery of a batch, in order; one result per delivery.
    pub async fn deliver_batch(&mut self, batch: &[Delivery]) -> Vec<Result<(), DeliveryError>> {
        match self {
            Self::Kafka(a) => a.deliver_batch(batch).await,
            Self::Store(a) => a.deliver_batch(batch).await,
            Self::Republish(a) => a.deliver_batch(batch).await,
            Self::Webhook(a) => a.deliver_batch(batch).await,
        }
    }

    /// Whether the action keeps nothing between runs but its disk buffer, so that its
    /// worker can wait to be started until there is something to deliver. The object
    /// store stages files (and may have some from an earlier run to upload); Kafka runs a
    /// producer.
    pub fn is_stateless(&self) -> bool {
        matches!(self, Self::Republish(_) | Self::Webhook(_))
    }

    /// Whether the action needs [`Self::tick`]: the others are not woken every second.
    fn housekeeps(&self) -> bool {
        matches!(self, Self::Store(_))
    }

    /// Periodic housekeeping (rolling files by age).
    async fn tick(&mut self) -> Result<(), DeliveryError> {
        match self {
            Self::Store(a) => a.tick().await,
            _ => Ok(()),
        }
    }

    /// Called when the action stops: make everything delivered visible.
    async fn close(&mut self) -> Result<(), DeliveryError> {
        match self {
            Self::Store(a) => a.close().await,
            Self::Kafka(a) => {
                a.close().await;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Files (buffer segments, staging files) that some action of this process owns, so that
/// a sink adopting what earlier runs left never takes a file a running sink writes.
pub(crate) fn claimed() -> &'static std::sync::Mutex<std::collections::HashSet<std::path::PathBuf>>
{
    static CLAIMED: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashSet<std::path::PathBuf>>,
    > = std::sync::OnceLock::new();
    CLAIMED.get_or_init(Default::default)
}

/// A name prefix unique to this process and caller, sortable by the process's start time.
pub(crate) fn unique_owner() -> String {
    static PROCESS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let started = *PROCESS.get_or_init(weir_engine::now_ms);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{started:013}-{n:06}")
}

/// The reason of outputs given up on after their retry deadline or attempts ran out; the
/// error record's message carries the last error.
const RETRIES_EXHAUSTED: &str = "retries_exhausted";

/// The reason of outputs a batch left untried after an earlier one failed.
pub(crate) const NOT_ATTEMPTED: &str = "not_attempted";

/// Renders a template with a delivery's values.
pub(crate) fn render(t: &Template, d: &Delivery) -> String {
    t.render(&d.params)
}

/// What an action could not deliver, for the rule's error action.
#[derive(Debug, Clone)]
pub struct Undeliverable {
    pub delivery: Delivery,
    pub label: String,
    pub error: DeliveryError,
}

/// How a worker runs, besides its action.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub policy: RetryPolicy,
    /// Outputs handed to the action at once.
    pub batch: usize,
    /// The action's disk buffer directory.
    pub buffer_dir: std::path::PathBuf,
    /// The disk buffer's size limit; beyond it outputs are dead-lettered.
    pub buffer_max_bytes: u64,
    /// Cancelled when weir stops: a worker whose queue has closed stops draining its disk
    /// buffer then (the buffer waits for the next start).
    pub stop: tokio_util::sync::CancellationToken,
}

/// Per-action metric handles, made on first use: the series of an action that has not
/// delivered anything yet do not exist, so an idle rule costs less.
struct WorkerMetrics {
    metrics: Arc<Metrics>,
    rule: String,
    label: String,
    series: std::sync::OnceLock<Series>,
}

impl std::ops::Deref for WorkerMetrics {
    type Target = Series;
    fn deref(&self) -> &Series {
        self.series.get_or_init(|| {
            let labels = [self.rule.as_str(), self.label.as_str()];
            let m = &self.metrics;
            Series {
                delivered: m.action_delivered.with_label_values(&labels),
                latency: m.action_latency.with_label_values(&labels),
                retries: m.action_retries.with_label_values(&labels),
                queued: m.action_queued.with_label_values(&labels),
                in_flight: m.action_in_flight.with_label_values(&labels),
                buffered_bytes: m.action_buffered_bytes.with_label_values(&labels),
                buffered: m.action_buffered.with_label_values(&labels),
            }
        })
    }
}

struct Series {
    delivered: prometheus::IntCounter,
    latency: prometheus::Histogram,
    retries: prometheus::IntCounter,
    queued: prometheus::IntGauge,
    in_flight: prometheus::IntGauge,
    buffered_bytes: prometheus::IntGauge,
    buffered: prometheus::IntGauge,
}

impl Series {
    /// Counts an output the sink acknowledged at `now_ms`, and the time since its
    /// message arrived.
    fn delivered(&self, d: &Delivery, now_ms: i64) {
        self.delivered.inc();
        self.latency
            .observe((now_ms - d.source.received_at_ms).max(0) as f64 / 1000.0);
    }

    /// Shows what the disk buffer holds.
    fn show_buffer(&self, sp: &spool::Spool) {
        self.buffered_bytes.set(sp.bytes() as i64);
        self.buffered.set(sp.len() as i64);
    }
}

/// Runs one action until its queue closes: deliver outputs in batches; what fails with a
/// retry-worthy error goes to the action's disk buffer (and every output after it, so the
/// sink sees them in order) and is retried from there with backoff; what fails for good,
/// outlives the retry deadline or does not fit in the buffer goes to `failed` (the rule's
/// error action). When the queue closes the worker delivers what is queued, then stops;
/// what is still buffered stays on disk for the next start (or the next worker of the same
/// action) to deliver.
pub async fn run_worker(
    mut action: Action,
    mut queue: mpsc::Receiver<Delivery>,
    settings: WorkerSettings,
    ctx: ActionContext,
    metrics: Arc<Metrics>,
    failed: Option<mpsc::Sender<Undeliverable>>,
) {
    let m = WorkerMetrics {
        metrics: metrics.clone(),
        rule: ctx.rule.clone(),
        label: ctx.label.clone(),
        series: Default::default(),
    };
    let dead = DeadLetters {
        metrics: metrics.clone(),
        ctx: ctx.clone(),
        failed,
    };
    // The futures of what an idle worker is not doing are boxed, so that a waiting
    // worker (one per action of every rule) holds only its queue's `recv_many`.
    let mut spool = match Box::pin(spool::Spool::open(
        settings.buffer_dir.clone(),
        settings.buffer_max_bytes,
    ))
    .await
    {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(rule = %ctx.rule, action = %ctx.label, dir = %settings.buffer_dir.display(), error = %e, "cannot open the action's disk buffer; failed outputs are retried in memory");
            None
        }
    };
    if let Some(sp) = spool.as_ref().filter(|sp| !sp.is_empty()) {
        // What an earlier run left is counted from the start.
        m.show_buffer(sp);
    }
    let batch_max = settings.batch.max(1);
    let housekeeps = action.housekeeps();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Grows with the first outputs and is reused: an idle action holds no batch memory.
    let mut batch: Vec<Delivery> = Vec::new();
    // Retry state of the buffer's head.
    let mut head_attempts: u32 = 0;
    let mut next_attempt = tokio::time::Instant::now();
    let mut open = true;
    loop {
        let buffered = spool.as_ref().is_some_and(|s| !s.is_empty());
        // A closed queue (the rule was replaced, deleted or weir is stopping) ends the
        // worker once the buffer is drained, or at once when weir is stopping.
        if !open && (!buffered || settings.stop.is_cancelled()) {
            break;
        }
        batch.clear();
        tokio::select! {
            n = queue.recv_many(&mut batch, batch_max), if open => {
                if n == 0 {
                    open = false;
                    continue;
                }
            }
            _ = settings.stop.cancelled(), if !open => continue,
            _ = tokio::time::sleep_until(next_attempt), if buffered => {
                let sp = spool.as_mut().expect("buffered");
                Box::pin(drain_head(&mut action, sp, &settings.policy, &m, &dead, &mut head_attempts, &mut next_attempt)).await;
                m.show_buffer(sp);
                continue;
            }
            _ = tick.tick(), if housekeeps => {
                if let Err(e) = Box::pin(action.tick()).await {
                    tracing::warn!(rule = %ctx.rule, action = %ctx.label, error = %e, "action housekeeping failed");
                }
                continue;
            }
        }
        m.queued.set(queue.len() as i64);
        if let Some(sp) = spool.as_mut().filter(|s| !s.is_empty()) {
            // Behind a backlog: keep the order.
            let now = weir_engine::now_ms();
            let items: Vec<(&Delivery, i64)> = batch.iter().map(|d| (d, now)).collect();
            Box::pin(spill(sp, &items, &dead)).await;
            m.show_buffer(sp);
            continue;
        }
        m.in_flight.set(batch.len() as i64);
        let results = Box::pin(action.deliver_batch(&batch)).await;
        m.in_flight.set(0);
        let now = weir_engine::now_ms();
        let mut retry: Vec<usize> = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(()) => m.delivered(&batch[i], now),
                Err(e) if e.retryable => {
                    if e.reason != NOT_ATTEMPTED {
                        m.retries.inc();
                    }
                    if retry.is_empty() {
                        tracing::warn!(rule = %ctx.rule, action = %ctx.label, error = %e, "delivery failed; buffering and retrying");
                    }
                    retry.push(i);
                }
                Err(e) => Box::pin(dead.send(batch[i].clone(), e, 1)).await,
            }
        }
        if !retry.is_empty() {
            head_attempts = 1;
            next_attempt = tokio::time::Instant::now() + settings.policy.backoff(1);
            match spool.as_mut() {
                Some(sp) => {
                    let now = weir_engine::now_ms();
                    let items: Vec<(&Delivery, i64)> =
                        retry.iter().map(|&i| (&batch[i], now)).collect();
                    Box::pin(spill(sp, &items, &dead)).await;
                    m.show_buffer(sp);
                }
                None => {
                    let pending: Vec<Delivery> = retry.iter().map(|&i| batch[i].clone()).collect();
                    Box::pin(retry_in_memory(
                        &mut action,
                        pending,
                        &settings.policy,
                        &m,
                        &dead,
                    ))
                    .await;
                }
            }
        }
    }
    if let Some(sp) = spool {
        if !sp.is_empty() {
            tracing::info!(rule = %ctx.rule, action = %ctx.label, outputs = sp.len(), bytes = sp.bytes(), "action stopped with outputs in its disk buffer; they are delivered at the next start");
        }
        sp.release();
    }
    if let Err(e) = Box::pin(action.close()).await {
        tracing::error!(rule = %ctx.rule, action = %ctx.label, error = %e, "closing the action failed");
    }
}

/// Where an action's undeliverable outputs go, counted and logged.
struct DeadLetters {
    metrics: Arc<Metrics>,
    ctx: ActionContext,
    failed: Option<mpsc::Sender<Undeliverable>>,
}

impl DeadLetters {
    async fn send(&self, delivery: Delivery, error: DeliveryError, attempts: u32) {
        let ctx = &self.ctx;
        self.metrics
            .action_dead_lettered
            .with_label_values(&[&ctx.rule, &ctx.label, error.reason])
            .inc();
        tracing::warn!(rule = %ctx.rule, action = %ctx.label, attempts, error = %error, "delivery failed; output dead-lettered");
        let u = Undeliverable {
            delivery,
            label: ctx.label.clone(),
            error,
        };
        match &self.failed {
            Some(tx) => {
                if tx.send(u).await.is_err() {
                    tracing::error!(rule = %ctx.rule, action = %ctx.label, "error action is gone; output lost");
                }
            }
            None => {
                tracing::error!(rule = %ctx.rule, action = %ctx.label, "no error action; output lost")
            }
        }
    }
}

/// Appends outputs to the disk buffer; what does not fit, or cannot be written, is
/// dead-lettered.
async fn spill(sp: &mut spool::Spool, items: &[(&Delivery, i64)], dead: &DeadLetters) {
    let (taken, error) = match sp.append(items).await {
        Ok(n) => (
            n,
            DeliveryError::fatal(
                "buffer_full",
                format!("the action's disk buffer is full ({} bytes)", sp.bytes()),
            ),
        ),
        Err(e) => (
            0,
            DeliveryError::fatal("buffer_io", format!("cannot write the disk buffer: {e}")),
        ),
    };
    for (d, _) in &items[taken..] {
        dead.send((*d).clone(), error.clone(), 1).await;
    }
}

/// One attempt at the head of the disk buffer: deliver what is due, drop what expired.
async fn drain_head(
    action: &mut Action,
    sp: &mut spool::Spool,
    policy: &RetryPolicy,
    m: &WorkerMetrics,
    dead: &DeadLetters,
    head_attempts: &mut u32,
    next_attempt: &mut tokio::time::Instant,
) {
    let head = match sp.peek(256).await {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(rule = %dead.ctx.rule, action = %dead.ctx.label, error = %e, "cannot read the disk buffer");
            *next_attempt = tokio::time::Instant::now() + policy.max_backoff;
            return;
        }
    };
    let batch: Vec<Delivery> = head.iter().map(|s| s.delivery.clone()).collect();
    m.in_flight.set(batch.len() as i64);
    let results = action.deliver_batch(&batch).await;
    m.in_flight.set(0);
    let now = weir_engine::now_ms();
    // Outputs are removed from the head in order: up to the first one to try again.
    let mut done = 0;
    let mut retry_error = None;
    for (s, r) in head.iter().zip(results) {
        match r {
            Ok(()) => m.delivered(&s.delivery, now),
            Err(e) if e.retryable => {
                let age = std::time::Duration::from_millis((now - s.spooled_at_ms).max(0) as u64);
                if policy.may_retry(*head_attempts + 1, age) {
                    retry_error = Some(e);
                    break;
                }
                let why = DeliveryError::fatal(
                    RETRIES_EXHAUSTED,
                    format!(
                        "gave up after {} attempts over {age:?}: {}",
                        *head_attempts + 1,
                        e.message
                    ),
                );
                dead.send(s.delivery.clone(), why, *head_attempts + 1).await;
            }
            Err(e) => dead.send(s.delivery.clone(), e, *head_attempts + 1).await,
        }
        done += 1;
    }
    if done > 0 {
        if let Err(e) = sp.pop(done).await {
            tracing::error!(rule = %dead.ctx.rule, action = %dead.ctx.label, error = %e, "cannot record progress in the disk buffer");
        }
        *head_attempts = 0;
    }
    match retry_error {
        Some(e) => {
            *head_attempts += 1;
            m.retries.inc();
            let wait = policy.backoff(*head_attempts);
            tracing::debug!(rule = %dead.ctx.rule, action = %dead.ctx.label, attempts = *head_attempts, error = %e, ?wait, "buffered delivery failed, retrying");
            *next_attempt = tokio::time::Instant::now() + wait;
        }
        None => *next_attempt = tokio::time::Instant::now(),
    }
}

/// Without a disk buffer: retry in place, holding the queue (and so the rule) back.
async fn retry_in_memory(
    action: &mut Action,
    mut pending: Vec<Delivery>,
    policy: &RetryPolicy,
    m: &WorkerMetrics,
    dead: &DeadLetters,
) {
    let started = tokio::time::Instant::now();
    let mut attempts = 1;
    while !pending.is_empty() {
        tokio::time::sleep(policy.backoff(attempts)).await;
        attempts += 1;
        let results = action.deliver_batch(&pending).await;
        let now = weir_engine::now_ms();
        let mut still = Vec::new();
        for (d, r) in pending.into_iter().zip(results) {
            match r {
                Ok(()) => m.delivered(&d, now),
                Err(e) if e.retryable && policy.may_retry(attempts, started.elapsed()) => {
                    m.retries.inc();
                    still.push(d);
                }
                Err(e) if e.retryable => {
                    let why = DeliveryError::fatal(
                        RETRIES_EXHAUSTED,
                        format!("gave up after {attempts} attempts: {}", e.message),
                    );
                    dead.send(d, why, attempts).await
                }
                Err(e) => dead.send(d, e, attempts).await,
            }
        }
        pending = still;
    }
}
