//! The Kafka action: each output becomes one record, produced with librdkafka (rdkafka).
//!
//! Defaults are the safe ones: `enable.idempotence=true` and `acks=all`, so a record the
//! broker acknowledged is on every in-sync replica and a retry inside librdkafka never
//! duplicates it. `message.timeout.ms` defaults to 30 s (librdkafka's own default is 5
//! minutes): a record the broker has not taken by then fails back to the worker, which
//! moves it to the action's disk buffer and retries from there. Every other setting
//! (compression, batching, SASL, TLS, ...) is passed through from `properties` as it is.
//!
//! A batch of outputs is handed to the producer at once and the worker awaits every
//! delivery report together, so librdkafka batches them on the wire.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::future::join_all;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::{Deserialize, Serialize};
use weir_engine::template::{Template, TemplateExprs};

use super::{ActionContext, ConfigError, Delivery, DeliveryError, render};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// The topic; may use `${...}` templates.
    pub topic: String,
    /// The record key; may use `${...}` templates. No key: records spread over partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Record headers; values may use `${...}` templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// librdkafka settings, passed through (`compression.type`, `linger.ms`,
    /// `security.protocol`, `sasl.mechanism`, `ssl.ca.location`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// Settings weir chooses unless the rule's `properties` say otherwise.
const DEFAULTS: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("message.timeout.ms", "30000"),
    ("linger.ms", "5"),
];

/// Settings a rule may not set: weir owns them.
const RESERVED: &[&str] = &["bootstrap.servers", "client.id"];

/// The templates of a Kafka action, in the order they are registered.
#[derive(Debug)]
pub(crate) struct KafkaTemplates {
    pub topic: Template,
    pub key: Option<Template>,
    pub headers: Vec<(String, Template)>,
}

impl KafkaConfig {
    pub(crate) fn validate(
        &self,
        exprs: &mut TemplateExprs,
    ) -> Result<KafkaTemplates, ConfigError> {
        let bad = |m: String| ConfigError::invalid("kafka", m);
        let servers: Vec<&str> = self.bootstrap_servers.split(',').map(str::trim).collect();
        if servers.iter().any(|s| s.is_empty()) {
            return Err(bad(format!(
                "bootstrap_servers must be host:port[,host:port...], got '{}'",
                self.bootstrap_servers
            )));
        }
        for s in &servers {
            let port_ok = s
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return Err(bad(format!("bootstrap server '{s}' must be host:port")));
            }
        }
        if self.topic.is_empty() {
            return Err(bad("topic must not be empty".to_owned()));
        }
        for k in self.properties.keys() {
            if RESERVED.contains(&k.as_str()) {
                return Err(bad(format!(
                    "property '{k}' is set by weir; give bootstrap servers in 'bootstrap_servers'"
                )));
            }
        }
        let topic = Template::parse(&self.topic, exprs)?;
        if topic.is_literal() {
            check_topic_name(&self.topic).map_err(bad)?;
        }
        let key = self
            .key
            .as_deref()
            .map(|k| Template::parse(k, exprs))
            .transpose()?;
        let mut headers = Vec::with_capacity(self.headers.len());
        for (k, v) in &self.headers {
            if k.is_empty() {
                return Err(bad("header names must not be empty".to_owned()));
            }
            headers.push((k.clone(), Template::parse(v, exprs)?));
        }
        Ok(KafkaTemplates {
            topic,
            key,
            headers,
        })
    }

    /// The producer configuration: weir's defaults, then the rule's properties.
    fn client_config(&self, rule: &str, label: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap_servers.replace(' ', ""));
        c.set("client.id", format!("weir-{rule}-{label}"));
        for (k, v) in DEFAULTS {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// Kafka's rule for topic names: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn check_topic_name(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= 249
        && t != "."
        && t != ".."
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{t}' is not a valid Kafka topic name (1 to 249 of a-z, A-Z, 0-9, '.', '_', '-')"
        ))
    }
}

pub struct Kafka {
    templates: KafkaTemplates,
    config: ClientConfig,
    producer: FutureProducer,
    timeout: Duration,
}

impl Kafka {
    pub(crate) fn new(
        c: &KafkaConfig,
        exprs: &mut TemplateExprs,
        ctx: &ActionContext,
    ) -> Result<Self, ConfigError> {
        let templates = c.validate(exprs)?;
        let config = c.client_config(&ctx.rule, &ctx.label);
        let timeout = config
            .get("message.timeout.ms")
            .and_then(|ms| ms.parse::<u64>().ok())
            .map_or(Duration::from_secs(30), Duration::from_millis);
        let producer: FutureProducer = config.create().map_err(|e| {
            ConfigError::invalid("kafka", format!("cannot create the producer: {e}"))
        })?;
        Ok(Self {
            templates,
            config,
            producer,
            timeout,
        })
    }

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

    /// Produces every delivery of the batch and waits for all their reports.
    pub(crate) async fn deliver_batch(
        &mut self,
        batch: &[Delivery],
    ) -> Vec<Result<(), DeliveryError>> {
        let mut pending = Vec::with_capacity(batch.len());
        for d in batch {
            pending.push(self.enqueue(d).await);
        }
        let waits = pending.into_iter().map(|p| async move {
            let fut = p?;
            match fut.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(classify(&e)),
                Err(_) => Err(DeliveryError::retryable(
                    "kafka",
                    "the producer was dropped before the delivery report",
                )),
            }
        });
        let results = join_all(waits).await;
        let wedged = self.producer.client().fatal_error().is_some()
            || results
                .iter()
                .any(|r| matches!(r, Err(e) if e.reason == "timeout"));
        if wedged {
            self.renew();
        }
        results
    }

    /// Hands one record to the producer, waiting while its local queue is full.
    async fn enqueue(
        &self,
        d: &Delivery,
    ) -> Result<rdkafka::producer::DeliveryFuture, DeliveryError> {
        let topic = render(&self.templates.topic, d);
        if !self.templates.topic.is_literal() {
            check_topic_name(&topic).map_err(|m| DeliveryError::fatal("invalid_topic", m))?;
        }
        let key = self.templates.key.as_ref().map(|k| render(k, d));
        let mut headers = OwnedHeaders::new_with_capacity(self.templates.headers.len());
        for (name, value) in &self.templates.headers {
            let v = render(value, d);
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
                    if started.elapsed() < self.timeout =>
                {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(classify(&e)),
            }
        }
    }

    /// Waits for records still in the producer's queue.
    pub(crate) async fn close(&mut self) {
        let producer = self.producer.clone();
        let timeout = self.timeout;
        let _ = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
    }
}

/// Sorts a producer error into retry-worthy (the broker is away, slow or electing a
/// leader) and final (the record can never be produced as it is).
fn classify(e: &KafkaError) -> DeliveryError {
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
        Some(RDKafkaErrorCode::MessageTimedOut) => "timeout",
        _ => "kafka",
    };
    if fatal {
        DeliveryError::fatal(reason, format!("kafka: {e}"))
    } else {
        DeliveryError::retryable(reason, format!("kafka: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: serde_json::Value) -> KafkaConfig {
        serde_json::from_value(json).expect("parses")
    }

    #[test]
    fn validates_servers_topic_and_reserved_properties() {
        let mut exprs = TemplateExprs::default();
        let ok = config(serde_json::json!({
            "bootstrap_servers": "127.0.0.1:9092, other:9093",
            "topic": "telemetry", "key": "${topic(2)}",
            "headers": {"source": "${clientid()}"}
        }));
        let t = ok.validate(&mut exprs).expect("valid");
        assert!(t.key.is_some());
        assert_eq!(exprs.as_slice().len(), 2);

        for (json, needle) in [
            (
                serde_json::json!({"bootstrap_servers": "localhost", "topic": "t"}),
                "host:port",
            ),
            (
                serde_json::json!({"bootstrap_servers": "a:1,,b:2", "topic": "t"}),
                "host:port",
            ),
            (
                serde_json::json!({"bootstrap_servers": "a:1", "topic": "bad topic"}),
                "not a valid Kafka topic",
            ),
            (
                serde_json::json!({"bootstrap_servers": "a:1", "topic": ""}),
                "must not be empty",
            ),
            (
                serde_json::json!({"bootstrap_servers": "a:1", "topic": "t", "properties": {"bootstrap.servers": "x:1"}}),
                "set by weir",
            ),
        ] {
            let err = config(json)
                .validate(&mut TemplateExprs::default())
                .unwrap_err();
            assert!(
                err.to_string().contains(needle),
                "{err} should mention {needle}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let r: Result<KafkaConfig, _> = serde_json::from_value(serde_json::json!({
            "bootstrap_servers": "a:1", "topic": "t", "partition": 3
        }));
        assert!(r.unwrap_err().to_string().contains("unknown field"));
    }

    #[test]
    fn rule_properties_override_the_defaults() {
        let c = config(serde_json::json!({
            "bootstrap_servers": "a:1", "topic": "t",
            "properties": {"acks": "1", "compression.type": "zstd"}
        }));
        let ctx_config = c.client_config("r", "0-kafka");
        assert_eq!(ctx_config.get("acks"), Some("1"));
        assert_eq!(ctx_config.get("compression.type"), Some("zstd"));
        assert_eq!(ctx_config.get("enable.idempotence"), Some("true"));
        assert_eq!(ctx_config.get("client.id"), Some("weir-r-0-kafka"));
    }
}
