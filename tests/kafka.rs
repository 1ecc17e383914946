//! The Kafka action against a real Kafka-protocol broker (tansu, installed by
//! scripts/deps.sh), read back with an independent consumer.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn outputs_become_records_with_templated_key_and_headers() {
    let kafka = Kafka::start().await;
    kafka.create_topic("telemetry").await;
    let dir = temp_dir("kafka");
    let weir = Weir::start(&dir, &[]).await;
    let (status, body) = weir
        .put_rule(
            "to_kafka",
            json!({
                "sql": "SELECT temp, topic(2) AS device FROM 'plant/+/t' WHERE temp > 50",
                "actions": [{"kafka": {
                    "bootstrap_servers": kafka.bootstrap(),
                    "topic": "telemetry",
                    "key": "${topic(2)}",
                    "headers": {"source": "${clientid()}", "rule": "to_kafka"},
                    "properties": {"linger.ms": "1"}
                }}]
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let device = Mqtt::connect(weir.mqtt, "sensor-7").await;
    for i in 0..10 {
        let temp = if i % 2 == 0 { 60 + i } else { 20 };
        device
            .publish(
                &format!("plant/d{}/t", i % 3),
                format!(r#"{{"temp": {temp}}}"#),
            )
            .await;
    }
    weir.wait_metric(
        r#"weir_action_delivered_total{action="0-kafka",rule="to_kafka"}"#,
        5.0,
    )
    .await;
    let records = kafka.consume("telemetry", 5, 20).await;
    assert_eq!(records.len(), 5, "{records:?}");
    let mut temps: Vec<i64> = records
        .iter()
        .map(|r| r.value["temp"].as_i64().unwrap())
        .collect();
    temps.sort();
    assert_eq!(temps, [60, 62, 64, 66, 68]);
    for r in &records {
        let device = r.value["device"].as_str().unwrap();
        assert_eq!(r.key.as_deref(), Some(device), "the key is ${{topic(2)}}");
        assert!(
            r.headers
                .contains(&("source".to_owned(), "sensor-7".to_owned())),
            "{r:?}"
        );
        assert!(
            r.headers
                .contains(&("rule".to_owned(), "to_kafka".to_owned())),
            "{r:?}"
        );
    }
    // Nothing extra arrives.
    assert_eq!(kafka.consume("telemetry", 6, 2).await.len(), 5);
}

#[tokio::test]
async fn a_bad_kafka_action_is_refused_with_the_reason() {
    let dir = temp_dir("kafka-bad");
    let weir = Weir::start(&dir, &[]).await;
    for (action, needle) in [
        (
            json!({"kafka": {"bootstrap_servers": "nohost", "topic": "t"}}),
            "host:port",
        ),
        (
            json!({"kafka": {"bootstrap_servers": "a:9092", "topic": "no spaces"}}),
            "not a valid Kafka topic",
        ),
        (
            json!({"kafka": {"bootstrap_servers": "a:9092", "topic": "t", "key": "${nope(}"}}),
            "in template expression",
        ),
        (
            json!({"kafka": {"bootstrap_servers": "a:9092", "topic": "t", "properties": {"no.such.setting": "1"}}}),
            "no.such.setting",
        ),
    ] {
        let (status, body) = weir
            .put_rule(
                "bad",
                json!({"sql": "SELECT * FROM 't'", "actions": [action]}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body.to_string().contains(needle),
            "{body} should mention {needle}"
        );
    }
}
