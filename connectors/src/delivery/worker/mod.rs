//! The worker that drives one action, the same for every [`Sink`]: a bounded queue in
//! front, batches handed to the sink, the [`disk_buffer`](super::disk_buffer) for what the
//! sink did not take, retries with the action's [`RetryPolicy`], metrics, and the rule's
//! error action for what fails for good.
//!
//! ```text
//! queue ──▶ deliver_batch ──▶ Delivered ──▶ counted (the source message may be acknowledged)
//!   (bounded)     │
//!                 ├─ Retry ───▶ disk buffer ──▶ deliver_batch again, with backoff, in order
//!                 │             (every later output queues behind it)   │
//!                 │                                                      └─ past the deadline
//!                 └─ DeadLetter ──────────────────────────────────────────▶ error action
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::disk_buffer::DiskBuffer;
use super::{Delivery, Failure, Outcome, Reason, RetryPolicy, Sink, SinkContext};
use crate::metrics::Metrics;

/// What an action could not deliver, for the rule's error action.
#[derive(Debug, Clone)]
pub struct Undeliverable {
    pub delivery: Delivery,
    /// The action's label.
    pub label: String,
    pub error: Failure,
}

/// How a worker runs, besides its sink.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub policy: RetryPolicy,
    /// Outputs handed to the sink at once.
    pub batch: usize,
    /// The action's disk buffer directory.
    pub buffer_dir: std::path::PathBuf,
    /// The disk buffer's size limit; beyond it outputs are dead-lettered.
    pub buffer_max_bytes: u64,
    /// Cancelled when weir stops: a worker whose queue has closed stops draining its disk
    /// buffer then (the buffer waits for the next start).
    pub stop: tokio_util::sync::CancellationToken,
}

/// Outputs the worker takes from the head of its disk buffer at once.
const BUFFER_BATCH: usize = 256;

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
    fn show_buffer(&self, b: &DiskBuffer) {
        self.buffered_bytes.set(b.bytes() as i64);
        self.buffered.set(b.len() as i64);
    }
}

/// The worker's state besides its queue.
struct Worker<S> {
    sink: S,
    settings: WorkerSettings,
    m: WorkerMetrics,
    dead: DeadLetters,
    /// `None` when the buffer directory cannot be opened: failed outputs are then retried
    /// in memory, holding the queue back.
    buffer: Option<DiskBuffer>,
    /// Retry state of the buffer's head.
    head_attempts: u32,
    next_attempt: Instant,
}

/// Runs one action until its queue closes: deliver outputs in batches; what fails with a
/// retry-worthy error goes to the action's disk buffer (and every output after it, so the
/// sink sees them in order) and is retried from there with backoff; what fails for good,
/// outlives the retry deadline or does not fit in the buffer goes to `failed` (the rule's
/// error action). When the queue closes the worker delivers what is queued, then stops;
/// what is still buffered stays on disk for the next start (or the next worker of the same
/// action) to deliver.
pub async fn run_worker<S: Sink>(
    sink: S,
    mut queue: mpsc::Receiver<Delivery>,
    settings: WorkerSettings,
    ctx: SinkContext,
    metrics: Arc<Metrics>,
    failed: Option<mpsc::Sender<Undeliverable>>,
) {
    // The futures of what an idle worker is not doing are boxed, so that a waiting
    // worker (one per action of every rule) holds only its queue's `recv_many`.
    let buffer = match Box::pin(DiskBuffer::open(
        settings.buffer_dir.clone(),
        settings.buffer_max_bytes,
    ))
    .await
    {
        Ok(b) => {
            if b.corrupt_regions() > 0 {
                ctx.metrics
                    .action_buffer_corrupt
                    .with_label_values(&[&ctx.rule, &ctx.label])
                    .inc_by(b.corrupt_regions());
            }
            Some(b)
        }
        Err(e) => {
            tracing::error!(rule = %ctx.rule, action = %ctx.label, dir = %settings.buffer_dir.display(), error = %e, "cannot open the action's disk buffer; failed outputs are retried in memory");
            None
        }
    };
    let mut w = Worker {
        m: WorkerMetrics {
            metrics: metrics.clone(),
            rule: ctx.rule.clone(),
            label: ctx.label.clone(),
            series: Default::default(),
        },
        dead: DeadLetters {
            metrics,
            rule: ctx.rule,
            label: ctx.label,
            failed,
        },
        sink,
        settings,
        buffer,
        head_attempts: 0,
        next_attempt: Instant::now(),
    };
    if let Some(b) = w.buffer.as_ref().filter(|b| !b.is_empty()) {
        // What an earlier run left is counted from the start.
        w.m.show_buffer(b);
    }
    let batch_max = w.settings.batch.max(1);
    let tick_every = w.sink.tick_interval();
    let mut tick = tokio::time::interval(tick_every.unwrap_or(Duration::from_secs(3600)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Grows with the first outputs and is reused: an idle action holds no batch memory.
    let mut batch: Vec<Delivery> = Vec::new();
    let mut open = true;
    loop {
        let buffered = w.buffer.as_ref().is_some_and(|b| !b.is_empty());
        // A closed queue (the rule was replaced, deleted or weir is stopping) ends the
        // worker once the buffer is drained, or at once when weir is stopping.
        if !open && (!buffered || w.settings.stop.is_cancelled()) {
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
            _ = w.settings.stop.cancelled(), if !open => continue,
            _ = tokio::time::sleep_until(w.next_attempt), if buffered => {
                Box::pin(w.drain_head()).await;
                continue;
            }
            _ = tick.tick(), if tick_every.is_some() => {
                Box::pin(w.sink.tick()).await;
                continue;
            }
        }
        w.m.queued.set(queue.len() as i64);
        Box::pin(w.deliver(&batch)).await;
    }
    if let Some(b) = w.buffer {
        if !b.is_empty() {
            tracing::info!(rule = %w.dead.rule, action = %w.dead.label, outputs = b.len(), bytes = b.bytes(), "action stopped with outputs in its disk buffer; they are delivered at the next start");
        }
        b.release();
    }
    Box::pin(w.sink.close()).await;
}

impl<S: Sink> Worker<S> {
    /// Delivers a batch from the queue; what must be retried goes to the disk buffer.
    async fn deliver(&mut self, batch: &[Delivery]) {
        if let Some(b) = self.buffer.as_mut().filter(|b| !b.is_empty()) {
            // Behind a backlog: keep the order.
            let now = weir_engine::now_ms();
            let items: Vec<(&Delivery, i64)> = batch.iter().map(|d| (d, now)).collect();
            spill(b, &items, &self.dead).await;
            self.m.show_buffer(b);
            return;
        }
        self.m.in_flight.set(batch.len() as i64);
        let outcomes = one_each(self.sink.deliver_batch(batch).await, batch.len());
        self.m.in_flight.set(0);
        let now = weir_engine::now_ms();
        let mut retry: Vec<usize> = Vec::new();
        for (i, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                Outcome::Delivered => self.m.delivered(&batch[i], now),
                Outcome::Retry(f) => {
                    if f.reason != Reason::NotAttempted {
                        self.m.retries.inc();
                    }
                    if retry.is_empty() {
                        tracing::warn!(rule = %self.dead.rule, action = %self.dead.label, error = %f, "delivery failed; buffering and retrying");
                    }
                    retry.push(i);
                }
                Outcome::DeadLetter(f) => self.dead.send(batch[i].clone(), f, 1).await,
            }
        }
        if retry.is_empty() {
            return;
        }
        self.head_attempts = 1;
        self.next_attempt = Instant::now() + self.settings.policy.backoff(1);
        match self.buffer.as_mut() {
            Some(b) => {
                let now = weir_engine::now_ms();
                let items: Vec<(&Delivery, i64)> =
                    retry.iter().map(|&i| (&batch[i], now)).collect();
                spill(b, &items, &self.dead).await;
                self.m.show_buffer(b);
            }
            None => {
                let pending: Vec<Delivery> = retry.iter().map(|&i| batch[i].clone()).collect();
                self.retry_in_memory(pending).await;
            }
        }
    }

    /// One attempt at the head of the disk buffer: deliver what is due, dead-letter what
    /// expired.
    async fn drain_head(&mut self) {
        let policy = &self.settings.policy;
        let b = self.buffer.as_mut().expect("only called with a buffer");
        let head = match b.peek(BUFFER_BATCH).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(rule = %self.dead.rule, action = %self.dead.label, error = %e, "cannot read the disk buffer");
                self.next_attempt = Instant::now() + policy.max_backoff;
                return;
            }
        };
        let batch: Vec<Delivery> = head.iter().map(|s| s.delivery.clone()).collect();
        self.m.in_flight.set(batch.len() as i64);
        let outcomes = one_each(self.sink.deliver_batch(&batch).await, batch.len());
        self.m.in_flight.set(0);
        let now = weir_engine::now_ms();
        let attempts = self.head_attempts + 1;
        // Outputs are removed from the head in order: up to the first one to try again.
        let mut done = 0;
        let mut retry_error = None;
        for (s, outcome) in head.iter().zip(outcomes) {
            match outcome {
                Outcome::Delivered => self.m.delivered(&s.delivery, now),
                Outcome::Retry(f) => {
                    let age = Duration::from_millis((now - s.buffered_at_ms).max(0) as u64);
                    if policy.may_retry(attempts, age) {
                        retry_error = Some(f);
                        break;
                    }
                    let why = Failure::new(
                        Reason::RetriesExhausted,
                        format!(
                            "gave up after {attempts} attempts over {age:?}: {}",
                            f.message
                        ),
                    );
                    self.dead.send(s.delivery.clone(), why, attempts).await;
                }
                Outcome::DeadLetter(f) => self.dead.send(s.delivery.clone(), f, attempts).await,
            }
            done += 1;
        }
        if done > 0 {
            if let Err(e) = b.pop(done).await {
                tracing::error!(rule = %self.dead.rule, action = %self.dead.label, error = %e, "cannot record progress in the disk buffer");
            }
            self.head_attempts = 0;
        }
        match retry_error {
            Some(f) => {
                self.head_attempts += 1;
                self.m.retries.inc();
                let wait = policy.backoff(self.head_attempts);
                tracing::debug!(rule = %self.dead.rule, action = %self.dead.label, attempts = self.head_attempts, error = %f, ?wait, "buffered delivery failed, retrying");
                self.next_attempt = Instant::now() + wait;
            }
            None => self.next_attempt = Instant::now(),
        }
        self.m.show_buffer(b);
    }

    /// Without a disk buffer: retry in place, holding the queue (and so the rule) back.
    async fn retry_in_memory(&mut self, mut pending: Vec<Delivery>) {
        let policy = self.settings.policy.clone();
        let started = Instant::now();
        let mut attempts = 1;
        while !pending.is_empty() {
            tokio::time::sleep(policy.backoff(attempts)).await;
            attempts += 1;
            let outcomes = one_each(self.sink.deliver_batch(&pending).await, pending.len());
            let now = weir_engine::now_ms();
            let mut still = Vec::new();
            for (d, outcome) in pending.into_iter().zip(outcomes) {
                match outcome {
                    Outcome::Delivered => self.m.delivered(&d, now),
                    Outcome::Retry(_) if policy.may_retry(attempts, started.elapsed()) => {
                        self.m.retries.inc();
                        still.push(d);
                    }
                    Outcome::Retry(f) => {
                        let why = Failure::new(
                            Reason::RetriesExhausted,
                            format!("gave up after {attempts} attempts: {}", f.message),
                        );
                        self.dead.send(d, why, attempts).await
                    }
                    Outcome::DeadLetter(f) => self.dead.send(d, f, attempts).await,
                }
            }
            pending = still;
        }
    }
}

/// The sink's outcomes, one per output of a batch of `n`: a sink that gave fewer has its
/// missing ones tried again rather than lost.
fn one_each(mut outcomes: Vec<Outcome>, n: usize) -> Vec<Outcome> {
    debug_assert_eq!(outcomes.len(), n, "a sink gives one outcome per output");
    outcomes.truncate(n);
    while outcomes.len() < n {
        outcomes.push(Outcome::retry(
            Reason::NotAttempted,
            "the sink gave no outcome for this output",
        ));
    }
    outcomes
}

/// Where an action's undeliverable outputs go, counted and logged.
struct DeadLetters {
    metrics: Arc<Metrics>,
    rule: String,
    label: String,
    failed: Option<mpsc::Sender<Undeliverable>>,
}

impl DeadLetters {
    async fn send(&self, delivery: Delivery, error: Failure, attempts: u32) {
        let (rule, label) = (&self.rule, &self.label);
        self.metrics
            .action_dead_lettered
            .with_label_values(&[rule, label, error.reason.as_str()])
            .inc();
        tracing::warn!(%rule, action = %label, attempts, error = %error, "delivery failed; output dead-lettered");
        let u = Undeliverable {
            delivery,
            label: label.clone(),
            error,
        };
        match &self.failed {
            Some(tx) => {
                if tx.send(u).await.is_err() {
                    tracing::error!(%rule, action = %label, "error action is gone; output lost");
                }
            }
            None => {
                tracing::error!(%rule, action = %label, "no error action; output lost")
            }
        }
    }
}

/// Appends outputs to the disk buffer; what does not fit, or cannot be written, is
/// dead-lettered.
async fn spill(b: &mut DiskBuffer, items: &[(&Delivery, i64)], dead: &DeadLetters) {
    let (taken, error) = match b.append(items).await {
        Ok(n) => (
            n,
            Failure::new(
                Reason::BufferFull,
                format!("the action's disk buffer is full ({} bytes)", b.bytes()),
            ),
        ),
        Err(e) => (
            0,
            Failure::new(
                Reason::BufferIo,
                format!("cannot write the disk buffer: {e}"),
            ),
        ),
    };
    for (d, _) in &items[taken..] {
        dead.send((*d).clone(), error.clone(), 1).await;
    }
}

#[cfg(test)]
mod tests;
