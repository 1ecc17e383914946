//! A rule's actions: where its outputs go.
//!
//! Each action is a config type (what the user writes in the rule's `actions` list, checked
//! by a pure [`ActionConfig::validate`] that the HTTP API calls before accepting a rule)
//! and a runtime value built from it ([`Action::build`]) that delivers one output per
//! attempt. [`run_worker`] drives one action: a bounded queue in front, the shared
//! [`RetryPolicy`] around each delivery, and the rule's error action for what still fails.
//!
//! Adding a sink means one variant here, one module beside this one, and nothing else.

pub mod file;
pub mod republish;
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
/// `{"object_store": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionConfig {
    Republish(republish::RepublishConfig),
    Webhook(webhook::WebhookConfig),
    ObjectStore(file::ObjectStoreConfig),
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
        }
    }

    /// Checks the configuration without touching the network or the disk.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Self::ObjectStore(c) => c.validate(),
            _ => self.collect_templates(&mut TemplateExprs::default()),
        }
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
            Self::ObjectStore(_) => Vec::new(),
        })
    }

    /// The retry policy the action asked for, or the default.
    pub fn retry(&self) -> RetryPolicy {
        match self {
            Self::Republish(_) | Self::ObjectStore(_) => RetryPolicy::default(),
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
    File(Box<file::FileSink>),
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
                Self::File(Box::new(file::FileSink::open(c, ctx).await?))
            }
        })
    }

    /// One delivery attempt.
    pub async fn deliver(&mut self, d: &Delivery) -> Result<(), DeliveryError> {
        match self {
            Self::Republish(a) => a.deliver(d).await,
            Self::Webhook(a) => a.deliver(d).await,
            Self::File(a) => a.deliver(d).await,
        }
    }

    /// Periodic housekeeping (rolling files by age).
    async fn tick(&mut self) -> Result<(), DeliveryError> {
        match self {
            Self::File(a) => a.roll_if_old().await,
            _ => Ok(()),
        }
    }

    /// Called when the queue is momentarily empty: hand buffered data to the OS, so that a
    /// crash of weir (not of the machine) loses none of it.
    async fn flush(&mut self) -> Result<(), DeliveryError> {
        match self {
            Self::File(a) => a.flush().await,
            _ => Ok(()),
        }
    }

    /// Called when the action stops: make everything delivered visible.
    async fn close(&mut self) -> Result<(), DeliveryError> {
        match self {
            Self::File(a) => a.roll().await,
            _ => Ok(()),
        }
    }
}

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

/// Runs one action until its queue closes: deliver each output with retries, send what
/// still fails to `failed`.
pub async fn run_worker(
    mut action: Action,
    mut queue: mpsc::Receiver<Delivery>,
    policy: RetryPolicy,
    ctx: ActionContext,
    metrics: Arc<Metrics>,
    failed: Option<mpsc::Sender<Undeliverable>>,
) {
    let success = metrics
        .action_success
        .with_label_values(&[&ctx.rule, &ctx.label]);
    let retries = metrics
        .action_retries
        .with_label_values(&[&ctx.rule, &ctx.label]);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let delivery = tokio::select! {
            d = queue.recv() => match d {
                Some(d) => d,
                None => break,
            },
            _ = tick.tick() => {
                if let Err(e) = action.tick().await {
                    tracing::warn!(rule = %ctx.rule, action = %ctx.label, error = %e, "action housekeeping failed");
                }
                continue;
            }
        };
        let started = tokio::time::Instant::now();
        let mut attempt = 1;
        let result = loop {
            match action.deliver(&delivery).await {
                Ok(()) => break Ok(()),
                Err(e)
                    if e.retryable
                        && attempt < policy.max_attempts
                        && started.elapsed() < policy.deadline =>
                {
                    let wait = policy.backoff(attempt);
                    tracing::debug!(rule = %ctx.rule, action = %ctx.label, attempt, error = %e, ?wait, "delivery failed, retrying");
                    retries.inc();
                    attempt += 1;
                    tokio::time::sleep(wait).await;
                }
                Err(e) => break Err(e),
            }
        };
        if queue.is_empty()
            && let Err(e) = action.flush().await
        {
            tracing::warn!(rule = %ctx.rule, action = %ctx.label, error = %e, "flushing the action failed");
        }
        match result {
            Ok(()) => success.inc(),
            Err(error) => {
                metrics
                    .action_failure
                    .with_label_values(&[&ctx.rule, &ctx.label, error.reason])
                    .inc();
                tracing::warn!(rule = %ctx.rule, action = %ctx.label, attempts = attempt, error = %error, "delivery failed");
                let u = Undeliverable {
                    delivery,
                    label: ctx.label.clone(),
                    error,
                };
                match &failed {
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
    }
    if let Err(e) = action.close().await {
        tracing::error!(rule = %ctx.rule, action = %ctx.label, error = %e, "closing the action failed");
    }
}
