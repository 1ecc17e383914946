//! The running Kafka sink: a producer per action, every output of a batch produced at once
//! and every delivery report awaited together; the producer replaced when it is wedged.

use std::time::Duration;

use futures_util::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use weir_engine::template::Template;
use weir_engine::{Classify, ErrorClass};

use crate::delivery::{ConfigError, Delivery, Outcome, Reason, Sink, SinkContext};

/// A Kafka action, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub(super) topic: Template,
    pub(super) key: Option<Template>,
    pub(super) headers: Vec<(String, Template)>,
    /// The producer's settings but its `client.id`, which names the rule and action.
    pub(super) producer: ClientConfig,
    /// How long the producer tries a record before failing it back to the worker.
    pub(super) timeout: Duration,
}

pub struct Kafka {
    settings: Settings,
    config: ClientConfig,
    producer: FutureProducer,
}

impl Sink for Kafka {
    type Settings = Settings;
    /// A producer runs for as long as the action does.
    const KEEPS_STATE: bool = true;

    async fn build(settings: &Settings, ctx: &SinkContext) -> Result<Self, ConfigError> {
        let config = producer_config(settings, &ctx.rule, &ctx.label);
        let producer: FutureProducer = config.create().map_err(|e| {
            ConfigError::invalid("kafka", format!("cannot create the producer: {e}"))
        })?;
        Ok(Self {
            settings: settings.clone(),
            config,
            producer,
        })
    }

    /// Produces every delivery of the batch and waits for all their reports.
    async fn deliver_batch(&mut self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut pending = Vec::with_capacity(batch.len());
        for d in batch {
            pending.push(self.enqueue(d).await);
        }
        let waits = pending.into_iter().map(|p| async move {
            let fut = match p {
                Ok(f) => f,
                Err(o) => return o,
            };
            match fut.await {
                Ok(Ok(_)) => Outcome::Delivered,
                Ok(Err((e, _))) => classify(&e),
                Err(_) => Outcome::retry(
                    Reason::Kafka,
                    "the producer was dropped before the delivery report",
                ),
            }
        });
        let outcomes = join_all(waits).await;
        let wedged = self.producer.client().fatal_error().is_some()
            || outcomes
                .iter()
                .any(|o| matches!(o, Outcome::Retry(f) if f.reason == Reason::Timeout));
        if wedged {
            self.renew();
        }
        outcomes
    }

    /// Waits for records still in the producer's queue.
    async fn close(&mut self) {
        let producer = self.producer.clone();
        let timeout = self.settings.timeout;
        let _ = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
    }
}

impl Kafka {
    /// Replaces the producer after records timed out or it hit a fatal error. An idempotent
    /// producer whose records timed out must otherwise bump its epoch with the broker,
    /// which not every Kafka-compatible broker supports; a new producer starts clean, and
    /// the records it retries come from the action's disk buffer, in order.
    fn renew(&mut self) {
        match self.config.create::<FutureProducer>() {
            Ok(p) => {
                tracing::info!("kafka producer replaced after failed deliveries");
                self.producer = p;
            }
            Err(e) => tracing::warn!(error = %e, "cannot create a new kafka producer"),
        }
    }

    /// Hands one record to the producer, waiting while its local queue is full.
    async fn enqueue(&self, d: &Delivery) -> Result<rdkafka::producer::DeliveryFuture, Outcome> {
        let s = &self.settings;
        let topic = d.render(&s.topic);
        if !s.topic.is_literal() {
            check_topic_name(&topic)
                .map_err(|e| Outcome::dead_letter(Reason::InvalidTopic, e.to_string()))?;
        }
        let key = s.key.as_ref().map(|k| d.render(k));
        let mut headers = OwnedHeaders::new_with_capacity(s.headers.len());
        for (name, value) in &s.headers {
            let v = d.render(value);
            headers = headers.insert(Header {
                key: name,
                value: Some(v.as_bytes()),
            });
        }
        let started = tokio::time::Instant::now();
        let mut record = FutureRecord::to(&topic)
            .payload(d.payload.as_ref())
            .headers(headers);
        if let Some(k) = &key {
            record = record.key(k.as_bytes());
        }
        loop {
            match self.producer.send_result(record) {
                Ok(f) => return Ok(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                    if started.elapsed() < s.timeout =>
                {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(classify(&e)),
            }
        }
    }
}

/// The producer's configuration for the action `label` of `rule`: the checked settings,
/// and a client id that names the action in the broker's logs.
pub(super) fn producer_config(settings: &Settings, rule: &str, label: &str) -> ClientConfig {
    let mut config = settings.producer.clone();
    config.set("client.id", format!("weir-{rule}-{label}"));
    config
}

/// Sorts a producer error into retry-worthy (the broker is away, slow or electing a
/// leader) and final (the record can never be produced as it is).
pub(super) fn classify(e: &KafkaError) -> Outcome {
    let code = e.rdkafka_error_code();
    let fatal = matches!(
        code,
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidConfig
        )
    );
    let reason = match code {
        Some(RDKafkaErrorCode::MessageTimedOut) => Reason::Timeout,
        _ => Reason::Kafka,
    };
    if fatal {
        Outcome::dead_letter(reason, format!("kafka: {e}"))
    } else {
        Outcome::retry(reason, format!("kafka: {e}"))
    }
}

/// A topic name Kafka refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a valid Kafka topic name (1 to 249 of a-z, A-Z, 0-9, '.', '_', '-')")]
pub(super) struct InvalidTopicName(String);

impl Classify for InvalidTopicName {
    fn class(&self) -> ErrorClass {
        ErrorClass::User
    }
}

/// Kafka's rule for topic names: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub(super) fn check_topic_name(t: &str) -> Result<(), InvalidTopicName> {
    let ok = !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidTopicName(t.to_owned()))
    }
}
