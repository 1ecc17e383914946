//! An action that passed validation ([`Action`]), whatever its sink: its templates, its
//! retry policy, and how to build its sink and run the sink's worker.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use weir_engine::template::Template;

use crate::delivery::{
    ConfigError, Delivery, RetryPolicy, Sink, SinkConfig, SinkContext, Undeliverable, Validated,
    WorkerSettings, run_worker,
};
use crate::metrics::Metrics;

/// An action that passed validation: ready to be built, whatever its sink.
pub struct Action {
    kind: &'static str,
    /// Whether it reaches its destination through an operator's named connection, which
    /// the policy on inline destinations does not hold.
    trusted: bool,
    templates: Vec<(String, Template)>,
    retry: RetryPolicy,
    keeps_state: bool,
    builder: Arc<dyn Build>,
}

impl Action {
    /// The action of the sink `C`, from its validated configuration.
    pub(crate) fn new<C: SinkConfig>(v: Validated<<C::Sink as Sink>::Settings>) -> Self {
        Self {
            kind: C::KIND,
            trusted: false,
            templates: v.templates,
            retry: v.retry,
            keeps_state: C::Sink::KEEPS_STATE,
            builder: Arc::new(Builder::<C::Sink>(v.settings)),
        }
    }

    /// The action's type, as written in the rule.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// Marks the action as reaching its destination through a named connection.
    pub fn trusted(mut self) -> Self {
        self.trusted = true;
        self
    }

    /// Whether the action goes through a named connection.
    pub fn is_trusted(&self) -> bool {
        self.trusted
    }

    /// The templated parameters by name (`topic`, `url`, `headers.<name>`).
    pub fn templates(&self) -> &[(String, Template)] {
        &self.templates
    }

    /// How failed deliveries are retried.
    pub fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    /// Whether the sink keeps state of its own between runs (see [`Sink::KEEPS_STATE`]).
    pub fn keeps_state(&self) -> bool {
        self.keeps_state
    }

    /// Builds the sink (this may connect or create directories) and returns its worker,
    /// ready to run.
    pub async fn build(&self, ctx: &SinkContext) -> Result<ActionWorker, ConfigError> {
        self.builder.build(ctx).await
    }
}

/// The inputs of an action's worker.
pub struct WorkerInputs {
    pub queue: mpsc::Receiver<Delivery>,
    pub settings: WorkerSettings,
    pub ctx: SinkContext,
    pub metrics: Arc<Metrics>,
    /// The rule's error action, for what fails for good.
    pub failed: Option<mpsc::Sender<Undeliverable>>,
}

/// A built sink, waiting for its worker to start.
pub struct ActionWorker(Box<dyn FnOnce(WorkerInputs) -> BoxFuture<'static, ()> + Send>);

impl ActionWorker {
    /// The worker's task: runs until its queue closes (see [`run_worker`]).
    pub fn run(self, inputs: WorkerInputs) -> BoxFuture<'static, ()> {
        (self.0)(inputs)
    }
}

/// Builds a sink from its settings, whatever its type.
trait Build: Send + Sync {
    fn build<'a>(
        &'a self,
        ctx: &'a SinkContext,
    ) -> BoxFuture<'a, Result<ActionWorker, ConfigError>>;
}

struct Builder<S: Sink>(S::Settings);

impl<S: Sink> Build for Builder<S> {
    fn build<'a>(
        &'a self,
        ctx: &'a SinkContext,
    ) -> BoxFuture<'a, Result<ActionWorker, ConfigError>> {
        Box::pin(async move {
            let sink = S::build(&self.0, ctx).await?;
            Ok(ActionWorker(Box::new(move |w: WorkerInputs| {
                Box::pin(run_worker(
                    sink, w.queue, w.settings, w.ctx, w.metrics, w.failed,
                )) as BoxFuture<'static, ()>
            })))
        })
    }
}
