//! Delivery under faults, with real servers: every published message is delivered at
//! least once, duplicates are counted, nothing is lost.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// How many times each `n` arrived; asserts that every one of `0..total` did.
fn account(values: impl IntoIterator<Item = Value>, total: i64) -> BTreeMap<i64, u32> {
    let mut seen: BTreeMap<i64, u32> = BTreeMap::new();
    for v in values {
        *seen
            .entry(v["n"].as_i64().expect("n is a number"))
            .or_default() += 1;
    }
    let missing: Vec<i64> = (0..total).filter(|n| !seen.contains_key(n)).collect();
    assert!(
        missing.is_empty(),
        "lost {} messages: {missing:?}",
        missing.len()
    );
    assert_eq!(seen.len() as i64, total, "unexpected values: {seen:?}");
    let duplicates: u32 = seen.values().map(|c| c - 1).sum();
    eprintln!("{total} messages delivered, {duplicates} duplicates");
    seen
}

/// The Kafka broker is away for 5 s in the middle of 1,000 messages, with weir's default
/// idempotent producer: what it could not deliver meanwhile waits in the disk buffer (and
/// shows in the metrics), and after the restart every message arrives. (tansu keeps its
/// data in PostgreSQL here; on its SQLite storage the producer's epoch bump after the
/// restart made it refuse every produce: 714 of 1,000 were never delivered.)
#[tokio::test]
async fn kafka_broker_stopped_mid_stream_and_restarted() {
    let mut kafka = Kafka::start().await;
    kafka.create_topic("out").await;
    let dir = temp_dir("fault-kafka");
    let weir = Weir::start(&dir, &[]).await;
    let rule = json!({
        "sql": "SELECT n FROM 'k'",
        "actions": [{"kafka": {"bootstrap_servers": kafka.bootstrap(), "topic": "out",
            "properties": {"message.timeout.ms": "2000", "linger.ms": "1"}}}]
    });
    assert_eq!(weir.put_rule("k", rule).await.0, 201);
    let device = Mqtt::connect(weir.mqtt, "d").await;
    let delivered = r#"weir_action_delivered_total{action="0-kafka",rule="k"}"#;
    let series = r#"weir_action_buffered{action="0-kafka",rule="k"}"#;
    // A device publishing every 5 ms throughout; the broker goes away at the 250th
    // message, with outputs in flight, and comes back 5 s later.
    let publishing = tokio::spawn(async move {
        for n in 0..1000 {
            device.publish("k", format!(r#"{{"n": {n}}}"#)).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        device
    });
    weir.wait_metric(delivered, 250.0).await;
    kafka.stop();
    // Meanwhile what is not delivered waits in the action's disk buffer.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while weir.metric(series).await < 100.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "outputs were not buffered: {}",
            weir.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        weir.metric(r#"weir_action_buffered_bytes{action="0-kafka",rule="k"}"#)
            .await
            > 0.0
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    kafka.restart().await;
    let _device = publishing.await.unwrap();
    weir.wait_metric(delivered, 1000.0).await;
    weir.wait_metric_eq(series, 0.0).await;
    // Every n arrived (and whatever duplicates come behind them).
    let all_arrived = |got: &[KafkaRecord]| {
        let seen: std::collections::HashSet<i64> =
            got.iter().filter_map(|r| r.value["n"].as_i64()).collect();
        seen.len() >= 1000
    };
    let records = kafka.consume_until("out", all_arrived, 30).await;
    account(records.into_iter().map(|r| r.value), 1000);
    assert_eq!(
        weir.metric(
            r#"weir_action_dead_lettered_total{action="0-kafka",reason="timeout",rule="k"}"#
        )
        .await,
        0.0
    );
}

#[tokio::test]
async fn s3_server_stopped_and_restarted() {
    let mut s3 = S3Server::start().await;
    s3.create_bucket("lake").await;
    let dir = temp_dir("fault-s3");
    let weir = Weir::start(&dir, &[]).await;
    let rule = json!({
        "sql": "SELECT n FROM 's'",
        "actions": [{"object_store": {"url": "s3://lake/f", "max_rows": 10, "options": s3.options()}}]
    });
    assert_eq!(weir.put_rule("s", rule).await.0, 201);
    let device = Mqtt::connect(weir.mqtt, "d").await;
    for n in 0..30 {
        device.publish("s", format!(r#"{{"n": {n}}}"#)).await;
    }
    let mut before = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while before.len() < 3 {
        assert!(std::time::Instant::now() < deadline, "{before:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        before = s3.objects("lake", "f/").await;
    }
    // moto keeps objects in memory: read them before the server goes.
    s3.stop();
    for n in 30..60 {
        device.publish("s", format!(r#"{{"n": {n}}}"#)).await;
    }
    // The rows are durable in the staging files: the action has them.
    weir.wait_metric(
        r#"weir_action_delivered_total{action="0-object_store",rule="s"}"#,
        60.0,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    s3.restart().await;
    s3.create_bucket("lake").await;
    let mut after = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while after.len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "objects after the restart: {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        after = s3.objects("lake", "f/").await;
    }
    let rows = before
        .iter()
        .chain(after.iter())
        .flat_map(|o| o["rows"].as_array().unwrap().clone());
    account(rows, 60);
}

#[tokio::test]
async fn webhook_answering_503_then_timing_out_then_recovering() {
    // Five 503s, then three requests that hang past the timeout, then 200s.
    let hook = Receiver::start(vec![503, 503, 503, 503, 503, 0, 0, 0]).await;
    let dir = temp_dir("fault-webhook");
    let weir = Weir::start(&dir, &["--batch-linger", "0ms"]).await;
    let rule = json!({
        "sql": "SELECT n FROM 'w'",
        "actions": [{"webhook": {"url": hook.url("/in"), "timeout": "500ms",
            "retry": {"initial_backoff": "20ms", "max_backoff": "200ms"}}}]
    });
    assert_eq!(weir.put_rule("w", rule).await.0, 201);
    let device = Mqtt::connect(weir.mqtt, "d").await;
    for n in 0..30 {
        device.publish("w", format!(r#"{{"n": {n}}}"#)).await;
    }
    weir.wait_metric(
        r#"weir_action_delivered_total{action="0-webhook",rule="w"}"#,
        30.0,
    )
    .await;
    let bodies = hook.wait_for(30).await;
    let seen = account(bodies, 30);
    // Order is kept: the buffer drains oldest first.
    let order = hook.numbers();
    assert_eq!(order, (0..30).collect::<Vec<_>>());
    assert!(seen.values().all(|c| *c == 1));
    assert!(
        weir.metric(r#"weir_action_retries_total{action="0-webhook",rule="w"}"#)
            .await
            >= 8.0
    );
    assert_eq!(*hook.hits.lock().unwrap(), 38);
}

#[tokio::test]
async fn weir_killed_mid_stream_and_restarted_on_the_same_session() {
    let broker = Mosquitto::start().await;
    let hook = Receiver::start(Vec::new()).await;
    hook.set_delay(Duration::from_millis(10));
    let dir = temp_dir("fault-kill");
    let url = format!("mqtt://{}", broker.addr);
    let args = [
        "--broker",
        &url,
        "--broker-client-id",
        "weir-kill",
        "--broker-qos",
        "1",
        "--batch-linger",
        "0ms",
    ];
    let mut weir = WeirProcess::start(&dir, &args).await;
    let rule = json!({"sql": "SELECT n FROM 'kill/#'", "actions": [{"webhook": {"url": hook.url("/in")}}]});
    assert_eq!(weir.put_rule("kill", rule).await.0, 201);
    // Wait for the subscription.
    let device = Mqtt::connect(broker.addr, "device").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        device.publish("kill/probe", r#"{"n": -1}"#).await;
        if !hook.bodies.lock().unwrap().is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "weir did not subscribe"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let total = 300;
    for n in 0..total {
        device.publish("kill/x", format!(r#"{{"n": {n}}}"#)).await;
    }
    // Kill weir while it is working through them.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while hook.bodies.lock().unwrap().len() < 60 {
        assert!(
            std::time::Instant::now() < deadline,
            "weir made no progress"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    weir.kill();
    let at_kill = hook.bodies.lock().unwrap().len();
    assert!(
        at_kill < total as usize,
        "weir finished before it was killed ({at_kill})"
    );
    let (http, mqtt) = (weir.http, weir.mqtt);
    let _weir = WeirProcess::start_on(&dir, http, mqtt, &args).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got: Vec<Value> = hook
            .bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b["n"].as_i64() >= Some(0))
            .cloned()
            .collect();
        let distinct: std::collections::BTreeSet<i64> =
            got.iter().map(|b| b["n"].as_i64().unwrap()).collect();
        if distinct.len() == total as usize {
            account(got, total);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {total} arrived after the restart",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_stalled_sink_makes_weir_stop_reading_instead_of_growing_memory() {
    let hook = Receiver::start(Vec::new()).await;
    hook.set_delay(Duration::from_secs(4));
    let dir = temp_dir("backpressure");
    let weir = Weir::start(&dir, &["--action-queue", "8", "--batch-max-rows", "8"]).await;
    let rule = json!({"sql": "SELECT n FROM 'bp'", "actions": [{"webhook": {"url": hook.url("/in"), "timeout": "30s"}}]});
    assert_eq!(weir.put_rule("bp", rule).await.0, 201);
    let device = Mqtt::connect(weir.mqtt, "d").await;
    let total = 3000;
    let publisher = tokio::spawn(async move {
        for n in 0..total {
            device.publish("bp", format!(r#"{{"n": {n}}}"#)).await;
        }
        device
    });
    // The sink answers one request every 4 s: weir takes what its bounded queues hold,
    // then stops reading (the rest waits in the connection, on the device's side).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let taken = weir.metric("weir_ingress_messages_total").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = weir.metric("weir_ingress_messages_total").await;
    assert!(
        taken > 0.0 && taken < f64::from(total) / 2.0,
        "weir took {taken} of {total}"
    );
    assert_eq!(taken, later, "weir kept reading while its sink was stalled");
    assert!(
        weir.metric(r#"weir_action_queued{action="0-webhook",rule="bp"}"#)
            .await
            <= 8.0
    );
    // The sink recovers: everything arrives, nothing was dropped.
    hook.set_delay(Duration::ZERO);
    let _device = publisher.await.unwrap();
    weir.wait_metric(
        r#"weir_action_delivered_total{action="0-webhook",rule="bp"}"#,
        f64::from(total),
    )
    .await;
    account(hook.wait_for(total as usize).await, i64::from(total));
}

#[tokio::test]
async fn the_disk_buffer_survives_a_restart_and_drains_in_order() {
    let hook = Receiver::start(vec![503; 100_000]).await;
    let dir = temp_dir("buffer-restart");
    let mut weir = Weir::start(&dir, &[]).await;
    let rule =
        json!({"sql": "SELECT n FROM 'r'", "actions": [{"webhook": {"url": hook.url("/in")}}]});
    assert_eq!(weir.put_rule("r", rule).await.0, 201);
    let device = Mqtt::connect(weir.mqtt, "d").await;
    for n in 0..10 {
        device.publish("r", format!(r#"{{"n": {n}}}"#)).await;
    }
    let series = r#"weir_action_buffered{action="0-webhook",rule="r"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while weir.metric(series).await < 10.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "not buffered: {}",
            weir.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    weir.stop().await.expect("weir stops cleanly");
    drop(device);
    assert!(hook.bodies.lock().unwrap().is_empty());
    // The sink recovers while weir is down; the next start delivers the buffer.
    hook.set_script(Vec::new());
    let weir = weir.restart().await;
    weir.wait_metric(
        r#"weir_action_delivered_total{action="0-webhook",rule="r"}"#,
        10.0,
    )
    .await;
    let order: Vec<i64> = hook
        .wait_for(10)
        .await
        .iter()
        .map(|b| b["n"].as_i64().unwrap())
        .collect();
    assert_eq!(order, (0..10).collect::<Vec<_>>());
    weir.wait_metric_eq(series, 0.0).await;
}

#[tokio::test]
async fn outputs_past_the_retry_deadline_or_the_buffer_limit_are_dead_lettered() {
    let down = Receiver::start(vec![503; 100_000]).await;
    let dead = Receiver::start(Vec::new()).await;
    let dir = temp_dir("dead-letter");
    // Room in the disk buffer for about two outputs.
    let weir = Weir::start(&dir, &["--action-buffer-max-bytes", "200"]).await;
    let rule = json!({
        "sql": "SELECT n FROM 'dl'",
        "actions": [{"webhook": {"url": down.url("/in"),
            "retry": {"initial_backoff": "50ms", "max_backoff": "100ms", "deadline": "1s"}}}],
        "error_action": {"webhook": {"url": dead.url("/dead")}}
    });
    assert_eq!(weir.put_rule("dl", rule).await.0, 201);
    let device = Mqtt::connect(weir.mqtt, "d").await;
    for n in 0..5 {
        device.publish("dl", format!(r#"{{"n": {n}}}"#)).await;
    }
    // Every output ends in the error action: some because the buffer was full, the rest
    // when their retry deadline passed.
    let records = dead.wait_for(5).await;
    let mut ns: Vec<i64> = records
        .iter()
        .map(|r| r["output"]["n"].as_i64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, [0, 1, 2, 3, 4], "{records:?}");
    assert!(
        records
            .iter()
            .all(|r| r["action"] == "0-webhook" && r["rule"] == "dl"),
        "{records:?}"
    );
    let full = weir
        .metric(
            r#"weir_action_dead_lettered_total{action="0-webhook",reason="buffer_full",rule="dl"}"#,
        )
        .await;
    let expired = weir
        .metric(
            r#"weir_action_dead_lettered_total{action="0-webhook",reason="retries_exhausted",rule="dl"}"#,
        )
        .await;
    assert!(
        full >= 1.0 && expired >= 1.0,
        "full {full}, expired {expired}"
    );
    assert_eq!(full + expired, 5.0);
    weir.wait_metric_eq(r#"weir_action_buffered{action="0-webhook",rule="dl"}"#, 0.0)
        .await;
}

/// With the embedded broker, a QoS 1 PUBLISH is acknowledged only once the rules hold its
/// outputs: weir killed mid-stream loses nothing, because the device sends again what was
/// not acknowledged when it reconnects to the restarted weir.
#[tokio::test]
async fn weir_killed_under_qos1_load_with_the_embedded_broker_loses_nothing() {
    let hook = Receiver::start(Vec::new()).await;
    hook.set_delay(Duration::from_millis(10));
    let dir = temp_dir("fault-kill-embedded");
    let args = ["--batch-linger", "0ms"];
    let mut weir = WeirProcess::start(&dir, &args).await;
    let rule = json!({"sql": "SELECT n FROM 'kill/#'", "actions": [{"webhook": {"url": hook.url("/in")}}]});
    assert_eq!(weir.put_rule("kill", rule).await.0, 201);
    // A device with a persistent session: after a reconnect that finds its session, it
    // sends again what was not acknowledged (MQTT 3.1.1 §4.4).
    let mut opts =
        rumqttc::MqttOptions::new("device", weir.mqtt.ip().to_string(), weir.mqtt.port());
    opts.set_clean_session(false);
    opts.set_keep_alive(Duration::from_secs(5));
    let (device, mut el) = rumqttc::AsyncClient::new(opts, 100);
    // At most 50 publishes unacknowledged, so that none waits in rumqttc's request
    // channel when the connection drops: rumqttc sends again what was in flight, but
    // loses what its channel held (seen: 97 of 300 with the channel full).
    let window = std::sync::Arc::new(tokio::sync::Semaphore::new(50));
    let acks = window.clone();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => acks.add_permits(1),
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let total = 300;
    let publisher = tokio::spawn(async move {
        for n in 0..total {
            window.acquire().await.unwrap().forget();
            device
                .publish(
                    "kill/x",
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    format!(r#"{{"n": {n}}}"#),
                )
                .await
                .unwrap();
        }
        device
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while hook.bodies.lock().unwrap().len() < 60 {
        assert!(
            std::time::Instant::now() < deadline,
            "weir made no progress"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    weir.kill();
    let at_kill = hook.bodies.lock().unwrap().len();
    assert!(
        at_kill < total as usize,
        "weir finished before it was killed ({at_kill})"
    );
    let (http, mqtt) = (weir.http, weir.mqtt);
    let _weir = WeirProcess::start_on(&dir, http, mqtt, &args).await;
    let _device = publisher.await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got: Vec<Value> = hook.bodies.lock().unwrap().clone();
        let distinct: std::collections::BTreeSet<i64> =
            got.iter().map(|b| b["n"].as_i64().unwrap()).collect();
        if distinct.len() == total as usize {
            account(got, total);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {total} arrived after the restart; missing: {:?}",
            distinct.len(),
            (0..total)
                .filter(|n| !distinct.contains(n))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
