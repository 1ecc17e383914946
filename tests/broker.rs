//! The embedded broker, seen from MQTT clients: QoS, subscriptions, takeover, protocol.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;

#[tokio::test]
async fn qos2_publishes_are_processed_once_and_subscriptions_follow_unsubscribe() {
    let dir = temp_dir("broker-qos");
    let weir = Weir::start(&dir, &[]).await;
    let rule = json!({"sql": "SELECT n FROM 'q2/in'", "actions": [{"republish": {"topic": "q2/out", "qos": 1}}]});
    assert_eq!(weir.put_rule("q2", rule).await.0, 201);
    let mut watcher = Mqtt::connect(weir.mqtt, "watcher").await;
    watcher.subscribe("q2/#").await;
    let device = Mqtt::connect(weir.mqtt, "device").await;
    for n in 0..5 {
        device
            .client
            .publish("q2/in", QoS::ExactlyOnce, false, format!(r#"{{"n": {n}}}"#))
            .await
            .unwrap();
    }
    // The watcher sees both the inputs (q2/in) and the outputs (q2/out).
    let mut inputs = 0;
    let mut outputs = Vec::new();
    while inputs + outputs.len() < 10 {
        let (topic, v) = watcher.next(10).await.expect("ten messages");
        if topic == "q2/out" {
            outputs.push(v["n"].as_i64().unwrap());
        } else {
            inputs += 1;
        }
    }
    assert_eq!(outputs, [0, 1, 2, 3, 4]);
    assert!(
        watcher.next(1).await.is_none(),
        "nothing is delivered twice"
    );
    weir.wait_metric(r#"weir_rule_messages_matched_total{rule="q2"}"#, 5.0)
        .await;
    assert_eq!(
        weir.metric("weir_broker_messages_received_total").await,
        5.0
    );

    watcher.unsubscribe("q2/#").await;
    device.publish("q2/in", r#"{"n": 9}"#).await;
    assert!(watcher.next(1).await.is_none());
    weir.wait_metric(r#"weir_rule_messages_matched_total{rule="q2"}"#, 6.0)
        .await;
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_takes_over() {
    let dir = temp_dir("broker-takeover");
    let weir = Weir::start(&dir, &[]).await;
    let connect = || async {
        let mut opts = MqttOptions::new("same-id", weir.mqtt.ip().to_string(), weir.mqtt.port());
        opts.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(opts, 10);
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = el.poll().await.unwrap() {
                break;
            }
        }
        (client, el)
    };
    let (_first, mut first_el) = connect().await;
    let (_second, _second_el) = connect().await;
    // The broker closes the first connection (MQTT 3.1.1 §3.1.4).
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if first_el.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the first connection was not closed");
}

#[tokio::test]
async fn an_mqtt5_client_is_told_the_protocol_is_not_supported() {
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};
    let dir = temp_dir("broker-v5");
    let weir = Weir::start(&dir, &[]).await;
    let opts = Options5::new("v5-client", weir.mqtt.ip().to_string(), weir.mqtt.port());
    let (_client, mut el) = Client5::new(opts, 10);
    let outcome = tokio::time::timeout(Duration::from_secs(10), el.poll())
        .await
        .expect("an answer");
    match outcome {
        Ok(Event5::Incoming(p)) => panic!("an MQTT 5 connection was accepted: {p:?}"),
        Ok(other) => panic!("unexpected event {other:?}"),
        Err(e) => {
            let text = e.to_string();
            assert!(!text.is_empty());
        }
    }
    // weir is still serving MQTT 3.1.1 clients.
    Mqtt::connect(weir.mqtt, "v4-client").await;
}

#[tokio::test]
async fn rules_see_the_publishers_username_and_address() {
    let dir = temp_dir("broker-principal");
    let weir = Weir::start(&dir, &[]).await;
    let rule = json!({
        "sql": "SELECT principal() AS p, sourceip() AS ip, clientid() AS c FROM 'who'",
        "actions": [{"republish": {"topic": "who/out"}}]
    });
    assert_eq!(weir.put_rule("who", rule).await.0, 201);
    let mut watcher = Mqtt::connect(weir.mqtt, "watcher").await;
    watcher.subscribe("who/out").await;
    let mut opts = MqttOptions::new("dev-9", weir.mqtt.ip().to_string(), weir.mqtt.port());
    opts.set_credentials("alice", "secret");
    let (client, mut el) = AsyncClient::new(opts, 10);
    tokio::spawn(async move { while el.poll().await.is_ok() {} });
    client
        .publish("who", QoS::AtLeastOnce, false, "{}")
        .await
        .unwrap();
    let (_, v) = watcher.next(10).await.expect("output");
    assert_eq!(v, json!({"p": "alice", "ip": "127.0.0.1", "c": "dev-9"}));
}
