//! Named connections: destinations an operator defines once (`PUT /v1/connections/{name}`)
//! with their endpoints, credentials and transport options, which actions name
//! (`{"kafka": {"connection": "events", "topic": "t"}}`) instead of writing them inline.
//! An action naming one adds only its own parameters (topic, key, path below the
//! connection's prefix, format, rolling); the connection is the operator's, so the policy
//! on inline destinations does not apply to it. Its secrets are write-only, as an
//! action's are.

use serde::{Deserialize, Serialize};

use super::ActionConfig;
use super::kafka::KafkaConnection;
use super::object_store::ObjectStoreConnection;
use super::republish::MqttConnection;
use super::webhook::WebhookConnection;
use crate::delivery::ConfigError;
use crate::delivery::secrets::{self, SecretMap};

/// A connection as an operator writes it: `{"kafka": {...}}`, `{"object_store": {...}}`,
/// `{"webhook": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ConnectionConfig {
    Kafka(KafkaConnection),
    ObjectStore(ObjectStoreConnection),
    Webhook(WebhookConnection),
    /// Another MQTT broker, for republish actions.
    Mqtt(MqttConnection),
}

impl ConnectionConfig {
    /// The type of action that can use it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kafka(_) => "kafka",
            Self::ObjectStore(_) => "object_store",
            Self::Webhook(_) => "webhook",
            Self::Mqtt(_) => "mqtt",
        }
    }

    /// The type of action that can use it.
    fn action_kind(&self) -> &'static str {
        match self {
            Self::Mqtt(_) => "republish",
            other => other.kind(),
        }
    }

    /// Checks the connection as an action using it would be, without I/O.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Self::Kafka(c) => c.validate(),
            Self::ObjectStore(c) => c.validate(),
            Self::Webhook(c) => c.validate(),
            Self::Mqtt(c) => c.validate(),
        }
    }

    fn secret_maps(&mut self) -> Vec<SecretMap<'_>> {
        match self {
            Self::Kafka(c) => c.secret_maps(),
            Self::ObjectStore(c) => c.secret_maps(),
            Self::Webhook(c) => c.secret_maps(),
            Self::Mqtt(_) => Vec::new(),
        }
    }

    /// The connection as an API answer shows it: its secrets redacted.
    pub fn redacted(&self) -> Self {
        let mut shown = secrets::redacted(self, Self::secret_maps);
        if let Self::Mqtt(m) = &mut shown {
            m.redact();
        }
        shown
    }

    /// Gives the secrets sent back redacted their values in `old`, the connection as
    /// stored; `Err` names a secret that has none.
    pub fn restore_secrets(&mut self, old: Option<&ConnectionConfig>) -> Result<(), String> {
        let old = old.filter(|o| o.kind() == self.kind());
        if let Self::Mqtt(m) = self {
            let old = match old {
                Some(Self::Mqtt(o)) => Some(o),
                _ => None,
            };
            return m.restore(old);
        }
        secrets::restore(self, old, Self::secret_maps)
    }
}

impl ActionConfig {
    /// The connection the action names, if any.
    pub fn connection(&self) -> Option<&str> {
        match self {
            Self::Kafka(c) => c.connection.as_deref(),
            Self::ObjectStore(c) => c.connection.as_deref(),
            Self::Webhook(c) => c.connection.as_deref(),
            Self::Republish(c) => c.connection.as_deref(),
        }
    }

    /// The action as if written inline with the settings of `connection` (named `name`).
    pub fn with_connection(
        &self,
        name: &str,
        connection: &ConnectionConfig,
    ) -> Result<ActionConfig, ConfigError> {
        match (self, connection) {
            (Self::Kafka(a), ConnectionConfig::Kafka(c)) => Ok(Self::Kafka(c.apply(name, a)?)),
            (Self::ObjectStore(a), ConnectionConfig::ObjectStore(c)) => {
                Ok(Self::ObjectStore(c.apply(name, a)?))
            }
            (Self::Webhook(a), ConnectionConfig::Webhook(c)) => {
                Ok(Self::Webhook(c.apply(name, a)?))
            }
            (Self::Republish(a), ConnectionConfig::Mqtt(c)) => Ok(Self::Republish(c.apply(a))),
            (a, c) => Err(ConfigError::invalid(
                a.kind(),
                format!(
                    "the connection '{name}' is for {} actions, not {}",
                    c.action_kind(),
                    a.kind()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn connection(v: serde_json::Value) -> ConnectionConfig {
        serde_json::from_value(v).unwrap()
    }

    fn action(v: serde_json::Value) -> ActionConfig {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn an_action_adds_its_own_parameters_to_the_connection() {
        let lake = connection(json!({"object_store": {"url": "s3://lake/raw/",
            "options": {"access_key_id": "a", "secret_access_key": "s"}}}));
        let a = action(json!({"object_store": {"connection": "lake",
            "path": "site=${topic(2)}/", "format": "parquet"}}));
        assert_eq!(a.connection(), Some("lake"));
        let merged = serde_json::to_value(a.with_connection("lake", &lake).unwrap()).unwrap();
        assert_eq!(
            merged["object_store"]["url"],
            "s3://lake/raw/site=${topic(2)}/"
        );
        assert_eq!(merged["object_store"]["options"]["secret_access_key"], "s");
        assert_eq!(merged["object_store"]["format"], "parquet");

        let hooks = connection(json!({"webhook": {"url": "https://hooks.example.com/in",
            "headers": {"Authorization": "Bearer x"}}}));
        let a = action(
            json!({"webhook": {"connection": "hooks", "path": "${topic(1)}",
            "headers": {"x-device": "${clientid()}"}}}),
        );
        let merged = serde_json::to_value(a.with_connection("hooks", &hooks).unwrap()).unwrap();
        assert_eq!(
            merged["webhook"]["url"],
            "https://hooks.example.com/in/${topic(1)}"
        );
        assert_eq!(merged["webhook"]["headers"]["Authorization"], "Bearer x");
        assert_eq!(merged["webhook"]["headers"]["x-device"], "${clientid()}");

        let events = connection(json!({"kafka": {"bootstrap_servers": "k:9092",
            "properties": {"sasl.password": "p"}}}));
        let a = action(json!({"kafka": {"connection": "events", "topic": "t"}}));
        let merged = serde_json::to_value(a.with_connection("events", &events).unwrap()).unwrap();
        assert_eq!(merged["kafka"]["bootstrap_servers"], "k:9092");
    }

    #[test]
    fn an_action_may_not_repeat_or_escape_the_connection() {
        let lake = connection(json!({"object_store": {"url": "s3://lake/raw"}}));
        let hooks = connection(
            json!({"webhook": {"url": "https://h/", "headers": {"Authorization": "x"}}}),
        );
        let events = connection(json!({"kafka": {"bootstrap_servers": "k:9092"}}));
        for (a, c, needle) in [
            (
                json!({"object_store": {"connection": "c", "url": "s3://other/x"}}),
                &lake,
                "url and options come from the connection 'c'",
            ),
            (
                json!({"object_store": {"connection": "c", "path": "../../x"}}),
                &lake,
                "without '.' or '..'",
            ),
            (
                json!({"object_store": {"connection": "c", "path": "/abs"}}),
                &lake,
                "relative",
            ),
            (
                json!({"webhook": {"connection": "c", "url": "http://x/"}}),
                &hooks,
                "url comes from the connection 'c'",
            ),
            (
                json!({"webhook": {"connection": "c", "headers": {"authorization": "y"}}}),
                &hooks,
                "header 'authorization' is set by the connection",
            ),
            (
                json!({"kafka": {"connection": "c", "topic": "t", "bootstrap_servers": "evil:1"}}),
                &events,
                "come from the connection",
            ),
            (
                json!({"kafka": {"connection": "c", "topic": "t"}}),
                &lake,
                "the connection 'c' is for object_store actions, not kafka",
            ),
        ] {
            let err = action(a.clone())
                .with_connection("c", c)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{a}: {err}");
        }
        // `path` without a connection is a mistake, not a URL.
        let err = action(json!({"webhook": {"url": "http://x/", "path": "y"}}))
            .validate(
                &mut Default::default(),
                &crate::delivery::Policy::allow_all(),
            )
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("path is for actions that name a connection"),
            "{err}"
        );
    }

    #[test]
    fn a_connections_secrets_are_write_only() {
        let c = connection(json!({"kafka": {"bootstrap_servers": "k:9092",
            "properties": {"sasl.password": "p", "sasl.username": "u"}}}));
        let shown = serde_json::to_value(c.redacted()).unwrap();
        assert_eq!(shown["kafka"]["properties"]["sasl.password"], "<redacted>");
        assert_eq!(shown["kafka"]["properties"]["sasl.username"], "u");
        let mut back: ConnectionConfig = serde_json::from_value(shown).unwrap();
        back.restore_secrets(Some(&c)).unwrap();
        assert_eq!(back, c);
        let mut orphan: ConnectionConfig =
            serde_json::from_value(serde_json::to_value(c.redacted()).unwrap()).unwrap();
        assert!(orphan.restore_secrets(None).is_err());
        let m = connection(json!({"mqtt": {"url": "mqtts://b:8883", "password": "pw"}}));
        let shown = serde_json::to_value(m.redacted()).unwrap();
        assert_eq!(shown["mqtt"]["password"], "<redacted>");
        let mut back: ConnectionConfig = serde_json::from_value(shown.clone()).unwrap();
        back.restore_secrets(Some(&m)).unwrap();
        assert_eq!(back, m);
        let mut orphan: ConnectionConfig = serde_json::from_value(shown).unwrap();
        assert!(orphan.restore_secrets(None).is_err());
        assert!(
            connection(json!({"mqtt": {"url": "http://b"}}))
                .validate()
                .is_err()
        );
        assert!(
            connection(json!({"webhook": {"url": "http://h/${topic()}"}}))
                .validate()
                .is_err()
        );
        assert!(
            connection(json!({"kafka": {"bootstrap_servers": "nope"}}))
                .validate()
                .is_err()
        );
    }
}
