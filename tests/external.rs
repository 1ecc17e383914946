//! weir reading from an external broker: a real Mosquitto that the test starts.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn seed_rule_through_mosquitto_with_a_shared_subscription() {
    let broker = Mosquitto::start().await;
    let dir = temp_dir("external");
    let url = format!("mqtt://{}", broker.addr);
    let weir = Weir::start(
        &dir,
        &[
            "--broker",
            &url,
            "--broker-client-id",
            "weir-test",
            "--broker-share-group",
            "weir",
            "--broker-qos",
            "1",
        ],
    )
    .await;
    let (status, body) = weir
        .put_rule(
            "hot",
            json!({"sql": SEED_SQL, "actions": [{"republish": {"topic": "alerts/${topic(3)}", "qos": 1}}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let mut watcher = Mqtt::connect(broker.addr, "watcher").await;
    watcher.subscribe("alerts/#").await;
    let device = Mqtt::connect(broker.addr, "plant-sensor-9").await;
    // weir subscribes when the rule is installed; wait until the broker routes to it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (topic, v) = loop {
        device
            .publish("enterprise/facilities/plant-02/metrics", COLD)
            .await;
        device
            .publish("enterprise/facilities/plant-02/metrics", HOT)
            .await;
        if let Some(got) = watcher.next(1).await {
            break got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no output through mosquitto"
        );
    };
    assert_eq!(topic, "alerts/plant-02");
    // An external broker does not tell weir who published: clientid() is undefined.
    assert_seed_output(&v, None);
    weir.wait_metric(r#"weir_rule_messages_filtered_total{rule="hot"}"#, 1.0)
        .await;

    // Deleting the rule unsubscribes: nothing more is processed.
    assert_eq!(
        weir.request(reqwest::Method::DELETE, "/v1/rules/hot")
            .await
            .0,
        204
    );
    while watcher.next(1).await.is_some() {}
    let before = weir.metric("weir_ingress_messages_total").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    device
        .publish("enterprise/facilities/plant-02/metrics", HOT)
        .await;
    assert!(watcher.next(1).await.is_none());
    assert_eq!(weir.metric("weir_ingress_messages_total").await, before);
}
