//! The sinks a rule's actions deliver to, one folder each with the same anatomy:
//! `mod.rs` (the running [`Sink`]), `config.rs` (the [`SinkConfig`] a rule writes, checked
//! once) and `tests.rs`. The contract they implement and the worker that drives them are
//! in [`crate::delivery`].
//!
//! This file is the registry: the list below is what makes `{"<kind>": {...}}` a valid
//! action in a rule. Adding a sink is its folder, its `mod` line here and one line in the
//! list (see `docs/extending.md`).

pub mod connection;
pub mod kafka;
pub mod object_store;
pub mod republish;
pub mod webhook;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use weir_engine::template::{Template, TemplateExprs};

use crate::delivery::secrets::{self, SecretMap};
use crate::delivery::{
    ConfigError, Delivery, Policy, RetryPolicy, Sink, SinkConfig, SinkContext, Undeliverable,
    Validated, WorkerSettings, run_worker,
};
use crate::metrics::Metrics;

/// Declares the registry: the [`ActionConfig`] enum, one variant per sink, and its
/// dispatch to each sink's [`SinkConfig`].
macro_rules! registry {
    ($($variant:ident($config:ty)),* $(,)?) => {
        /// An action as written in a rule: `{"republish": {...}}`, `{"webhook": {...}}`,
        /// `{"object_store": {...}}`, `{"kafka": {...}}`. This is the form rules are
        /// stored and listed in; [`ActionConfig::validate`] checks it.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case", deny_unknown_fields)]
        pub enum ActionConfig {
            $($variant($config),)*
        }

        impl ActionConfig {
            /// The action's type, as written in the rule.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => <$config as SinkConfig>::KIND,)*
                }
            }

            /// The maps of the action's configuration whose values may be secrets.
            fn secret_maps(&mut self) -> Vec<SecretMap<'_>> {
                match self {
                    $(Self::$variant(c) => c.secret_maps(),)*
                }
            }

            /// Checks the action without touching the network and parses its templates,
            /// whose expressions go to `exprs` (the rule evaluates them for every
            /// output), then checks it against the operator's `policy`. Called once per
            /// rule submission.
            pub fn validate(
                &self,
                exprs: &mut TemplateExprs,
                policy: &Policy,
            ) -> Result<Action, ConfigError> {
                if let Some(name) = self.connection() {
                    return Err(ConfigError::invalid(
                        self.kind(),
                        format!("the connection '{name}' was not resolved"),
                    ));
                }
                match self {
                    $(Self::$variant(c) => {
                        let v = c.validate(exprs)?;
                        c.check_policy(policy)?;
                        Ok(Action::new::<$config>(v))
                    })*
                }
            }

            /// [`ActionConfig::validate`] for an action resolved with an operator's named
            /// connection: not held to the policy on inline destinations.
            pub fn validate_trusted(&self, exprs: &mut TemplateExprs) -> Result<Action, ConfigError> {
                match self {
                    $(Self::$variant(c) => Ok(Action::new::<$config>(c.validate(exprs)?).trusted()),)*
                }
            }
        }
    };
}

registry! {
    Republish(republish::RepublishConfig),
    Webhook(webhook::WebhookConfig),
    ObjectStore(object_store::ObjectStoreConfig),
    Kafka(kafka::KafkaConfig),
}

impl ActionConfig {
    /// The action as an API answer shows it: its secrets
    /// [`REDACTED`](crate::delivery::secrets::REDACTED).
    pub fn redacted(&self) -> Self {
        secrets::redacted(self, Self::secret_maps)
    }

    /// Gives the secrets this action sends back as
    /// [`REDACTED`](crate::delivery::secrets::REDACTED) their values in `old`, the action as
    /// stored (if it is of the same type); `Err` names a secret that has none.
    pub fn restore_secrets(&mut self, old: Option<&ActionConfig>) -> Result<(), String> {
        let old = old.filter(|o| o.kind() == self.kind());
        secrets::restore(self, old, Self::secret_maps)
    }
}

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
    fn new<C: SinkConfig>(v: Validated<<C::Sink as Sink>::Settings>) -> Self {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A registered sink's kind is the key rules write it under.
    #[test]
    fn every_sink_is_written_under_its_kind() {
        for action in [
            json!({"republish": {"topic": "t"}}),
            json!({"webhook": {"url": "http://127.0.0.1:9/"}}),
            json!({"object_store": {"url": "file:///tmp/weir"}}),
            json!({"kafka": {"bootstrap_servers": "127.0.0.1:9092", "topic": "t"}}),
        ] {
            let config: ActionConfig = serde_json::from_value(action.clone()).unwrap();
            let key = action.as_object().unwrap().keys().next().unwrap().clone();
            assert_eq!(config.kind(), key);
            let checked = config
                .validate(&mut TemplateExprs::default(), &Policy::allow_all())
                .unwrap();
            assert_eq!(checked.kind(), key);
            let stored = serde_json::to_value(&config).unwrap();
            assert!(stored.get(&key).is_some(), "{stored}");
        }
        let unknown: Result<ActionConfig, _> = serde_json::from_value(json!({"ftp": {}}));
        assert!(unknown.unwrap_err().to_string().contains("unknown variant"));
    }

    fn action(v: serde_json::Value) -> ActionConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_redacted_secret_is_restored_only_from_an_action_of_its_kind() {
        let stored = action(json!({"webhook": {"url": "http://h/",
            "headers": {"Authorization": "Bearer s3cret", "x-a": "1"}}}));
        let mut back = stored.redacted();
        assert_ne!(back, stored);
        back.restore_secrets(Some(&stored)).unwrap();
        assert_eq!(back, stored);

        // The same position once held another kind of action: nothing to keep.
        let kafka = action(json!({"kafka": {"bootstrap_servers": "k:9092",
            "topic": "t", "properties": {"sasl.password": "Bearer s3cret"}}}));
        let mut back = stored.redacted();
        let err = back.restore_secrets(Some(&kafka)).unwrap_err();
        assert!(err.contains("headers.Authorization"), "{err}");
        let err = stored.redacted().restore_secrets(None).unwrap_err();
        assert!(err.contains("headers.Authorization"), "{err}");
    }
}
