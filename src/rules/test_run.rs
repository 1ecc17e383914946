//! A rule tried on sample messages without deploying it (`POST /v1/test`): per message,
//! the outputs and each action's rendered parameters, or why there is none (`filtered`,
//! `topic_mismatch`, `failed` with the reason), and which fields the rule reads were
//! undefined.

use std::sync::Arc;

use serde_json::{Value, json};
use weir_connectors::sinks::ActionConfig;
use weir_engine::{Message, MqttProperties};

use super::spec::{RuleSpec, current_sql_version};
use super::{RuleError, RuleService};

/// `POST /v1/test`: a rule and sample messages.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    sql: String,
    #[serde(default)]
    actions: Vec<ActionConfig>,
    #[serde(default = "current_sql_version")]
    sql_version: String,
    messages: Vec<TestMessage>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TestMessage {
    topic: String,
    /// The payload as JSON.
    #[serde(default)]
    payload: Option<Value>,
    /// The payload as these exact bytes (UTF-8), for payloads that are not JSON.
    #[serde(default)]
    payload_raw: Option<String>,
    #[serde(default)]
    clientid: Option<String>,
    /// MQTT 5 properties of the PUBLISH (see `weir_engine::MqttProperties::from_json`);
    /// without them the message came over MQTT 3.1.1.
    #[serde(default)]
    mqtt_properties: Option<Value>,
}

impl TestMessage {
    /// The message the rule is given; `i` is its place in the request, for errors.
    fn into_message(self, i: usize) -> Result<Message, RuleError> {
        let payload = match (self.payload, self.payload_raw) {
            (Some(v), None) => serde_json::to_vec(&v).expect("a JSON value serialises"),
            (None, Some(raw)) => raw.into_bytes(),
            _ => {
                return Err(RuleError::Request(format!(
                    "messages[{i}]: give exactly one of payload and payload_raw"
                )));
            }
        };
        let mut msg = Message::new(self.topic, payload);
        msg.client_id = self.clientid;
        if let Some(p) = &self.mqtt_properties {
            let p = MqttProperties::from_json(p)
                .map_err(|e| RuleError::Request(format!("messages[{i}].mqtt_properties: {e}")))?;
            msg.properties = Some(Arc::new(p));
        }
        Ok(msg)
    }
}

impl RuleService {
    /// Runs a rule on sample messages without deploying it.
    pub fn test(&self, req: TestRequest) -> Result<Value, RuleError> {
        let spec = RuleSpec {
            sql: req.sql,
            actions: req.actions,
            error_action: None,
            enabled: true,
            description: None,
            sql_version: req.sql_version,
        };
        let compiled = self.check(&spec)?;
        let rule = &compiled.rule;
        // An action through a named connection shows only its templated parameters: the
        // literal ones are the connection's (its headers may carry credentials).
        let params: Vec<(String, Vec<&(String, weir_engine::template::Template)>)> = compiled
            .actions
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let shown = a
                    .templates()
                    .iter()
                    .filter(|(_, t)| !a.is_trusted() || !t.is_literal())
                    .collect();
                (format!("{i}-{}", a.kind()), shown)
            })
            .collect();
        let mut results = Vec::with_capacity(req.messages.len());
        for (i, m) in req.messages.into_iter().enumerate() {
            let topic = m.topic.clone();
            let msg = m.into_message(i)?;
            let mut result = serde_json::Map::new();
            result.insert("topic".to_owned(), json!(topic));
            if !weir_engine::topic::matches(rule.topic_filter(), &msg.topic) {
                result.insert("status".to_owned(), json!("topic_mismatch"));
                results.push(Value::Object(result));
                continue;
            }
            let budget = self.pipeline.memory_budget();
            let outcome = super::off_runtime(|| {
                let _scope = weir_engine::memory::Scope::enter(budget);
                rule.process(std::slice::from_ref(&msg))
            });
            let status = if !outcome.outputs.is_empty() {
                "output"
            } else if !outcome.failures.is_empty() {
                "failed"
            } else {
                "filtered"
            };
            result.insert("status".to_owned(), json!(status));
            let outputs: Vec<Value> = outcome
                .outputs
                .iter()
                .map(|o| {
                    serde_json::from_slice(&o.payload)
                        .unwrap_or_else(|_| json!(String::from_utf8_lossy(&o.payload)))
                })
                .collect();
            let actions: Vec<Value> = outcome
                .outputs
                .iter()
                .flat_map(|o| {
                    params.iter().map(move |(label, templates)| {
                        let rendered: serde_json::Map<String, Value> = templates
                            .iter()
                            .map(|(name, t)| (name.clone(), json!(t.render(&o.params))))
                            .collect();
                        json!({"action": label, "params": rendered})
                    })
                })
                .collect();
            if let Some(f) = outcome.failures.first() {
                result.insert(
                    "error".to_owned(),
                    json!({"reason": f.reason.as_str(), "message": f.message}),
                );
            }
            result.insert("outputs".to_owned(), json!(outputs));
            result.insert("actions".to_owned(), json!(actions));
            result.insert(
                "undefined".to_owned(),
                json!(rule.undefined_fields(&msg.payload)),
            );
            results.push(Value::Object(result));
        }
        Ok(json!({"topic_filter": rule.topic_filter(), "results": results}))
    }
}
