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
    // The broker acknowledged both the SUBSCRIBE and the UNSUBSCRIBE.
    let pending = "weir_external_subscription_changes_pending";
    assert!(weir.metrics().await.contains(&format!("\n{pending} ")));
    weir.wait_metric_eq(pending, 0.0).await;
}

#[tokio::test]
async fn mutual_tls_with_credentials() {
    let certs = make_certs();
    let c = |f: &str| certs.join(f).display().to_string();
    let passwd = certs.join("passwd");
    run(std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["weir", "s3cret"]));
    let (plain, tls) = (free_port(), free_port());
    let broker = Mosquitto::start_with(
        plain,
        &format!(
            "per_listener_settings true\n\
             listener {plain} 127.0.0.1\nallow_anonymous true\n\
             listener {tls} 127.0.0.1\nallow_anonymous false\npassword_file {}\n\
             cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            passwd.display(),
            c("ca.pem"),
            c("server.pem"),
            c("server.key")
        ),
    )
    .await;
    let dir = temp_dir("tls");
    let url = format!("mqtts://127.0.0.1:{tls}");
    let weir = Weir::start(
        &dir,
        &[
            "--broker",
            &url,
            "--broker-username",
            "weir",
            "--broker-password",
            "s3cret",
            "--broker-ca-file",
            &c("ca.pem"),
            "--broker-client-cert",
            &c("client.pem"),
            "--broker-client-key",
            &c("client.key"),
        ],
    )
    .await;
    let rule = json!({"sql": "SELECT v FROM 'secure/+'", "actions": [{"republish": {"topic": "secure-out/${topic(2)}"}}]});
    assert_eq!(weir.put_rule("sec", rule).await.0, 201);
    let mut watcher = Mqtt::connect(broker.addr, "watcher").await;
    watcher.subscribe("secure-out/#").await;
    let device = Mqtt::connect(broker.addr, "device").await;
    let got = device
        .publish_until_seen("secure/a", r#"{"v": 7}"#, &mut watcher)
        .await;
    assert_eq!(got, ("secure-out/a".to_owned(), json!({"v": 7})));
}

#[tokio::test]
async fn a_persistent_session_delivers_what_was_published_while_weir_was_down() {
    let broker = Mosquitto::start().await;
    let dir = temp_dir("session");
    let url = format!("mqtt://{}", broker.addr);
    let args = [
        "--broker",
        url.as_str(),
        "--broker-client-id",
        "weir-persistent",
        "--broker-clean-session",
        "false",
    ];
    let mut weir = WeirProcess::start(&dir, &args).await;
    let rule = json!({"sql": "SELECT n FROM 'q/in'", "actions": [{"republish": {"topic": "q/out", "qos": 1}}]});
    assert_eq!(weir.put_rule("q", rule).await.0, 201);
    let mut watcher = Mqtt::connect(broker.addr, "watcher").await;
    watcher.subscribe("q/out").await;
    let device = Mqtt::connect(broker.addr, "device").await;
    device
        .publish_until_seen("q/in", r#"{"n": 0}"#, &mut watcher)
        .await;
    while watcher.next(1).await.is_some() {}

    let (http, mqtt) = (weir.http, weir.mqtt);
    weir.kill();
    for n in 1..=3 {
        device.publish("q/in", format!(r#"{{"n": {n}}}"#)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let _weir = WeirProcess::start_on(&dir, http, mqtt, &args).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let (_, v) = watcher
            .next(10)
            .await
            .expect("queued messages after restart");
        got.push(v["n"].as_i64().unwrap());
    }
    assert_eq!(got, [1, 2, 3]);
}

#[tokio::test]
async fn replicas_in_one_share_group_split_the_stream() {
    let broker = Mosquitto::start().await;
    let url = format!("mqtt://{}", broker.addr);
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let dir = temp_dir(&format!("share-{name}"));
        let id = format!("weir-{name}");
        let args = [
            "--broker",
            url.as_str(),
            "--broker-client-id",
            &id,
            "--broker-share-group",
            "pool",
        ];
        let weir = Weir::start(&dir, &args).await;
        let rule = json!({"sql": "SELECT n FROM 'work/+'", "actions": [{"republish": {"topic": format!("done/{name}")}}]});
        assert_eq!(weir.put_rule("work", rule).await.0, 201);
        replicas.push(weir);
    }
    let mut watcher = Mqtt::connect(broker.addr, "watcher").await;
    watcher.subscribe("done/#").await;
    let device = Mqtt::connect(broker.addr, "device").await;
    // Both replicas subscribed once a probe has come back from each.
    let mut seen = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while seen.len() < 2 {
        device.publish("work/probe", r#"{"n": -1}"#).await;
        while let Some((topic, _)) = watcher.next(1).await {
            seen.insert(topic);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replicas did not both subscribe: {seen:?}"
        );
    }
    let mut counts = std::collections::HashMap::new();
    let mut numbers = Vec::new();
    for n in 0..40 {
        device
            .publish("work/item", format!(r#"{{"n": {n}}}"#))
            .await;
    }
    while numbers.len() < 40 {
        let (topic, v) = watcher.next(10).await.expect("every message once");
        *counts.entry(topic).or_insert(0) += 1;
        numbers.push(v["n"].as_i64().unwrap());
    }
    assert!(
        watcher.next(1).await.is_none(),
        "a message was processed twice"
    );
    numbers.sort();
    assert_eq!(numbers, (0..40).collect::<Vec<i64>>());
    assert_eq!(counts.len(), 2, "both replicas took a share: {counts:?}");
}

#[tokio::test]
async fn rules_read_mqtt5_properties_through_an_external_broker() {
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::{AsyncClient as Client5, MqttOptions as Options5};
    let broker = Mosquitto::start().await;
    let dir = temp_dir("external-v5");
    let url = format!("mqtt://{}", broker.addr);
    let weir = Weir::start(
        &dir,
        &[
            "--broker",
            &url,
            "--broker-client-id",
            "weir-v5",
            "--broker-qos",
            "1",
        ],
    )
    .await;
    let rule = json!({
        "sql": "SELECT n, get_mqtt_property('content_type') AS ct, get_user_properties('tag') AS tags FROM 'v5/in'",
        "actions": [{"republish": {"topic": "v5/out"}}]
    });
    assert_eq!(weir.put_rule("v5", rule).await.0, 201);
    let mut watcher = Mqtt::connect(broker.addr, "watcher").await;
    watcher.subscribe("v5/out").await;
    let opts = Options5::new(
        "device-v5",
        broker.addr.ip().to_string(),
        broker.addr.port(),
    );
    let (device, mut el) = Client5::new(opts, 10);
    tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let props = PublishProperties {
        content_type: Some("application/json".to_owned()),
        user_properties: vec![
            ("tag".to_owned(), "a".to_owned()),
            ("tag".to_owned(), "b".to_owned()),
        ],
        ..Default::default()
    };
    // weir subscribes when the rule is installed; publish until the broker routes to it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (_, v) = loop {
        device
            .publish_with_properties(
                "v5/in",
                QoS5::AtLeastOnce,
                false,
                r#"{"n": 1}"#,
                props.clone(),
            )
            .await
            .unwrap();
        if let Some(got) = watcher.next(1).await {
            break got;
        }
        assert!(std::time::Instant::now() < deadline, "no output");
    };
    assert_eq!(
        v,
        json!({"n": 1, "ct": "application/json", "tags": ["a", "b"]})
    );
}

/// A burst of outputs reaches the publisher together and leaves in few writes, each
/// confirmed by its own PUBACK, with the broker's Receive Maximum (Mosquitto's
/// `max_inflight_messages`, here 5) as the window: every copy arrives, none is retried.
#[tokio::test]
async fn republishing_a_burst_keeps_within_the_brokers_receive_maximum() {
    let port = free_port();
    let broker = Mosquitto::start_with(
        port,
        &format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 5\n"),
    )
    .await;
    let dir = temp_dir("external-burst");
    let url = format!("mqtt://{}", broker.addr);
    let weir = Weir::start(
        &dir,
        &[
            "--broker",
            &url,
            "--broker-client-id",
            "weir-burst",
            "--broker-qos",
            "1",
        ],
    )
    .await;
    let (status, body) = weir
        .put_rule(
            "burst",
            json!({"sql": "SELECT n FROM 'burst/+'", "actions": [{"republish": {"topic": "copies/${topic(2)}", "qos": 1}}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut watcher = Mqtt::connect(broker.addr, "burst-watcher").await;
    watcher.subscribe("copies/#").await;
    let device = Mqtt::connect(broker.addr, "burst-device").await;
    device
        .publish_until_seen("burst/probe", r#"{"n":-1}"#, &mut watcher)
        .await;
    while watcher.next(1).await.is_some() {}

    const N: i64 = 400;
    for n in 0..N {
        device.publish("burst/d", format!(r#"{{"n":{n}}}"#)).await;
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < N as usize {
        let Some((topic, v)) = watcher.next(20).await else {
            panic!("{} of {N} copies arrived", seen.len());
        };
        assert_eq!(topic, "copies/d");
        seen.insert(v["n"].as_i64().unwrap());
    }
    assert_eq!(seen.len(), N as usize);
    // Every copy went through on the first attempt: the publisher was never cut off.
    let retries: f64 = weir
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("weir_action_retries_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(retries, 0.0);
}

/// A republish action can name an MQTT connection: weir (here on its embedded broker)
/// publishes there, to another broker, on a connection of the action's own; the
/// connection's password is never shown.
#[tokio::test]
async fn republish_reaches_another_broker_through_a_named_connection() {
    let other = Mosquitto::start().await;
    let dir = temp_dir("mqtt-connection");
    let weir = Weir::start(&dir, &[]).await;
    let plant = json!({"mqtt": {"url": format!("mqtt://{}", other.addr),
        "username": "weir", "password": "mqtt-secret-5", "client_id": "weir-edge"}});
    let (status, body) = weir
        .send_json(reqwest::Method::PUT, "/v1/connections/plant", &plant)
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["mqtt"]["password"], "<redacted>");
    assert_eq!(body["mqtt"]["username"], "weir");
    let rule = json!({"sql": "SELECT n FROM 'in/#'", "actions": [
        {"republish": {"connection": "plant", "topic": "up/${topic(2)}", "qos": 1}}]});
    let (status, body) = weir.put_rule("up", rule).await;
    assert_eq!(status, 201, "{body}");
    let mut watcher = Mqtt::connect(other.addr, "watcher").await;
    watcher.subscribe("up/#").await;
    let device = Mqtt::connect(weir.mqtt, "dev").await;
    let mut got = None;
    for n in 0..50 {
        device.publish("in/d1", format!(r#"{{"n": {n}}}"#)).await;
        if let Some(m) = watcher.next(1).await {
            got = Some(m);
            break;
        }
    }
    let (topic, payload) = got.expect("the other broker gets the output");
    assert_eq!(topic, "up/d1");
    assert!(payload["n"].is_number(), "{payload}");
    // Sent back redacted, the password is kept; the rule carries on.
    let (_, shown) = weir
        .request(reqwest::Method::GET, "/v1/connections/plant")
        .await;
    assert!(!shown.to_string().contains("mqtt-secret-5"), "{shown}");
    let back = json!({"mqtt": shown["mqtt"].clone()});
    let (status, body) = weir
        .send_json(reqwest::Method::PUT, "/v1/connections/plant", &back)
        .await;
    assert_eq!(status, 200, "{body}");
    let stored = stored_text(&dir);
    assert!(stored.contains("mqtt-secret-5"), "the password is kept");
}

/// AWS IoT Basic Ingest through an external broker: weir subscribes to
/// `$aws/rules/<rule>/<filter>` for each rule, and a message published there reaches that
/// rule only, with the prefix taken off its topic.
#[tokio::test]
async fn basic_ingest_through_an_external_broker_reaches_the_named_rule_only() {
    let broker = Mosquitto::start().await;
    let dir = temp_dir("external-basic-ingest");
    let url = format!("mqtt://{}", broker.addr);
    let weir = Weir::start(&dir, &["--broker", &url, "--broker-qos", "1"]).await;
    for (name, out) in [("named", "bi/named"), ("other", "bi/other")] {
        let rule = json!({
            "sql": "SELECT n, topic() AS t FROM 'plant/+'",
            "actions": [{"republish": {"topic": out}}]
        });
        assert_eq!(weir.put_rule(name, rule).await.0, 201);
    }
    let mut watcher = Mqtt::connect(broker.addr, "watcher").await;
    watcher.subscribe("bi/#").await;
    let device = Mqtt::connect(broker.addr, "device").await;
    let (topic, v) = device
        .publish_until_seen("$aws/rules/named/plant/7", r#"{"n": 1}"#, &mut watcher)
        .await;
    assert_eq!(
        (topic.as_str(), v),
        ("bi/named", json!({"n": 1, "t": "plant/7"}))
    );
    // Only the named rule: nothing on the other rule's output, though its filter matches.
    while let Some((topic, _)) = watcher.next(1).await {
        assert_eq!(
            topic, "bi/named",
            "the other rule got a Basic Ingest message"
        );
    }
    // The plain topic still reaches both (publishing again until both subscriptions are
    // in place).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "only {got:?}");
        device.publish("plant/8", r#"{"n": 2}"#).await;
        while let Some((topic, v)) = watcher.next(1).await {
            assert_eq!(v["n"], 2, "{topic}: {v}");
            got.insert(topic);
        }
    }
    assert_eq!(got, ["bi/named".to_owned(), "bi/other".to_owned()].into());
}
