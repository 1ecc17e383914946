//! The contract a sink implements: its configuration as a rule writes it ([`SinkConfig`],
//! checked once into [`Validated`] settings), the named [`Connection`] an operator may
//! define for it, and the running [`Sink`] built from the settings, with the
//! [`SinkContext`] it is built in.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_engine::template::{Template, TemplateExprs};

use super::error::ConfigError;
use super::output::{Delivery, Outcome};
use super::policy::{self, Policy};
use super::retry::RetryPolicy;
use super::secrets::{self, SecretError, SecretMap};
use crate::metrics::Metrics;
use crate::mqtt::Publisher;

/// A sink's configuration as a rule writes it: `{"<KIND>": {...}}` in the rule's
/// `actions` list. Serde types with `deny_unknown_fields`, defaults with units.
pub trait SinkConfig:
    std::fmt::Debug + Clone + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The action's type, as rules, metrics labels and errors name it: `webhook`.
    const KIND: &'static str;
    /// The sink this configures.
    type Sink: Sink;

    /// Checks the configuration without touching the network or the disk (the HTTP API
    /// calls it to refuse a bad rule) and parses its `${...}` templates, whose expressions
    /// it adds to `exprs` for the rule to evaluate with every output. Called once, when
    /// the rule is submitted; what it returns is what the sink is built from.
    fn validate(
        &self,
        exprs: &mut TemplateExprs,
    ) -> Result<Validated<<Self::Sink as Sink>::Settings>, ConfigError>;

    /// A refusal of this action's configuration, saying why.
    fn invalid(message: impl Into<String>) -> ConfigError {
        ConfigError::invalid(Self::KIND, message)
    }

    /// Checks the configuration against the operator's [`Policy`] on what an inline
    /// destination may reach; called with [`SinkConfig::validate`] when the rule is
    /// submitted. Allows everything by default.
    fn check_policy(&self, _policy: &Policy) -> Result<(), ConfigError> {
        Ok(())
    }

    /// A refusal by the operator's policy, saying what and which setting would allow it.
    fn not_allowed(e: policy::NotAllowed) -> ConfigError {
        ConfigError::NotAllowed {
            action: Self::KIND,
            message: e.0,
        }
    }

    /// The maps of the configuration whose values may be secrets, which API answers show
    /// as [`secrets::REDACTED`]. None by default.
    fn secret_maps(&mut self) -> Vec<SecretMap<'_>> {
        Vec::new()
    }

    /// The named connection the action names (`"connection": "events"`), if any: the
    /// action is then resolved with it ([`Connection::apply`]) before it is validated.
    /// None by default, for a sink that takes no connection.
    fn connection(&self) -> Option<&str> {
        None
    }
}

/// A named connection: a destination an operator defines once (`PUT
/// /v1/connections/{name}`) with its endpoints, credentials and transport options, which
/// actions name (`{"kafka": {"connection": "events", "topic": "t"}}`) instead of writing
/// them inline. An action naming one adds only its own parameters (topic, key, path below
/// the connection's prefix, format, rolling); the connection is the operator's, so the
/// policy on inline destinations does not apply to it. Its secrets are write-only, as an
/// action's are.
///
/// A sink that takes one declares it beside itself in the registry (`sinks/mod.rs`).
pub trait Connection:
    std::fmt::Debug + Clone + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The connection's type, as operators write it: `{"<KIND>": {...}}`. Usually its
    /// action's kind; `mqtt` for the republish action's.
    const KIND: &'static str;
    /// The action that names it.
    type Action: SinkConfig;

    /// Checks the connection as an action using it would be, without I/O.
    fn validate(&self) -> Result<(), ConfigError>;

    /// `action` as if written inline with this connection's settings; `name` is the
    /// connection's, for errors. Refuses an action that repeats or escapes what the
    /// connection gives.
    fn apply(&self, name: &str, action: &Self::Action) -> Result<Self::Action, ConfigError>;

    /// The maps of the connection whose values may be secrets. None by default.
    fn secret_maps(&mut self) -> Vec<SecretMap<'_>> {
        Vec::new()
    }

    /// The connection as an API answer shows it: its secrets
    /// [`REDACTED`](secrets::REDACTED).
    fn redacted(&self) -> Self {
        secrets::redacted(self, Self::secret_maps)
    }

    /// Gives the secrets sent back redacted their values in `old`, the connection as
    /// stored; `Err` names a secret that has none.
    fn restore_secrets(&mut self, old: Option<&Self>) -> Result<(), SecretError> {
        secrets::restore(self, old, Self::secret_maps)
    }
}

/// A configuration that passed [`SinkConfig::validate`].
#[derive(Debug, Clone)]
pub struct Validated<T> {
    /// The templated parameters by name (`topic`, `url`, `headers.<name>`), which the rule
    /// test endpoint renders for each output.
    pub templates: Vec<(String, Template)>,
    /// How failed deliveries are retried.
    pub retry: RetryPolicy,
    /// What the sink is built from.
    pub settings: T,
}

impl<T> Validated<T> {
    /// Settings with the default retry policy.
    pub fn new(settings: T, templates: Vec<(String, Template)>) -> Self {
        Self {
            templates,
            retry: RetryPolicy::default(),
            settings,
        }
    }
}

/// A running sink: where an action's outputs go.
///
/// The [`worker`](super::worker) hands it batches of outputs. It makes one attempt at each
/// and returns one [`Outcome`] per output, in order: all at once where the sink batches on
/// the wire (Kafka, republish), or one by one, stopping at the first retry-worthy failure
/// (webhook; the rest are [`Reason::NotAttempted`](super::Reason::NotAttempted)). It never
/// retries a failed output or keeps it to try again: the worker does that, the same way for
/// every sink.
pub trait Sink: Send + 'static {
    /// The validated configuration the sink is built from.
    type Settings: Send + Sync + 'static;

    /// Whether the sink keeps state of its own between runs (staging files to upload, a
    /// producer to flush): then its worker starts with the rule instead of waiting for
    /// the rule's first output.
    const KEEPS_STATE: bool = false;

    /// Builds the sink: the place for I/O (connecting, creating directories).
    fn build(
        settings: &Self::Settings,
        ctx: &SinkContext,
    ) -> impl Future<Output = Result<Self, ConfigError>> + Send
    where
        Self: Sized;

    /// One attempt at each output of `batch`, in order; one outcome per output.
    /// [`Outcome::Delivered`] only when the sink has the output durably (it acknowledged
    /// it, or it is in a file on disk): the source message may be acknowledged then.
    fn deliver_batch(&mut self, batch: &[Delivery]) -> impl Future<Output = Vec<Outcome>> + Send;

    /// How often the worker calls [`Sink::tick`]; `None`: never.
    fn tick_interval(&self) -> Option<Duration> {
        None
    }

    /// Periodic housekeeping (the object store rolls files by age).
    fn tick(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// The worker stops: make what was delivered visible (roll files, flush a producer).
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// What a sink needs from the running service.
#[derive(Clone)]
pub struct SinkContext {
    pub rule: String,
    /// The action's label in metrics and error records: `<position>-<type>` or
    /// `error-<type>`.
    pub label: String,
    /// The broker weir reads from, for the republish action.
    pub publisher: Publisher,
    /// For counts of the sink's own (the object store's rejected files).
    pub metrics: Arc<Metrics>,
    /// The webhooks' client: it follows no redirect and resolves no name to an address
    /// the policy refuses.
    pub http: reqwest::Client,
    /// What inline destinations may reach.
    pub policy: Arc<Policy>,
    /// Where file outputs go when their action names no URL.
    pub output_dir: PathBuf,
    /// The action's own directory for state that must survive a restart: its disk buffer
    /// (`buffer/`) and the object store's staging files (`staging/`).
    pub state_dir: PathBuf,
}

impl SinkContext {
    /// Where the action keeps its disk buffer.
    pub fn buffer_dir(&self) -> PathBuf {
        self.state_dir.join("buffer")
    }
}
