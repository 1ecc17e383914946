use rumqttc::mqttbytes::QoS;
use serde_json::json;
use weir_engine::template::TemplateExprs;

use super::*;
use crate::delivery::SinkConfig;
use crate::delivery::testing::{assert_refused, parse};

#[test]
fn topics_and_qos_are_checked_once() {
    let mut exprs = TemplateExprs::default();
    let v = parse::<RepublishConfig>(json!({"topic": "alerts/${topic(2)}", "qos": 1}))
        .validate(&mut exprs)
        .unwrap();
    assert_eq!(v.templates.len(), 1);
    assert_eq!(v.templates[0].0, "topic");
    assert_eq!(exprs.as_slice(), ["topic(2)"]);
    assert_eq!(v.settings.qos, QoS::AtLeastOnce);
    assert_refused::<RepublishConfig>(vec![
        (json!({"topic": "a", "qos": 2}), "qos must be 0 or 1"),
        (json!({"topic": " "}), "topic is empty"),
        (json!({"topic": "a/+/b"}), "wildcard"),
    ]);
    let unknown: Result<RepublishConfig, _> =
        serde_json::from_value(json!({"topic": "a", "retain": true}));
    assert!(unknown.unwrap_err().to_string().contains("unknown field"));
}
