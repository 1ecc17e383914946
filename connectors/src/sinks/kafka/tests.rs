use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use serde_json::json;
use weir_engine::template::TemplateExprs;

use super::sink::{classify, producer_config};
use super::*;
use crate::delivery::testing::{assert_refused, parse};
use crate::delivery::{Outcome, Reason, SinkConfig};

#[test]
fn validates_servers_topic_and_reserved_properties() {
    let mut exprs = TemplateExprs::default();
    let ok = parse::<KafkaConfig>(json!({
        "bootstrap_servers": "127.0.0.1:9092, other:9093",
        "topic": "telemetry", "key": "${topic(2)}",
        "headers": {"source": "${clientid()}"}
    }));
    let v = ok.validate(&mut exprs).expect("valid");
    assert!(v.settings.key.is_some());
    assert_eq!(exprs.as_slice().len(), 2);
    let names: Vec<&str> = v.templates.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["topic", "key", "headers.source"]);

    assert_refused::<KafkaConfig>(vec![
        (
            json!({"bootstrap_servers": "localhost", "topic": "t"}),
            "host:port",
        ),
        (
            json!({"bootstrap_servers": "a:1,,b:2", "topic": "t"}),
            "host:port",
        ),
        (
            json!({"bootstrap_servers": "a:1", "topic": "bad topic"}),
            "not a valid Kafka topic",
        ),
        (
            json!({"bootstrap_servers": "a:1", "topic": ""}),
            "must not be empty",
        ),
        (
            json!({"bootstrap_servers": "a:1", "topic": "t", "properties": {"bootstrap.servers": "x:1"}}),
            "set by weir",
        ),
    ]);
}

#[test]
fn unknown_fields_are_refused() {
    let r: Result<KafkaConfig, _> = serde_json::from_value(json!({
        "bootstrap_servers": "a:1", "topic": "t", "partition": 3
    }));
    assert!(r.unwrap_err().to_string().contains("unknown field"));
}

#[test]
fn rule_properties_override_the_defaults() {
    let c = parse::<KafkaConfig>(json!({
        "bootstrap_servers": "a:1", "topic": "t",
        "properties": {"acks": "1", "compression.type": "zstd", "message.timeout.ms": "2000"}
    }));
    let v = c.validate(&mut TemplateExprs::default()).unwrap();
    let p = producer_config(&v.settings, "r", "0-kafka");
    assert_eq!(p.get("acks"), Some("1"));
    assert_eq!(p.get("compression.type"), Some("zstd"));
    assert_eq!(p.get("enable.idempotence"), Some("true"));
    assert_eq!(p.get("client.id"), Some("weir-r-0-kafka"));
    assert_eq!(v.settings.timeout, Duration::from_secs(2));
}

#[test]
fn timeouts_retry_and_refusals_dead_letter() {
    let timeout = KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut);
    assert!(matches!(classify(&timeout), Outcome::Retry(f) if f.reason == Reason::Timeout));
    let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
    assert!(matches!(classify(&too_large), Outcome::DeadLetter(f) if f.reason == Reason::Kafka));
    let down = KafkaError::MessageProduction(RDKafkaErrorCode::BrokerTransportFailure);
    assert!(matches!(classify(&down), Outcome::Retry(f) if f.reason == Reason::Kafka));
}

#[test]
fn the_policy_allows_only_safe_properties() {
    use crate::delivery::testing::{assert_allowed, assert_not_allowed, default_policy};
    let p = default_policy();
    let with = |props: serde_json::Value| json!({"bootstrap_servers": "kafka:9092", "topic": "t", "properties": props});
    assert_not_allowed::<KafkaConfig>(
        &p,
        vec![
            (
                with(json!({"ssl.ca.location": "/etc/shadow"})),
                "property 'ssl.ca.location' is not allowed in a rule: it reads a local file",
            ),
            (
                with(json!({"ssl.keystore.location": "/k"})),
                "it reads a local file",
            ),
            (
                with(json!({"plugin.library.paths": "/tmp/evil.so"})),
                "it loads code",
            ),
            (
                with(json!({"sasl.kerberos.kinit.cmd": "sh -c id"})),
                "it runs a program",
            ),
            (
                with(json!({"sasl.oauthbearer.token.endpoint.url": "http://x"})),
                "fetches credentials",
            ),
            (
                with(json!({"enable.ssl.certificate.verification": "false"})),
                "may be true in a rule, not 'false'",
            ),
            (
                with(json!({"ssl.endpoint.identification.algorithm": "none"})),
                "may be https",
            ),
            (
                with(json!({"debug": "all"})),
                "allow_kafka_properties (--allow-kafka-properties)",
            ),
            (
                json!({"bootstrap_servers": "169.254.169.254:9092", "topic": "t"}),
                "link-local",
            ),
        ],
    );
    assert_allowed::<KafkaConfig>(
        &p,
        vec![
            with(
                json!({"acks": "1", "linger.ms": "10", "compression.type": "zstd",
                "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": "u", "sasl.password": "p", "ssl.ca.pem": "-----BEGIN"}),
            ),
            with(json!({"enable.ssl.certificate.verification": "true"})),
        ],
    );
    // The operator can allow a property by name.
    let mut open = default_policy();
    open.kafka_properties.insert("ssl.ca.location".to_owned());
    assert_allowed::<KafkaConfig>(
        &open,
        vec![with(json!({"ssl.ca.location": "/etc/kafka/ca.pem"}))],
    );
}
