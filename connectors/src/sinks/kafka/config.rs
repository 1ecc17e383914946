//! The Kafka action's configuration: `{"kafka": {"bootstrap_servers": "host:9092",
//! "topic": "telemetry", "key": "${clientid()}", "headers": {...}, "properties": {...}}}`.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use weir_engine::template::{Template, TemplateExprs};

use super::sink::{Kafka, Settings, check_topic_name};
use crate::delivery::policy::NotAllowed;
use crate::delivery::secrets::{SecretMap, sounds_secret};
use crate::delivery::{ConfigError, Connection, Policy, SinkConfig, Validated};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// A named connection (`/v1/connections`) that gives the servers and properties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// `host:port[,host:port...]`; from the connection when the action names one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
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

/// A Kafka connection an operator defines: the servers and the producer's settings
/// (credentials, TLS), which actions naming it do not repeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConnection {
    pub bootstrap_servers: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

impl Connection for KafkaConnection {
    const KIND: &'static str = "kafka";
    type Action = KafkaConfig;

    fn secret_maps(&mut self) -> Vec<SecretMap<'_>> {
        vec![SecretMap {
            field: "properties",
            map: &mut self.properties,
            is_secret: KafkaConfig::secret_property,
        }]
    }

    /// The action as if written inline with the connection's settings.
    fn apply(&self, name: &str, action: &KafkaConfig) -> Result<KafkaConfig, ConfigError> {
        if !action.bootstrap_servers.is_empty() || !action.properties.is_empty() {
            return Err(KafkaConfig::invalid(format!(
                "bootstrap_servers and properties come from the connection '{name}'; the action \
                 gives only topic, key and headers"
            )));
        }
        Ok(KafkaConfig {
            connection: None,
            bootstrap_servers: self.bootstrap_servers.clone(),
            properties: self.properties.clone(),
            ..action.clone()
        })
    }

    /// Checks the connection as an action using it would be.
    fn validate(&self) -> Result<(), ConfigError> {
        let sample = KafkaConfig {
            connection: None,
            bootstrap_servers: self.bootstrap_servers.clone(),
            topic: "t".to_owned(),
            key: None,
            headers: BTreeMap::new(),
            properties: self.properties.clone(),
        };
        sample.validate(&mut TemplateExprs::default()).map(|_| ())
    }
}

/// The librdkafka settings a rule may set (beyond them, what the operator allows with
/// `allow_kafka_properties`), with the values allowed where not every value is safe.
/// None reads a local file, loads code, runs a program, turns off certificate checks or
/// fetches credentials from elsewhere.
const ALLOWED: &[(&str, Option<&[&str]>)] = &[
    ("acks", None),
    ("request.required.acks", None),
    ("enable.idempotence", None),
    ("compression.type", None),
    ("compression.codec", None),
    ("compression.level", None),
    ("linger.ms", None),
    ("queue.buffering.max.ms", None),
    ("queue.buffering.max.messages", None),
    ("queue.buffering.max.kbytes", None),
    ("batch.size", None),
    ("batch.num.messages", None),
    ("message.timeout.ms", None),
    ("delivery.timeout.ms", None),
    ("request.timeout.ms", None),
    ("message.max.bytes", None),
    ("message.send.max.retries", None),
    ("retries", None),
    ("retry.backoff.ms", None),
    ("retry.backoff.max.ms", None),
    ("max.in.flight.requests.per.connection", None),
    ("max.in.flight", None),
    ("partitioner", None),
    ("socket.timeout.ms", None),
    ("socket.keepalive.enable", None),
    ("socket.connection.setup.timeout.ms", None),
    ("connections.max.idle.ms", None),
    ("reconnect.backoff.ms", None),
    ("reconnect.backoff.max.ms", None),
    ("metadata.max.age.ms", None),
    ("topic.metadata.refresh.interval.ms", None),
    ("broker.address.family", None),
    ("client.rack", None),
    ("allow.auto.create.topics", None),
    ("security.protocol", None),
    (
        "sasl.mechanism",
        Some(&["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]),
    ),
    (
        "sasl.mechanisms",
        Some(&["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]),
    ),
    ("sasl.username", None),
    ("sasl.password", None),
    ("ssl.ca.pem", None),
    ("ssl.certificate.pem", None),
    ("ssl.key.pem", None),
    ("ssl.key.password", None),
    ("ssl.cipher.suites", None),
    ("ssl.curves.list", None),
    ("ssl.sigalgs.list", None),
    ("ssl.endpoint.identification.algorithm", Some(&["https"])),
    ("enable.ssl.certificate.verification", Some(&["true"])),
];

/// Settings a rule may not set: weir owns them.
const RESERVED: &[&str] = &["bootstrap.servers", "client.id"];

impl SinkConfig for KafkaConfig {
    const KIND: &'static str = "kafka";
    type Sink = Kafka;

    fn connection(&self) -> Option<&str> {
        self.connection.as_deref()
    }

    fn secret_maps(&mut self) -> Vec<SecretMap<'_>> {
        vec![SecretMap {
            field: "properties",
            map: &mut self.properties,
            is_secret: Self::secret_property,
        }]
    }

    fn check_policy(&self, policy: &Policy) -> Result<(), ConfigError> {
        for s in self.bootstrap_servers.split(',').map(str::trim) {
            if let Some((host, port)) = s.rsplit_once(':') {
                policy
                    .check_host(host, port.parse().ok())
                    .map_err(Self::not_allowed)?;
            }
        }
        let setting = "the operator setting allow_kafka_properties (--allow-kafka-properties) \
                       would allow it";
        for (k, v) in &self.properties {
            if policy.kafka_properties.contains(k) {
                continue;
            }
            match ALLOWED.iter().find(|(name, _)| name == k) {
                None => {
                    return Err(Self::not_allowed(NotAllowed(format!(
                        "property '{k}' is not allowed in a rule: {}; {setting}",
                        refusal(k)
                    ))));
                }
                Some((_, Some(values))) if !values.iter().any(|a| a.eq_ignore_ascii_case(v)) => {
                    return Err(Self::not_allowed(NotAllowed(format!(
                        "property '{k}' may be {} in a rule, not '{v}'; {setting}",
                        values.join(" or ")
                    ))));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn validate(&self, exprs: &mut TemplateExprs) -> Result<Validated<Settings>, ConfigError> {
        let servers: Vec<&str> = self.bootstrap_servers.split(',').map(str::trim).collect();
        if servers.iter().any(|s| s.is_empty()) {
            return Err(Self::invalid(format!(
                "bootstrap_servers must be host:port[,host:port...], got '{}'",
                self.bootstrap_servers
            )));
        }
        for s in &servers {
            let port_ok = s
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return Err(Self::invalid(format!(
                    "bootstrap server '{s}' must be host:port"
                )));
            }
        }
        if self.topic.is_empty() {
            return Err(Self::invalid("topic must not be empty".to_owned()));
        }
        for k in self.properties.keys() {
            if RESERVED.contains(&k.as_str()) {
                return Err(Self::invalid(format!(
                    "property '{k}' is set by weir; give bootstrap servers in 'bootstrap_servers'"
                )));
            }
        }
        let topic = Template::parse(&self.topic, exprs)?;
        if topic.is_literal() {
            check_topic_name(&self.topic).map_err(|e| Self::invalid(e.to_string()))?;
        }
        let key = self
            .key
            .as_deref()
            .map(|k| Template::parse(k, exprs))
            .transpose()?;
        let mut headers = Vec::with_capacity(self.headers.len());
        for (k, v) in &self.headers {
            if k.is_empty() {
                return Err(Self::invalid("header names must not be empty".to_owned()));
            }
            headers.push((k.clone(), Template::parse(v, exprs)?));
        }
        let producer = self.producer_config();
        let timeout = producer
            .get("message.timeout.ms")
            .and_then(|ms| ms.parse::<u64>().ok())
            .map_or(Duration::from_secs(30), Duration::from_millis);
        let mut templates = vec![("topic".to_owned(), topic.clone())];
        templates.extend(key.clone().map(|k| ("key".to_owned(), k)));
        templates.extend(
            headers
                .iter()
                .map(|(k, v)| (format!("headers.{k}"), v.clone())),
        );
        Ok(Validated::new(
            Settings {
                topic,
                key,
                headers,
                producer,
                timeout,
            },
            templates,
        ))
    }
}

impl KafkaConfig {
    /// Whether a librdkafka setting holds a secret: passwords, client secrets, a PEM key,
    /// a JAAS or OAUTHBEARER configuration.
    fn secret_property(key: &str) -> bool {
        sounds_secret(key)
            || matches!(
                key,
                "ssl.key.pem" | "sasl.jaas.config" | "sasl.oauthbearer.config"
            )
    }

    /// The producer configuration: weir's defaults, then the rule's properties.
    fn producer_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap_servers.replace(' ', ""));
        for (k, v) in DEFAULTS {
            c.set(*k, *v);
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}

/// Why a librdkafka setting is not on the allowlist.
fn refusal(key: &str) -> &'static str {
    match key {
        k if k.ends_with(".location") || k.starts_with("ssl.keystore") => "it reads a local file",
        k if k.starts_with("plugin") || k.starts_with("ssl.engine") || k == "ssl.providers" => {
            "it loads code"
        }
        k if k.starts_with("sasl.kerberos") => "it runs a program",
        k if k.starts_with("sasl.oauthbearer") => "it fetches credentials from elsewhere",
        _ => "it is not on the list of properties rules may set",
    }
}
