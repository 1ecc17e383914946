//! The contract between a rule's actions and the sinks they deliver to, and the machinery
//! every sink shares. Nothing here knows any one sink: those live in [`crate::sinks`], one
//! folder each.
//!
//! A sink comes in two parts:
//!
//! * its configuration as a rule writes it (`{"webhook": {...}}`), a [`SinkConfig`]:
//!   checked once, without I/O, when the rule is submitted, which parses its `${...}`
//!   templates and gives the [`Validated`] settings the sink is built from;
//! * the running [`Sink`], built from those settings, which makes one attempt at each
//!   output of a batch and says what came of it: an [`Outcome`] per output.
//!
//! Everything else is the [`worker`]'s, the same for every sink: the bounded queue in
//! front, batching, the [`disk_buffer`] for what the sink did not take, retries with the
//! action's [`RetryPolicy`], metrics, and the rule's error action for what fails for good.

pub mod disk_buffer;
pub(crate) mod owned_files;
pub mod policy;
pub mod retry;
pub mod secrets;
pub mod worker;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use weir_engine::Message;
use weir_engine::template::{Template, TemplateError, TemplateExprs};

pub use policy::Policy;
pub use retry::RetryPolicy;
pub use worker::{Undeliverable, WorkerSettings, run_worker};

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
    fn secret_maps(&mut self) -> Vec<secrets::SecretMap<'_>> {
        Vec::new()
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
/// The [`worker`] hands it batches of outputs. It makes one attempt at each and returns
/// one [`Outcome`] per output, in order: all at once where the sink batches on the wire
/// (Kafka, republish), or one by one, stopping at the first retry-worthy failure
/// (webhook; the rest are [`Reason::NotAttempted`]). It never retries a failed output or
/// keeps it to try again: the worker does that, the same way for every sink.
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

/// One output on its way to a sink.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub payload: Bytes,
    /// Values of the rule's template expressions for this output.
    pub params: Arc<Vec<Option<String>>>,
    pub source: Arc<Message>,
}

impl Delivery {
    /// Renders one of the action's templates with this output's values.
    pub fn render(&self, t: &Template) -> String {
        t.render(&self.params)
    }
}

/// What one attempt at one output came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sink has the output.
    Delivered,
    /// Worth another try later (the connection failed, no answer in time, throttled):
    /// the output waits in the action's disk buffer and is retried with backoff.
    Retry(Failure),
    /// The sink refused this output for good: it goes to the rule's error action.
    DeadLetter(Failure),
}

impl Outcome {
    pub fn retry(reason: Reason, message: impl Into<String>) -> Self {
        Self::Retry(Failure::new(reason, message))
    }

    pub fn dead_letter(reason: Reason, message: impl Into<String>) -> Self {
        Self::DeadLetter(Failure::new(reason, message))
    }
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
}

impl Failure {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Why an output was not delivered, from a closed set: the `reason` label of
/// `weir_action_dead_lettered_total` and of the rule's error records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The rendered topic is not a valid topic of the sink.
    InvalidTopic,
    /// The rendered URL is not one the HTTP client can request.
    InvalidUrl,
    /// A rendered header value is not a valid HTTP header value.
    InvalidHeader,
    /// The rendered object path is not valid.
    InvalidPath,
    /// The connection could not be made or broke.
    Connection,
    /// No answer within the sink's time limit.
    Timeout,
    /// The HTTP receiver answered with an error status.
    HttpStatus,
    /// The MQTT broker did not confirm the publish.
    Mqtt,
    /// The Kafka producer or broker failed the record.
    Kafka,
    /// The object store failed the upload.
    Store,
    /// The rows could not be converted to Parquet.
    Parquet,
    /// Reading or writing a local file (a staging file) failed.
    Io,
    /// The action's disk buffer has no room left.
    BufferFull,
    /// The action's disk buffer cannot be written.
    BufferIo,
    /// The operator's policy refuses the destination (a link-local address, weir itself).
    NotAllowed,
    /// Retried until the retry deadline or the attempts ran out.
    RetriesExhausted,
    /// Not tried: an earlier output of the same batch failed, and this one waits with it.
    NotAttempted,
}

impl Reason {
    /// The reason as metrics and error records name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidTopic => "invalid_topic",
            Self::InvalidUrl => "invalid_url",
            Self::InvalidHeader => "invalid_header",
            Self::InvalidPath => "invalid_path",
            Self::Connection => "connection",
            Self::Timeout => "timeout",
            Self::HttpStatus => "http_status",
            Self::Mqtt => "mqtt",
            Self::Kafka => "kafka",
            Self::Store => "store",
            Self::Parquet => "parquet",
            Self::Io => "io",
            Self::BufferFull => "buffer_full",
            Self::BufferIo => "buffer_io",
            Self::NotAllowed => "not_allowed",
            Self::RetriesExhausted => "retries_exhausted",
            Self::NotAttempted => "not_attempted",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an action's configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{action}: {message}")]
    Invalid {
        action: &'static str,
        message: String,
    },
    /// The operator's policy does not let a rule reach this destination.
    #[error("{action}: {message}")]
    NotAllowed {
        action: &'static str,
        message: String,
    },
    #[error(transparent)]
    Template(#[from] TemplateError),
}

impl ConfigError {
    pub fn invalid(action: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            action,
            message: message.into(),
        }
    }
}

/// What the sinks' unit tests share.
#[cfg(test)]
pub(crate) mod testing {
    use weir_engine::template::TemplateExprs;

    use super::SinkConfig;

    /// A configuration from its JSON form, which must parse.
    pub(crate) fn parse<C: SinkConfig>(json: serde_json::Value) -> C {
        serde_json::from_value(json.clone())
            .unwrap_or_else(|e| panic!("{json} does not parse: {e}"))
    }

    /// Asserts that each configuration parses but is refused by validation, with a
    /// message containing its needle.
    pub(crate) fn assert_refused<C: SinkConfig>(cases: Vec<(serde_json::Value, &str)>) {
        for (json, needle) in cases {
            let config: C = parse(json.clone());
            let Err(err) = config.validate(&mut TemplateExprs::default()) else {
                panic!("{json} was accepted; it should be refused with '{needle}'");
            };
            let err = err.to_string();
            assert!(
                err.contains(needle),
                "{json}: '{err}' should mention '{needle}'"
            );
        }
    }

    /// Asserts that each configuration is valid but refused by `policy`, with a message
    /// containing its needle.
    pub(crate) fn assert_not_allowed<C: SinkConfig>(
        policy: &super::Policy,
        cases: Vec<(serde_json::Value, &str)>,
    ) {
        for (json, needle) in cases {
            let config: C = parse(json.clone());
            if let Err(e) = config.validate(&mut TemplateExprs::default()) {
                panic!("{json} is not valid: {e}");
            }
            match config.check_policy(policy) {
                Ok(()) => panic!("{json} was allowed; it should be refused with '{needle}'"),
                Err(e @ super::ConfigError::NotAllowed { .. }) => {
                    let err = e.to_string();
                    assert!(
                        err.contains(needle),
                        "{json}: '{err}' should mention '{needle}'"
                    );
                }
                Err(e) => panic!("{json}: refused as invalid, not by the policy: {e}"),
            }
        }
    }

    /// Asserts that each configuration is valid and allowed by `policy`.
    pub(crate) fn assert_allowed<C: SinkConfig>(
        policy: &super::Policy,
        cases: Vec<serde_json::Value>,
    ) {
        for json in cases {
            let config: C = parse(json.clone());
            config
                .validate(&mut TemplateExprs::default())
                .unwrap_or_else(|e| panic!("{json} is not valid: {e}"));
            config
                .check_policy(policy)
                .unwrap_or_else(|e| panic!("{json} should be allowed: {e}"));
        }
    }

    /// The default policy of a weir whose data directory is `/data` and whose API
    /// listens on 127.0.0.1:8080.
    pub(crate) fn default_policy() -> super::Policy {
        super::Policy {
            file_dirs: vec!["/data/out".into()],
            weir_listeners: vec!["127.0.0.1:8080".parse().unwrap()],
            ..Default::default()
        }
    }
}
