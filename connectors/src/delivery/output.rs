//! One output on its way to a sink ([`Delivery`]) and what an attempt at it came to
//! ([`Outcome`]): delivered, worth another try, or refused for good, with the [`Reason`]
//! metrics and error records name.

use std::sync::Arc;

use bytes::Bytes;
use weir_engine::Message;
use weir_engine::template::Template;

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
