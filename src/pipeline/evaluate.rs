//! A rule's evaluation of one batch, kept apart from everything else weir does: it runs on
//! a blocking thread, never on the threads that serve HTTP and MQTT; a panic inside it is
//! caught and fails the batch's messages (`internal_error`); one that takes longer than
//! the batch's time budget fails them too (`timeout`), and the rule waits for that
//! evaluation to end before it starts the next, so that one rule never holds more than
//! one thread. What the evaluation allocates is counted against the batch's memory budget
//! (see `weir_engine::memory`): a batch over it is run again in halves, and a message
//! over it on its own fails (`memory_budget`). The other rules and the API carry on
//! meanwhile.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use weir_engine::{Failure, FailureReason, Message, Outcome, Rule, memory};

/// What evaluates a batch: a rule, or in tests anything that behaves like one.
type Process = dyn Fn(&[Arc<Message>]) -> Outcome + Send + Sync;

/// How long one batch may take to evaluate, unless configured otherwise.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(10);

/// How much memory one batch may take to evaluate, unless configured otherwise.
pub const DEFAULT_MEMORY_BUDGET: usize = 256 << 20;

/// What one batch's evaluation may take.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub time: Duration,
    /// Bytes.
    pub memory: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            time: DEFAULT_BUDGET,
            memory: DEFAULT_MEMORY_BUDGET,
        }
    }
}

/// Evaluates a rule's batches one after the other.
pub(super) struct Evaluator {
    process: Arc<Process>,
    budget: Budget,
    /// An evaluation that outran its budget and still runs.
    overdue: Option<JoinHandle<()>>,
}

impl Evaluator {
    pub fn new(rule: Arc<Rule>, budget: Budget) -> Self {
        Self::with(
            Arc::new(move |msgs: &[Arc<Message>]| rule.process(msgs)),
            budget,
        )
    }

    fn with(process: Arc<Process>, budget: Budget) -> Self {
        Self {
            process,
            budget,
            overdue: None,
        }
    }

    /// The rule's outcome for `batch`.
    pub async fn run(&mut self, batch: &Arc<Vec<Arc<Message>>>) -> Outcome {
        if let Some(h) = self.overdue.take() {
            let _ = h.await;
        }
        let (process, msgs) = (self.process.clone(), batch.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let memory = self.budget.memory;
        let handle = tokio::task::spawn_blocking(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                let _scope = memory::Scope::enter(memory);
                process(&msgs)
            }));
            // The batch is released here, outside the scope.
            drop(msgs);
            let _ = tx.send(outcome);
        });
        match tokio::time::timeout(self.budget.time, rx).await {
            Ok(Ok(Ok(outcome))) => outcome,
            Ok(Ok(Err(panic))) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                tracing::error!(error = %what, "a rule's evaluation panicked; its batch failed");
                all_failed(
                    batch.len(),
                    FailureReason::Internal,
                    &format!("the rule's evaluation failed inside weir: {what}"),
                )
            }
            // The thread ended without an answer: only a panic the hook could not catch.
            Ok(Err(_)) => all_failed(
                batch.len(),
                FailureReason::Internal,
                "the rule's evaluation ended without a result",
            ),
            Err(_) => {
                self.overdue = Some(handle);
                all_failed(
                    batch.len(),
                    FailureReason::Timeout,
                    &format!(
                        "the rule took more than {:?} to evaluate a batch of {} messages",
                        self.budget.time,
                        batch.len()
                    ),
                )
            }
        }
    }
}

/// Every message of a batch of `n` failed for `reason`.
fn all_failed(n: usize, reason: FailureReason, message: &str) -> Outcome {
    Outcome {
        failures: (0..n)
            .map(|index| Failure {
                index,
                reason,
                message: message.to_owned(),
            })
            .collect(),
        ..Outcome::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Arc<Vec<Arc<Message>>> {
        Arc::new(
            (0..n)
                .map(|i| Arc::new(Message::new("t", format!("{{\"i\": {i}}}").into_bytes())))
                .collect(),
        )
    }

    #[tokio::test]
    async fn a_panic_fails_the_batch_and_the_next_batch_runs() {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = calls.clone();
        let mut e = Evaluator::with(
            Arc::new(move |msgs: &[Arc<Message>]| {
                if c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    panic!("index out of bounds in a kernel");
                }
                Outcome {
                    filtered_out: msgs.len(),
                    ..Outcome::default()
                }
            }),
            Budget::default(),
        );
        let out = e.run(&batch(3)).await;
        assert_eq!(out.failures.len(), 3);
        assert!(
            out.failures
                .iter()
                .all(|f| f.reason == FailureReason::Internal)
        );
        assert!(
            out.failures[0]
                .message
                .contains("index out of bounds in a kernel"),
            "{:?}",
            out.failures
        );
        let out = e.run(&batch(2)).await;
        assert_eq!((out.failures.len(), out.filtered_out), (0, 2));
    }

    #[tokio::test]
    async fn a_batch_over_its_budget_fails_and_the_rule_holds_one_thread() {
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (r, m) = (running.clone(), most.clone());
        let mut e = Evaluator::with(
            Arc::new(move |_: &[Arc<Message>]| {
                use std::sync::atomic::Ordering::SeqCst;
                let now = r.fetch_add(1, SeqCst) + 1;
                m.fetch_max(now, SeqCst);
                std::thread::sleep(Duration::from_millis(300));
                r.fetch_sub(1, SeqCst);
                Outcome::default()
            }),
            Budget {
                time: Duration::from_millis(50),
                ..Budget::default()
            },
        );
        for _ in 0..3 {
            let out = e.run(&batch(1)).await;
            assert_eq!(out.failures.len(), 1);
            assert_eq!(out.failures[0].reason, FailureReason::Timeout);
            assert!(out.failures[0].message.contains("took more than 50ms"));
        }
        assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_batch_over_its_memory_budget_runs_in_halves_and_a_message_over_it_fails() {
        let engine = weir_engine::Engine::new();
        let sql = "SELECT i, repeat(s, 1000) AS a, repeat(s, 1000) AS b, repeat(s, 1000) AS c, \
                   repeat(s, 1000) AS d, repeat(s, 1000) AS e FROM 't'";
        let rule = Rule::compile(&engine, sql, &[]).unwrap();
        let budget = Budget {
            memory: 4 << 20,
            ..Budget::default()
        };
        let mut e = Evaluator::new(Arc::new(rule), budget);
        let message = |i: usize, len: usize| {
            let s = "x".repeat(len);
            Arc::new(Message::new(
                "t",
                format!(r#"{{"i": {i}, "s": "{s}"}}"#).into_bytes(),
            ))
        };
        // 12 messages of 250 KB of output each: 3 MB of columns and as much of JSON, more
        // than the budget; each message fits, and so do all the outputs.
        let fits: Arc<Vec<_>> = Arc::new((0..12).map(|i| message(i, 50)).collect());
        let out = e.run(&fits).await;
        assert!(out.failures.is_empty(), "{:?}", out.failures);
        let indices: Vec<usize> = out.outputs.iter().map(|o| o.index).collect();
        assert_eq!(indices, (0..12).collect::<Vec<_>>());
        assert!(out.outputs.iter().all(|o| o.payload.len() > 250_000));
        // One message needs 5 MB on its own: it fails, and the others pass.
        let mut mixed: Vec<_> = (0..6).map(|i| message(i, 10)).collect();
        mixed[3] = message(3, 1000);
        let out = e.run(&Arc::new(mixed)).await;
        assert_eq!(out.outputs.len(), 5, "{:?}", out.failures);
        assert_eq!(out.failures.len(), 1);
        let f = &out.failures[0];
        assert_eq!((f.index, f.reason), (3, FailureReason::MemoryBudget));
        assert!(
            f.message.contains("its memory budget is 4.0 MiB"),
            "{}",
            f.message
        );
    }
}
