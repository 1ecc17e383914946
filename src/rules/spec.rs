//! A rule as users write it: the JSON document of `PUT /v1/rules/{name}`, or a `.sql` file
//! of the queries directory with the rest of the rule in `--` comment lines; and the rule
//! as weir stores it, with its name, source and times.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use weir_connectors::sinks::ActionConfig;

use crate::store::{Kind, validate_name};

/// A rule as a user submits it (`PUT /v1/rules/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub sql: String,
    pub actions: Vec<ActionConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_action: Option<ActionConfig>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The AWS IoT SQL version the rule is written in (AWS's `awsIotSqlVersion`).
    #[serde(default = "current_sql_version")]
    pub sql_version: String,
    /// Golden examples: sample messages and what the rule must give for each. A rule
    /// whose tests fail is refused, with the difference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<RuleTest>,
}

/// One golden example stored with a rule: a sample message, as `POST /v1/test` takes
/// it, and the outputs the rule must give for it (none: its WHERE clause drops it), or
/// the reason it must fail with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub topic: String,
    /// The payload as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// The payload as these exact bytes (UTF-8), for payloads that are not JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_raw: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clientid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_properties: Option<Value>,
    /// The rule's outputs for the message, in order.
    #[serde(default)]
    pub expect: Vec<Value>,
    /// Instead of outputs: the reason the rule fails on the message, as its error
    /// action would be told (e.g. `payload_not_json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_error: Option<String>,
}

fn yes() -> bool {
    true
}

/// The AWS IoT SQL version weir implements, and the default for rules.
pub const SQL_VERSION: &str = "2016-03-23";

pub(crate) fn current_sql_version() -> String {
    SQL_VERSION.to_owned()
}

/// The most tests one rule may carry.
pub const MAX_TESTS: usize = 100;

/// A rule as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRule {
    pub name: String,
    #[serde(flatten)]
    pub spec: RuleSpec,
    /// `api`, or `file:<path>` for rules loaded from the queries directory.
    pub source: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Counts the rule's versions from 1: its ETag, for `If-Match`. (0 in a store
    /// written before versions were kept.)
    #[serde(default)]
    pub version: u64,
}

/// What a change requires of the rule as it is (HTTP's `If-Match` and `If-None-Match`):
/// a client that read version N changes the rule only if nobody changed it since.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Precondition {
    /// Whatever there is.
    #[default]
    None,
    /// The rule exists (`If-Match: *`).
    Exists,
    /// The rule does not exist (`If-None-Match: *`).
    Absent,
    /// The rule is at one of these versions (`If-Match: "3"`; a tag weir did not make
    /// matches none).
    Version(Vec<u64>),
}

impl Precondition {
    /// Whether a rule at `current` (`None`: no such rule) meets it.
    pub fn holds(&self, current: Option<u64>) -> bool {
        match self {
            Self::None => true,
            Self::Exists => current.is_some(),
            Self::Absent => current.is_none(),
            Self::Version(v) => current.is_some_and(|c| v.contains(&c)),
        }
    }
}

/// A rule file from the queries directory: SQL, with the rest of the rule in `--` comment
/// lines at the top:
///
/// ```sql
/// -- description: Alert on hot machines
/// -- action: {"republish": {"topic": "alerts/${topic(3)}"}}
/// -- error_action: {"republish": {"topic": "weir/errors"}}
/// -- enabled: true
/// -- sql_version: 2016-03-23
/// -- test: {"topic": "plant/1/metrics", "payload": {"temp": 90}, "expect": [{"temp": 90}]}
/// SELECT ... FROM '...' WHERE ...
/// ```
///
/// The rule's name is the file name without `.sql`.
pub fn parse_rule_file(path: &Path, text: &str) -> anyhow::Result<(String, RuleSpec)> {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .context("rule file name is not UTF-8")?
        .to_owned();
    validate_name(Kind::Rule, &name)?;
    let mut spec = RuleSpec {
        sql: String::new(),
        actions: Vec::new(),
        error_action: None,
        enabled: true,
        description: None,
        sql_version: current_sql_version(),
        tests: Vec::new(),
    };
    for (i, line) in text.lines().enumerate() {
        let Some(comment) = line.trim().strip_prefix("--") else {
            continue;
        };
        let Some((key, value)) = comment.trim().split_once(':') else {
            continue;
        };
        let value = value.trim();
        let at = || format!("{}:{}", path.display(), i + 1);
        match key.trim() {
            "action" => spec
                .actions
                .push(serde_json::from_str(value).with_context(|| format!("{}: action", at()))?),
            "error_action" => {
                spec.error_action = Some(
                    serde_json::from_str(value)
                        .with_context(|| format!("{}: error_action", at()))?,
                )
            }
            "test" => spec
                .tests
                .push(serde_json::from_str(value).with_context(|| format!("{}: test", at()))?),
            "description" => spec.description = Some(value.to_owned()),
            "sql_version" => spec.sql_version = value.to_owned(),
            "enabled" => {
                spec.enabled = value
                    .parse()
                    .with_context(|| format!("{}: enabled must be true or false", at()))?
            }
            _ => {}
        }
    }
    spec.sql = text.to_owned();
    Ok((name, spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rule read back from the store is the rule written: the followers of the store's
    /// feed compare them, and a difference would restart the rule after each change.
    #[test]
    fn a_stored_rule_reads_back_equal() {
        let rule: StoredRule = serde_json::from_value(serde_json::json!({
            "name": "r", "sql": "SELECT a, 1.50 AS b FROM 'x/#'", "source": "api",
            "actions": [{"webhook": {"url": "https://h/", "headers": {"z": "1", "a": "2"}}}],
            "error_action": {"republish": {"topic": "errors"}}, "enabled": false,
            "description": "d", "sql_version": "2015-10-08", "created_at_ms": 1,
            "updated_at_ms": 2, "version": 3,
            "tests": [{"topic": "x/1", "payload": {"a": 1.5, "b": [1, {"c": null}]},
                       "expect": [{"a": 1.5, "b": 1.50}]}]
        }))
        .unwrap();
        let raw = serde_json::value::to_raw_value(&rule).unwrap();
        let back: StoredRule = serde_json::from_str(raw.get()).unwrap();
        assert_eq!(back, rule);
        // As PostgreSQL's jsonb gives it back: keys reordered, spaces added.
        let Value::Object(fields) = serde_json::from_str(raw.get()).unwrap() else {
            panic!("a rule is an object")
        };
        let reversed: serde_json::Map<String, Value> = fields.into_iter().rev().collect();
        let reordered = serde_json::to_string_pretty(&reversed).unwrap();
        let back: StoredRule = serde_json::from_str(&reordered).unwrap();
        assert_eq!(back, rule);
    }

    #[test]
    fn rule_files() {
        let text = "-- description: hot\n-- action: {\"republish\": {\"topic\": \"x\"}}\n-- enabled: false\nSELECT * FROM 'a'\n";
        let (name, spec) = parse_rule_file(Path::new("queries/hot.sql"), text).unwrap();
        assert_eq!(name, "hot");
        assert_eq!(spec.actions.len(), 1);
        assert!(!spec.enabled);
        assert_eq!(spec.description.as_deref(), Some("hot"));
        let with_test = "-- test: {\"topic\": \"a\", \"payload\": {\"x\": 1}, \"expect\": [{\"x\": 1}]}\nSELECT * FROM 'a'\n";
        let (_, spec) = parse_rule_file(Path::new("t.sql"), with_test).unwrap();
        assert_eq!(spec.tests.len(), 1);
        assert_eq!(spec.tests[0].expect, [serde_json::json!({"x": 1})]);
        let bad_test = "-- test: {\"topic\": \"a\", \"expected\": []}\nSELECT 1";
        let err = parse_rule_file(Path::new("t.sql"), bad_test).unwrap_err();
        assert!(format!("{err:#}").contains("t.sql:1: test"), "{err:#}");
        let bad = "-- action: {\"kafka\": {}}\nSELECT 1";
        let err = parse_rule_file(Path::new("x.sql"), bad).unwrap_err();
        assert!(format!("{err:#}").contains("x.sql:1"), "{err:#}");
    }
}
