//! A rule's worker: takes the rule's messages in batches (up to `--batch-max-rows`,
//! waiting at most `--batch-linger` for a batch to fill, one wake-up per batch), runs the
//! rule over each batch, and hands every output to each of the rule's actions and every
//! failure, as an error record, to its error action. Messages are let go of once their
//! outputs are handed on, so a message that no action holds any more is acknowledged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use weir_connectors::delivery::Delivery;
use weir_connectors::metrics::Metrics;
use weir_engine::{FailureReason, Message, Rule, now_ms};

use super::error_records::{error_record, send_error};
use super::evaluate::Evaluator;

pub(super) struct RuleWorker {
    pub name: Arc<str>,
    pub rule: Arc<Rule>,
    pub rx: mpsc::Receiver<Arc<Message>>,
    pub actions: Vec<mpsc::Sender<Delivery>>,
    pub error_tx: Option<mpsc::Sender<Delivery>>,
    pub metrics: Arc<Metrics>,
    pub max_rows: usize,
    pub linger: Duration,
    pub budget: super::evaluate::Budget,
}

/// Runs a rule until its channel closes (the rule was replaced, deleted or weir stops).
pub(super) async fn run(mut w: RuleWorker) {
    let name: &str = &w.name;
    // The rule's series appear with its first message, and a failure reason's with its
    // first failure: an idle rule should cost little.
    let mut series = None;
    let mut failed: HashMap<FailureReason, prometheus::IntCounter> = HashMap::new();
    // Grows with the first messages and is reused: an idle rule holds no batch memory.
    let mut batch: Vec<Arc<Message>> = Vec::new();
    let mut evaluator = Evaluator::new(w.rule.clone(), w.budget);
    loop {
        batch.clear();
        let Some(first) = w.rx.recv().await else {
            break;
        };
        batch.push(first);
        // Take what is already queued; unless that fills the batch, sleep out the linger
        // time and take what came meanwhile. Sleeping rather than waiting on the queue
        // wakes the worker once per batch instead of once per message.
        let deadline = tokio::time::Instant::now() + w.linger;
        take_queued(&mut w.rx, &mut batch, w.max_rows);
        if batch.len() < w.max_rows && !w.linger.is_zero() && !w.rx.is_closed() {
            tokio::time::sleep_until(deadline).await;
            take_queued(&mut w.rx, &mut batch, w.max_rows);
        }
        let (matched, passed, filtered, latency) = series.get_or_insert_with(|| {
            let m = &w.metrics;
            (
                m.rule_matched.with_label_values(&[name]),
                m.rule_passed.with_label_values(&[name]),
                m.rule_filtered.with_label_values(&[name]),
                m.rule_latency.with_label_values(&[name]),
            )
        });
        matched.inc_by(batch.len() as u64);
        let batch_now = Arc::new(std::mem::take(&mut batch));
        let outcome = evaluator.run(&batch_now).await;
        let msgs = &batch_now;
        filtered.inc_by(outcome.filtered_out as u64);
        passed.inc_by(outcome.outputs.len() as u64);
        for out in outcome.outputs {
            let delivery = Delivery {
                payload: out.payload,
                params: Arc::new(out.params),
                source: msgs[out.index].clone(),
            };
            for tx in &w.actions {
                if tx.send(delivery.clone()).await.is_err() {
                    tracing::error!(rule = name, "an action stopped early; output lost");
                }
            }
        }
        for f in outcome.failures {
            failed
                .entry(f.reason)
                .or_insert_with(|| {
                    w.metrics
                        .rule_failed
                        .with_label_values(&[name, f.reason.as_str()])
                })
                .inc();
            let msg = &msgs[f.index];
            tracing::debug!(rule = name, topic = %msg.topic, reason = f.reason.as_str(), error = %f.message, "message failed");
            let record = error_record(name, None, f.reason.as_str(), &f.message, msg, None);
            Box::pin(send_error(&w.error_tx, name, record, msg.clone())).await;
        }
        let now = now_ms();
        for m in msgs.iter() {
            latency.observe((now - m.received_at_ms).max(0) as f64 / 1000.0);
        }
        // Let go of the messages now: one that no action holds is acknowledged. The
        // batch's memory is kept for the next one, unless an overdue evaluation holds it.
        batch = Arc::try_unwrap(batch_now).unwrap_or_default();
        batch.clear();
    }
    tracing::debug!(rule = name, "rule worker finished");
}

/// Moves queued messages into `batch` until it holds `max` or the queue is empty.
fn take_queued(rx: &mut mpsc::Receiver<Arc<Message>>, batch: &mut Vec<Arc<Message>>, max: usize) {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(m) => batch.push(m),
            Err(_) => break,
        }
    }
}
