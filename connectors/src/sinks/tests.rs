//! The registry: every sink and connection written under its kind, connections resolved
//! into actions, and secrets that stay write-only.

use serde_json::json;
use weir_engine::template::TemplateExprs;

use super::*;
use crate::delivery::Policy;

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
    let hooks =
        connection(json!({"webhook": {"url": "https://h/", "headers": {"Authorization": "x"}}}));
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
        .validate(&mut Default::default(), &Policy::allow_all())
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

/// A registered sink's kind is the key rules write it under.
#[test]
fn every_sink_is_written_under_its_kind() {
    for action in [
        json!({"republish": {"topic": "t"}}),
        json!({"webhook": {"url": "http://127.0.0.1:9/"}}),
        json!({"object_store": {"url": "file:///tmp/weir"}}),
        json!({"kafka": {"bootstrap_servers": "127.0.0.1:9092", "topic": "t"}}),
    ] {
        let config: ActionConfig = serde_json::from_value(action.clone()).unwrap();
        let key = action.as_object().unwrap().keys().next().unwrap().clone();
        assert_eq!(config.kind(), key);
        let checked = config
            .validate(&mut TemplateExprs::default(), &Policy::allow_all())
            .unwrap();
        assert_eq!(checked.kind(), key);
        let stored = serde_json::to_value(&config).unwrap();
        assert!(stored.get(&key).is_some(), "{stored}");
    }
    let unknown: Result<ActionConfig, _> = serde_json::from_value(json!({"ftp": {}}));
    assert!(unknown.unwrap_err().to_string().contains("unknown variant"));
}

#[test]
fn a_redacted_secret_is_restored_only_from_an_action_of_its_kind() {
    let stored = action(json!({"webhook": {"url": "http://h/",
        "headers": {"Authorization": "Bearer s3cret", "x-a": "1"}}}));
    let mut back = stored.redacted();
    assert_ne!(back, stored);
    back.restore_secrets(Some(&stored)).unwrap();
    assert_eq!(back, stored);

    // The same position once held another kind of action: nothing to keep.
    let kafka = action(json!({"kafka": {"bootstrap_servers": "k:9092",
        "topic": "t", "properties": {"sasl.password": "Bearer s3cret"}}}));
    let mut back = stored.redacted();
    let err = back.restore_secrets(Some(&kafka)).unwrap_err().to_string();
    assert!(err.contains("headers.Authorization"), "{err}");
    let err = stored
        .redacted()
        .restore_secrets(None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("headers.Authorization"), "{err}");
}

/// A registered connection's kind is the key operators write it under; an unknown kind's
/// error lists the kinds in the order it always has.
#[test]
fn every_connection_is_written_under_its_kind() {
    for written in [
        json!({"kafka": {"bootstrap_servers": "k:9092"}}),
        json!({"object_store": {"url": "s3://lake/raw"}}),
        json!({"webhook": {"url": "https://hooks.example.com/in"}}),
        json!({"mqtt": {"url": "mqtt://broker:1883"}}),
    ] {
        let config = connection(written.clone());
        let key = written.as_object().unwrap().keys().next().unwrap().clone();
        assert_eq!(config.kind(), key);
        config.validate().unwrap();
        let stored = serde_json::to_value(&config).unwrap();
        assert!(stored.get(&key).is_some(), "{stored}");
    }
    let unknown = serde_json::from_value::<ConnectionConfig>(json!({"ftp": {}}))
        .unwrap_err()
        .to_string();
    assert!(
        unknown.contains("expected one of `kafka`, `object_store`, `webhook`, `mqtt`"),
        "{unknown}"
    );
    let unknown = serde_json::from_value::<ActionConfig>(json!({"ftp": {}}))
        .unwrap_err()
        .to_string();
    assert!(
        unknown.contains("expected one of `republish`, `webhook`, `object_store`, `kafka`"),
        "{unknown}"
    );
}
