//! A rule tried on sample messages without deploying it (`POST /v1/test`): per message,
//! the outputs and each action's rendered parameters, or why there is none (`filtered`,
//! `topic_mismatch`, `failed` with the reason), and which fields the rule reads were
//! undefined. And a rule's own golden examples (`tests`), run whenever it is stored: each
//! one that fails is told with the difference between what it expects and what the rule
//! gave.

use std::sync::Arc;

use serde_json::{Value, json};
use weir_connectors::sinks::ActionConfig;
use weir_engine::json_text::same_json;
use weir_engine::{Message, MqttProperties};

use super::check::off_runtime;
use super::error::RuleError;
use super::spec::{RuleSpec, RuleTest, current_sql_version};
use super::state::RuleService;
use crate::pipeline::CompiledRule;

/// `POST /v1/test`: a rule and sample messages.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestRequest {
    sql: String,
    #[serde(default)]
    actions: Vec<ActionConfig>,
    #[serde(default = "current_sql_version")]
    sql_version: String,
    #[serde(default)]
    messages: Vec<TestMessage>,
    /// Golden examples, as a rule carries them: the answer says which fail, and how.
    #[serde(default)]
    tests: Vec<RuleTest>,
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
        sample(
            &format!("messages[{i}]"),
            self.topic,
            self.payload.as_ref(),
            self.payload_raw,
            self.clientid,
            self.mqtt_properties.as_ref(),
        )
    }
}

/// A sample message, as `POST /v1/test` and a rule's tests give it; `at` names it in errors.
fn sample(
    at: &str,
    topic: String,
    payload: Option<&Value>,
    payload_raw: Option<String>,
    clientid: Option<String>,
    mqtt_properties: Option<&Value>,
) -> Result<Message, RuleError> {
    let payload = match (payload, payload_raw) {
        (Some(v), None) => serde_json::to_vec(v).expect("a JSON value serialises"),
        (None, Some(raw)) => raw.into_bytes(),
        _ => {
            return Err(RuleError::Request(format!(
                "{at}: give exactly one of payload and payload_raw"
            )));
        }
    };
    let mut msg = Message::new(topic, payload);
    msg.client_id = clientid;
    if let Some(p) = mqtt_properties {
        let p = MqttProperties::from_json(p)
            .map_err(|e| RuleError::Request(format!("{at}.mqtt_properties: {e}")))?;
        msg.properties = Some(Arc::new(p));
    }
    Ok(msg)
}

/// What a rule gave for one message: its outputs, or `{"error": reason}` when it failed.
fn given(compiled: &CompiledRule, msg: &Message, budget: usize) -> Value {
    let outcome = off_runtime(|| {
        let _scope = weir_engine::memory::Scope::enter(budget);
        compiled.rule.process(std::slice::from_ref(msg))
    });
    if outcome.outputs.is_empty()
        && let Some(f) = outcome.failures.first()
    {
        return json!({"error": f.reason.as_str(), "message": f.message});
    }
    Value::Array(
        outcome
            .outputs
            .iter()
            .map(|o| output_json(&o.payload))
            .collect(),
    )
}

fn output_json(payload: &[u8]) -> Value {
    serde_json::from_slice(payload).unwrap_or_else(|_| json!(String::from_utf8_lossy(payload)))
}

/// The lines of `expected` and `got` (pretty JSON), marked `-` where only the expectation
/// has them and `+` where only the rule's result does.
fn line_diff(expected: &str, got: &str) -> String {
    let (all_a, all_b): (Vec<&str>, Vec<&str>) =
        (expected.lines().collect(), got.lines().collect());
    // The longest common subsequence costs a.len() × b.len(): a test may expect (and a rule
    // give) up to the body limit, so only the first lines of each are compared.
    let (a, b) = (
        &all_a[..all_a.len().min(DIFF_MAX_LINES)],
        &all_b[..all_b.len().min(DIFF_MAX_LINES)],
    );
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            (i, j) = (i + 1, j + 1);
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        }
    }
    let left = (all_a.len() - a.len()).max(all_b.len() - b.len());
    if left > 0 {
        out.push_str(&format!(
            "  ... {left} more lines not compared (see expected and got)\n"
        ));
    }
    out
}

/// The most lines of each side [`line_diff`] compares.
const DIFF_MAX_LINES: usize = 400;

impl RuleService {
    /// Runs a rule's tests; returns each that failed: its place and name, what it
    /// expected, what the rule gave, and the difference.
    pub(crate) fn failed_tests(
        &self,
        compiled: &CompiledRule,
        tests: &[RuleTest],
    ) -> Result<Vec<Value>, RuleError> {
        let budget = self.pipeline.memory_budget();
        let filter = compiled.rule.topic_filter();
        let mut failed = Vec::new();
        for (i, t) in tests.iter().enumerate() {
            let at = format!("tests[{i}]");
            if t.expect_error.is_some() && !t.expect.is_empty() {
                return Err(RuleError::Request(format!(
                    "{at}: give expect or expect_error, not both"
                )));
            }
            let msg = sample(
                &at,
                t.topic.clone(),
                t.payload.as_ref(),
                t.payload_raw.clone(),
                t.clientid.clone(),
                t.mqtt_properties.as_ref(),
            )?;
            let expected = match &t.expect_error {
                Some(reason) => json!({"error": reason}),
                None => Value::Array(t.expect.clone()),
            };
            let got = if !weir_engine::topic::matches(filter, &msg.topic) {
                json!({"topic_mismatch": format!("'{}' does not match the rule's FROM '{filter}'", t.topic)})
            } else {
                given(compiled, &msg, budget)
            };
            // An expected error is met by the reason alone; its message is not compared.
            let passed = match (&t.expect_error, got.get("error")) {
                (Some(reason), Some(r)) => r == reason,
                (Some(_), None) => false,
                (None, _) => same_json(&expected, &got),
            };
            if !passed {
                let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
                failed.push(json!({
                    "test": i,
                    "name": t.name,
                    "expected": expected,
                    "got": got,
                    "diff": line_diff(&pretty(&expected), &pretty(&got)),
                }));
            }
        }
        Ok(failed)
    }

    /// Refuses a rule whose tests fail.
    pub(crate) fn run_tests(
        &self,
        compiled: &CompiledRule,
        tests: &[RuleTest],
    ) -> Result<(), RuleError> {
        let failures = self.failed_tests(compiled, tests)?;
        if failures.is_empty() {
            return Ok(());
        }
        Err(RuleError::TestsFailed {
            total: tests.len(),
            failures,
        })
    }

    /// Runs a rule on sample messages without deploying it.
    pub fn test(&self, req: TestRequest) -> Result<Value, RuleError> {
        let spec = RuleSpec {
            sql: req.sql,
            actions: req.actions,
            error_action: None,
            enabled: true,
            description: None,
            sql_version: req.sql_version,
            tests: req.tests,
        };
        let compiled = self.check(&spec)?;
        let failed_tests = self.failed_tests(&compiled, &spec.tests)?;
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
            let outcome = off_runtime(|| {
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
        let mut answer = json!({"topic_filter": rule.topic_filter(), "results": results});
        if !spec.tests.is_empty() {
            answer["tests"] = json!({"total": spec.tests.len(), "failed": failed_tests});
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test that expects (or a rule that gives) a huge value costs a bounded diff.
    #[test]
    fn the_diff_compares_a_bounded_number_of_lines() {
        let big_a: String = (0..100_000).map(|i| format!("{i}\n")).collect();
        let big_b: String = (0..100_000).map(|i| format!("{}\n", i + 1)).collect();
        let d = line_diff(&big_a, &big_b);
        assert!(
            d.lines().count() <= 2 * DIFF_MAX_LINES + 1,
            "{}",
            d.lines().count()
        );
        assert!(
            d.ends_with("99600 more lines not compared (see expected and got)\n"),
            "{d}"
        );
    }

    #[test]
    fn the_diff_marks_what_differs() {
        let d = line_diff("[\n  1,\n  2\n]", "[\n  1,\n  3\n]");
        assert_eq!(d, "  [\n    1,\n-   2\n+   3\n  ]\n");
    }
}
