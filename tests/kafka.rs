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

/// Produces records `ns` to `topic`, `pause` apart: key `dev-<n mod 5>`, header
/// `mqtt_topic` `plant/<n mod 3>/metrics` and a `site` header, payload `{"n": n}`.
async fn produce(
    bootstrap: &str,
    topic: &str,
    ns: std::ops::Range<i64>,
    pause: std::time::Duration,
) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "1")
        .create()
        .unwrap();
    for n in ns {
        tokio::time::sleep(pause).await;
        let (key, mqtt_topic, payload) = (
            format!("dev-{}", n % 5),
            format!("plant/{}/metrics", n % 3),
            format!(r#"{{"n": {n}}}"#),
        );
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "mqtt_topic",
                value: Some(&mqtt_topic),
            })
            .insert(Header {
                key: "site",
                value: Some("north"),
            });
        producer
            .send(
                FutureRecord::to(topic)
                    .key(&key)
                    .payload(&payload)
                    .headers(headers),
                std::time::Duration::from_secs(10),
            )
            .await
            .expect("the test producer's record is acknowledged");
    }
}

/// `--source kafka://...`: records feed the rules with the documented mapping; weir
/// killed (-9) mid-stream and started again on the same group and static member id
/// replays from the committed offsets and loses nothing: offsets are committed only once
/// a record's outputs are delivered. (Without `instance=`, tansu 0.6 gave the restarted
/// consumer no partition within 120 s: it does not expire a dead member.)
#[tokio::test]
async fn a_kafka_source_feeds_the_rules_and_commits_after_delivery() {
    let kafka = Kafka::start().await;
    kafka.create_topic("devices").await;
    kafka.create_topic("out").await;
    let dir = temp_dir("kafka-source");
    let source = format!(
        "kafka://{}/devices?group=weir-test&instance=replica-1",
        kafka.bootstrap()
    );
    let mut weir = WeirProcess::start(&dir, &["--source", &source]).await;
    let rule = json!({
        "sql": "SELECT n, clientid() AS device, topic(2) AS plant, get_user_properties('site') AS site FROM 'plant/+/metrics'",
        "actions": [{"kafka": {"bootstrap_servers": kafka.bootstrap(), "topic": "out",
            "properties": {"linger.ms": "1"}}}]
    });
    assert_eq!(weir.put_rule("bridge", rule).await.0, 201);
    produce(&kafka.bootstrap(), "devices", 0..100, Default::default()).await;
    let records = kafka.consume("out", 100, 30).await;
    assert_eq!(records.len(), 100);
    let seven = records
        .iter()
        .find(|r| r.value["n"] == 7)
        .expect("record 7");
    assert_eq!(
        seven.value,
        json!({"n": 7, "device": "dev-2", "plant": "1", "site": ["north"]})
    );

    // A record larger than a device's message may be, or whose topic is no MQTT topic
    // name, is skipped and counted; the records behind it go on.
    {
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", kafka.bootstrap())
            .create()
            .unwrap();
        let huge = format!(r#"{{"n": -2, "pad": "{}"}}"#, "x".repeat(200_000));
        let wild = OwnedHeaders::new().insert(Header {
            key: "mqtt_topic",
            value: Some("plant/#/metrics"),
        });
        for (payload, headers) in [(huge.as_str(), None), (r#"{"n": -3}"#, Some(wild))] {
            let mut record = FutureRecord::to("devices").key("dev-x").payload(payload);
            if let Some(h) = headers {
                record = record.headers(h);
            }
            producer
                .send(record, std::time::Duration::from_secs(10))
                .await
                .expect("acknowledged");
        }
        for reason in ["too_large", "invalid_topic"] {
            weir.wait_metric(
                &format!(r#"weir_kafka_records_dropped_total{{reason="{reason}"}}"#),
                1.0,
            )
            .await;
        }
    }

    // Killed while records arrive; started again, it goes on from what was committed.
    let bootstrap = kafka.bootstrap();
    let producing = tokio::spawn(async move {
        produce(
            &bootstrap,
            "devices",
            100..600,
            std::time::Duration::from_millis(5),
        )
        .await
    });
    weir.wait_metric(r#"weir_rule_messages_matched_total{rule="bridge"}"#, 200.0)
        .await;
    weir.kill();
    producing.await.unwrap();
    let (http, mqtt) = (weir.http, weir.mqtt);
    let weir = WeirProcess::start_on(&dir, http, mqtt, &["--source", &source]).await;
    let all = |got: &[KafkaRecord]| {
        let seen: std::collections::HashSet<i64> =
            got.iter().filter_map(|r| r.value["n"].as_i64()).collect();
        seen.len() >= 600
    };
    let records = kafka.consume_until("out", all, 120).await;
    let seen: std::collections::HashSet<i64> = records
        .iter()
        .filter_map(|r| r.value["n"].as_i64())
        .collect();
    let missing: Vec<i64> = (0..600).filter(|n| !seen.contains(n)).take(20).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    eprintln!(
        "600 records in, {} outputs after the kill and restart ({} replayed)",
        records.len(),
        records.len() - 600
    );
    drop(weir);
}
