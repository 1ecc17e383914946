//! Device shadows end to end: real MQTT clients of weir's broker and the HTTP API, one
//! shadow seen from both; an away device's delta; concurrent updates; a rule reading the
//! answers; kill -9 right after `/accepted`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use reqwest::Method;
use rumqttc::{Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};

const LAMP: &str = "$aws/things/lamp/shadow";

/// The next `n` answers a client receives, in order, past any request it hears (a
/// subscriber of a request's topic may hear the request before or after its answers).
async fn answers(client: &mut Mqtt, n: usize) -> Vec<(String, Value)> {
    let mut got = Vec::new();
    while got.len() < n {
        match client.next(10).await {
            Some((topic, _))
                if ["/update", "/get", "/delete"]
                    .iter()
                    .any(|op| topic.ends_with(op)) => {}
            Some(m) => got.push(m),
            None => panic!("{} answers came, {n} were expected: {got:?}", got.len()),
        }
    }
    got
}

#[tokio::test]
async fn a_device_and_an_app_share_a_shadow_over_mqtt_and_http() {
    let dir = temp_dir("shadow-share");
    let weir = Weir::start(&dir, &[]).await;
    let mut device = Mqtt::connect(weir.mqtt, "lamp").await;
    device.subscribe(&format!("{LAMP}/#")).await;

    // The device reports; it hears /accepted and /documents.
    device
        .publish(
            &format!("{LAMP}/update"),
            json!({"state": {"reported": {"color": "red", "rgb": [255, 0, 0]}}, "clientToken": "t1"})
                .to_string(),
        )
        .await;
    let got = answers(&mut device, 2).await;
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "$aws/things/lamp/shadow/update/accepted",
            "$aws/things/lamp/shadow/update/documents"
        ]
    );
    let accepted = &got[0].1;
    assert_eq!(accepted["version"], 1);
    assert_eq!(accepted["clientToken"], "t1");
    assert_eq!(
        accepted["metadata"]["reported"]["rgb"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(got[1].1["previous"], Value::Null);

    // The app sets desired over HTTP: its answer is /accepted, and the device hears
    // /accepted, /delta and /documents, in that order.
    let (status, body) = weir
        .send_json(
            Method::POST,
            "/v1/things/lamp/shadow",
            &json!({"state": {"desired": {"color": "green"}}, "clientToken": "app"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2);
    assert_eq!(body["state"], json!({"desired": {"color": "green"}}));
    let got = answers(&mut device, 3).await;
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "$aws/things/lamp/shadow/update/accepted",
            "$aws/things/lamp/shadow/update/delta",
            "$aws/things/lamp/shadow/update/documents"
        ]
    );
    assert_eq!(got[1].1["state"], json!({"color": "green"}));
    assert_eq!(got[1].1["version"], 2);
    assert_eq!(got[1].1["clientToken"], "app");

    // A get over MQTT and over HTTP: the same document, with the delta.
    device.publish(&format!("{LAMP}/get"), "").await;
    let got = answers(&mut device, 1).await;
    assert_eq!(got[0].0, "$aws/things/lamp/shadow/get/accepted");
    let (status, doc) = weir.request(Method::GET, "/v1/things/lamp/shadow").await;
    assert_eq!(status, 200);
    assert_eq!(doc["state"], got[0].1["state"]);
    assert_eq!(doc["state"]["delta"], json!({"color": "green"}));
    assert_eq!(doc["version"], 2);

    // A stale version is a 409 over HTTP and a /rejected over MQTT.
    let (status, body) = weir
        .send_json(
            Method::POST,
            "/v1/things/lamp/shadow",
            &json!({"state": {"desired": {"color": "blue"}}, "version": 1}),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["message"], "Version conflict");
    device
        .publish(
            &format!("{LAMP}/update"),
            json!({"state": {"reported": {"color": "x"}}, "version": 1, "clientToken": "old"})
                .to_string(),
        )
        .await;
    let got = answers(&mut device, 1).await;
    assert_eq!(got[0].0, "$aws/things/lamp/shadow/update/rejected");
    assert_eq!(got[0].1["code"], 409);
    assert_eq!(got[0].1["clientToken"], "old");
    device
        .publish(&format!("{LAMP}/update"), "{\"state\": {")
        .await;
    let got = answers(&mut device, 1).await;
    assert_eq!(
        (got[0].1["code"].clone(), got[0].1["message"].clone()),
        (json!(400), json!("Invalid JSON"))
    );

    // Named shadows are listed (the classic one is not), a page at a time.
    for name in ["b", "a", "c"] {
        let (status, _) = weir
            .send_json(
                Method::POST,
                &format!("/v1/things/lamp/shadow?name={name}"),
                &json!({"state": {"reported": {"n": 1}}}),
            )
            .await;
        assert_eq!(status, 200);
    }
    let (status, page) = weir
        .request(Method::GET, "/v1/things/lamp/shadows?pageSize=2")
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["results"], json!(["a", "b"]));
    let next = page["nextToken"].as_str().unwrap().to_owned();
    let (_, page) = weir
        .request(
            Method::GET,
            &format!("/v1/things/lamp/shadows?pageSize=2&nextToken={next}"),
        )
        .await;
    assert_eq!(page["results"], json!(["c"]));
    assert!(page.get("nextToken").is_none());
    let (status, _) = weir
        .request(Method::GET, "/v1/things/lamp/shadows?pageSize=101")
        .await;
    assert_eq!(status, 400);

    // Deleted: 404 with AWS's text, over HTTP and MQTT; made again, its numbering goes on.
    let (status, body) = weir
        .request(Method::DELETE, "/v1/things/lamp/shadow?name=b")
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["version"], 1);
    let (status, body) = weir
        .request(Method::GET, "/v1/things/lamp/shadow?name=b")
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["message"], "No shadow exists with name: 'b'");
    let (_, page) = weir.request(Method::GET, "/v1/things/lamp/shadows").await;
    assert_eq!(page["results"], json!(["a", "c"]));
    let (_, body) = weir
        .send_json(
            Method::POST,
            "/v1/things/lamp/shadow?name=b",
            &json!({"state": {"reported": {"n": 2}}}),
        )
        .await;
    assert_eq!(body["version"], 2);
    let (status, _) = weir
        .request(Method::GET, "/v1/things/lamp%2Fx/shadow")
        .await;
    assert_eq!(status, 400, "a thing name with a slash is refused");

    // Over the size limit once merged: 413 with AWS's text; a name AWS would refuse: 400.
    let big = "x".repeat(9000);
    let (status, body) = weir
        .send_json(
            Method::POST,
            "/v1/things/lamp/shadow",
            &json!({"state": {"reported": {"big": big}}}),
        )
        .await;
    assert_eq!(status, 413);
    assert_eq!(
        body["error"]["message"],
        "The payload exceeds the maximum size allowed"
    );
    let (status, body) = weir
        .request(Method::GET, "/v1/things/lamp/shadow?name=a$b")
        .await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].clone()),
        (400, json!("invalid_name"))
    );

    weir.wait_metric(
        r#"weir_shadow_requests_total{op="update",outcome="accepted"}"#,
        6.0,
    )
    .await;
    assert_eq!(
        weir.metric(r#"weir_shadow_requests_total{op="update",outcome="conflict"}"#)
            .await,
        2.0
    );
    assert_eq!(weir.metric("weir_shadow_documents").await, 4.0);
    assert!(weir.metric("weir_shadow_bytes").await > 0.0);
    // Requests go to the shadow service, and weir's own answers are not ingress: nothing
    // here counts as a message no rule matched.
    assert_eq!(weir.metric("weir_ingress_unmatched_total").await, 0.0);
    assert_eq!(
        weir.metric(r#"weir_shadow_requests_total{op="update",outcome="too_large"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_away_device_gets_its_delta_when_it_returns() {
    let dir = temp_dir("shadow-away");
    let weir = Weir::start(&dir, &[]).await;
    let delta = "$aws/things/sleeper/shadow/update/delta";
    let persistent = |client_id: &str| {
        let mut o = MqttOptions::new(client_id, weir.mqtt.ip().to_string(), weir.mqtt.port());
        o.set_keep_alive(Duration::from_secs(5));
        o.set_clean_session(false);
        o
    };
    {
        let (client, mut el) = rumqttc::AsyncClient::new(persistent("sleeper"), 10);
        client.subscribe(delta, QoS::AtLeastOnce).await.unwrap();
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = el.poll().await.unwrap() {
                break;
            }
        }
    }
    weir.wait_metric_eq("weir_broker_connections", 0.0).await;
    let (status, _) = weir
        .send_json(
            Method::POST,
            "/v1/things/sleeper/shadow",
            &json!({"state": {"desired": {"interval": 60}}}),
        )
        .await;
    assert_eq!(status, 200);
    let (_client, mut el) = rumqttc::AsyncClient::new(persistent("sleeper"), 10);
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = el.poll().await.unwrap() {
                return p;
            }
        }
    })
    .await
    .expect("the delta waited for the device");
    assert_eq!(got.topic, delta);
    assert_eq!(got.qos, QoS::AtLeastOnce);
    let v: Value = serde_json::from_slice(&got.payload).unwrap();
    assert_eq!(v["state"], json!({"interval": 60}));
    assert_eq!(v["version"], 1);
}

#[tokio::test]
async fn concurrent_updates_from_four_clients_get_versions_one_to_twelve() {
    let dir = temp_dir("shadow-concurrent");
    let weir = Weir::start(&dir, &[]).await;
    let mut watcher = Mqtt::connect(weir.mqtt, "watcher").await;
    watcher
        .subscribe("$aws/things/counter/shadow/update/accepted")
        .await;
    let mut clients = Vec::new();
    for c in 0..4 {
        clients.push(Mqtt::connect(weir.mqtt, &format!("c{c}")).await);
    }
    let sends = clients.iter().enumerate().map(|(c, client)| async move {
        for i in 0..3 {
            client
                .publish(
                    "$aws/things/counter/shadow/update",
                    json!({"state": {"reported": {format!("c{c}"): i}}}).to_string(),
                )
                .await;
        }
    });
    futures_util::future::join_all(sends).await;
    let mut versions = BTreeSet::new();
    for _ in 0..12 {
        let (_, v) = watcher.next(10).await.expect("twelve answers");
        versions.insert(v["version"].as_u64().unwrap());
    }
    assert_eq!(versions, (1..=12).collect());
    let (_, doc) = weir.request(Method::GET, "/v1/things/counter/shadow").await;
    assert_eq!(doc["version"], 12);
    assert_eq!(
        doc["state"]["reported"],
        json!({"c0": 2, "c1": 2, "c2": 2, "c3": 2})
    );
}

#[tokio::test]
async fn rules_read_the_answers_as_messages() {
    let dir = temp_dir("shadow-rule");
    let weir = Weir::start(&dir, &[]).await;
    let rule = json!({
        "sql": "SELECT state, version, topic(3) AS thing, clientid() AS requester FROM '$aws/things/+/shadow/update/delta'",
        "actions": [{"republish": {"topic": "deltas/${topic(3)}", "qos": 1}}]
    });
    assert_eq!(weir.put_rule("deltas", rule).await.0, 201);
    let mut watcher = Mqtt::connect(weir.mqtt, "watcher").await;
    watcher.subscribe("deltas/#").await;
    let app = Mqtt::connect(weir.mqtt, "app-1").await;
    app.publish(
        "$aws/things/pump/shadow/update",
        json!({"state": {"desired": {"on": true}}}).to_string(),
    )
    .await;
    let (topic, v) = watcher.next(10).await.expect("the rule's output");
    assert_eq!(topic, "deltas/pump");
    assert_eq!(
        v,
        json!({"state": {"on": true}, "version": 1, "thing": "pump", "requester": "app-1"})
    );
}

/// AWS's form, with the role's ARN (accepted and ignored).
const READ_LIMIT: &str =
    "get_thing_shadow(topic(2), 'arn:aws:iam::123456789012:role/r').state.desired.threshold";

#[tokio::test]
async fn a_rule_reads_the_committed_shadow_with_get_thing_shadow() {
    let dir = temp_dir("shadow-get-thing-shadow");
    let weir = Weir::start(&dir, &[]).await;
    let rule = json!({
        "sql": format!("SELECT temp, {READ_LIMIT} AS threshold FROM 'plant/+/metrics' WHERE temp > {READ_LIMIT}"),
        "actions": [{"republish": {"topic": "alerts/${topic(2)}"}}]
    });
    let (status, body) = weir.put_rule("over", rule).await;
    assert_eq!(status, 201, "{body}");
    let mut watcher = Mqtt::connect(weir.mqtt, "watcher").await;
    watcher.subscribe("alerts/#").await;
    let device = Mqtt::connect(weir.mqtt, "p1").await;
    let set = |limit: i64| {
        let weir = &weir;
        async move {
            let body = json!({"state": {"desired": {"threshold": limit}}});
            let (status, doc) = weir
                .send_json(Method::POST, "/v1/things/p1/shadow", &body)
                .await;
            assert_eq!(status, 200, "{doc}");
        }
    };
    set(80).await;
    device.publish("plant/p1/metrics", r#"{"temp": 90}"#).await;
    assert_eq!(
        watcher.next(10).await.unwrap(),
        ("alerts/p1".to_owned(), json!({"temp": 90, "threshold": 80}))
    );
    // Right after the /accepted of a new threshold, the rule reads the new one.
    set(95).await;
    device.publish("plant/p1/metrics", r#"{"temp": 90}"#).await;
    device.publish("plant/p1/metrics", r#"{"temp": 99}"#).await;
    assert_eq!(
        watcher.next(10).await.unwrap(),
        ("alerts/p1".to_owned(), json!({"temp": 99, "threshold": 95}))
    );
    // A thing without a shadow: Undefined, so no alert.
    device.publish("plant/p2/metrics", r#"{"temp": 500}"#).await;
    assert!(watcher.next(1).await.is_none());
    assert_eq!(
        weir.metric(r#"weir_rule_messages_failed_total{reason="evaluation_error",rule="over"}"#)
            .await,
        0.0
    );
}

#[tokio::test]
async fn get_thing_shadow_reads_the_fleet_store_from_the_rule_tester() {
    let db = Database::create("weir_get_thing_shadow");
    let dir = temp_dir("shadow-get-fleet");
    let weir = Weir::start(&dir, &["--rule-store", &db.url()]).await;
    let body = json!({"state": {"desired": {"threshold": 70}}});
    let (status, _) = weir
        .send_json(Method::POST, "/v1/things/p9/shadow?name=cfg", &body)
        .await;
    assert_eq!(status, 200);
    // The tester evaluates on the API's own thread: the read must not wait for it.
    let test = json!({
        "sql": "SELECT get_thing_shadow(topic(2), 'cfg', 'arn:aws:iam::1:role/r').state.desired.threshold AS t, get_thing_shadow(topic(2), 'arn:aws:iam::1:role/r') AS classic FROM 'plant/+/metrics'",
        "messages": [{"topic": "plant/p9/metrics", "payload": {"temp": 1}}]
    });
    let (status, answer) = weir.test_rule(&test).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["results"][0]["outputs"],
        json!([{"t": 70}]),
        "{answer}"
    );
}

#[tokio::test]
async fn a_kill_right_after_accepted_loses_nothing() {
    let dir = temp_dir("shadow-kill");
    let mut weir = WeirProcess::start(&dir, &[]).await;
    let (http, mqtt) = (weir.http, weir.mqtt);
    let mut device = Mqtt::connect(mqtt, "meter").await;
    device
        .subscribe("$aws/things/meter/shadow/update/accepted")
        .await;
    for n in 1..=5 {
        device
            .publish(
                "$aws/things/meter/shadow/update",
                json!({"state": {"reported": {"n": n}}}).to_string(),
            )
            .await;
    }
    for _ in 0..5 {
        device.next(10).await.expect("five answers");
    }
    weir.kill();
    drop(device);
    let weir = WeirProcess::start_on(&dir, http, mqtt, &[]).await;
    let (status, doc) = weir.request(Method::GET, "/v1/things/meter/shadow").await;
    assert_eq!(status, 200);
    assert_eq!(doc["version"], 5);
    assert_eq!(doc["state"]["reported"], json!({"n": 5}));
}

#[tokio::test]
async fn an_acl_gives_each_device_its_own_shadow_and_nothing_else() {
    let dir = temp_dir("shadow-acl");
    let acl = dir.join("acl");
    std::fs::write(&acl, "pattern readwrite $aws/things/%c/shadow/#\n").unwrap();
    let weir = Weir::start(&dir, &["--mqtt-acl-file", acl.to_str().unwrap()]).await;
    let mut lamp = Mqtt::connect(weir.mqtt, "lamp").await;
    lamp.subscribe(&format!("{LAMP}/update/accepted")).await;
    lamp.publish(
        &format!("{LAMP}/update"),
        json!({"state": {"reported": {"on": true}}}).to_string(),
    )
    .await;
    let (topic, v) = lamp.next(10).await.expect("the lamp's own answer");
    assert_eq!(topic, format!("{LAMP}/update/accepted"));
    assert_eq!(v["version"], 1);

    let mut opts = MqttOptions::new("intruder", weir.mqtt.ip().to_string(), weir.mqtt.port());
    opts.set_keep_alive(Duration::from_secs(5));
    let (intruder, mut el) = rumqttc::AsyncClient::new(opts, 10);
    intruder
        .subscribe(format!("{LAMP}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let codes = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::SubAck(ack)) = el.poll().await.unwrap() {
                return ack.return_codes;
            }
        }
    })
    .await
    .expect("a SUBACK");
    assert_eq!(codes, [rumqttc::SubscribeReasonCode::Failure]);
    intruder
        .publish(
            format!("{LAMP}/update"),
            QoS::AtLeastOnce,
            false,
            json!({"state": {"desired": {"on": false}}}).to_string(),
        )
        .await
        .unwrap();
    let poll = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    weir.wait_metric(
        r#"weir_broker_messages_dropped_total{reason="not_authorized"}"#,
        1.0,
    )
    .await;
    poll.abort();
    let (_, doc) = weir.request(Method::GET, "/v1/things/lamp/shadow").await;
    assert_eq!(doc["version"], 1, "the intruder changed nothing");
    assert!(doc["state"].get("desired").is_none());
    assert!(lamp.next(1).await.is_none());
}

#[tokio::test]
async fn shadows_are_served_through_mosquitto_as_an_external_broker() {
    let broker = Mosquitto::start().await;
    let dir = temp_dir("shadow-external");
    let url = format!("mqtt://{}", broker.addr);
    let weir = Weir::start(&dir, &["--broker", &url, "--broker-qos", "1"]).await;
    let mut device = Mqtt::connect(broker.addr, "valve").await;
    device.subscribe("$aws/things/valve/shadow/+/+").await;
    // weir subscribes to the request topics at start; a get is answered once it has.
    let (topic, v) = device
        .publish_until_seen(
            "$aws/things/valve/shadow/get",
            "",
            &mut device_clone(&broker).await,
        )
        .await;
    assert_eq!(topic, "$aws/things/valve/shadow/get/rejected");
    assert_eq!(v["code"], 404);
    while device.next(1).await.is_some() {}
    device
        .publish(
            "$aws/things/valve/shadow/update",
            json!({"state": {"desired": {"open": true}}, "clientToken": "v1"}).to_string(),
        )
        .await;
    let got = answers(&mut device, 3).await;
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        [
            "$aws/things/valve/shadow/update/accepted",
            "$aws/things/valve/shadow/update/delta",
            "$aws/things/valve/shadow/update/documents"
        ]
    );
    assert_eq!(got[1].1["state"], json!({"open": true}));
    assert_eq!(got[1].1["clientToken"], "v1");
    let (status, doc) = weir.request(Method::GET, "/v1/things/valve/shadow").await;
    assert_eq!(status, 200);
    assert_eq!(doc["version"], 1);
}

/// A second client of `broker` watching the valve's get answers.
async fn device_clone(broker: &Mosquitto) -> Mqtt {
    let watcher = Mqtt::connect(broker.addr, "valve-watcher").await;
    watcher.subscribe("$aws/things/valve/shadow/get/+").await;
    watcher
}

#[tokio::test]
async fn two_replicas_on_postgresql_never_accept_the_same_version_twice() {
    let db = Database::create("weir_shadows");
    let url = db.url();
    let root = temp_dir("shadow-fleet");
    let (a, b) = (root.join("a"), root.join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let one = Weir::start(&a, &["--rule-store", &url]).await;
    let two = Weir::start(&b, &["--rule-store", &url]).await;
    async fn update(w: &Weir, n: usize) -> (reqwest::StatusCode, Value) {
        let body = json!({"state": {"reported": {format!("k{n}"): n}}});
        w.send_json(Method::POST, "/v1/things/shared/shadow", &body)
            .await
    }
    let sends = (0..20).map(|n| {
        let w = if n % 2 == 0 { &one } else { &two };
        update(w, n)
    });
    let mut versions = BTreeSet::new();
    for (status, body) in futures_util::future::join_all(sends).await {
        assert_eq!(status, 200, "{body}");
        assert!(versions.insert(body["version"].as_u64().unwrap()), "{body}");
    }
    assert_eq!(versions, (1..=20).collect());
    let (_, doc) = two.request(Method::GET, "/v1/things/shared/shadow").await;
    assert_eq!(doc["state"]["reported"].as_object().unwrap().len(), 20);

    // Both name version 20: one is accepted as 21, the other is a conflict.
    let named = json!({"state": {"desired": {"x": 1}}, "version": 20});
    let (r1, r2) = tokio::join!(
        one.send_json(Method::POST, "/v1/things/shared/shadow", &named),
        two.send_json(Method::POST, "/v1/things/shared/shadow", &named),
    );
    let mut statuses = [r1.0.as_u16(), r2.0.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{r1:?} {r2:?}");
    let (_, doc) = one.request(Method::GET, "/v1/things/shared/shadow").await;
    assert_eq!(doc["version"], 21);

    // A shadow deleted through one replica is gone through the other, and its numbering
    // goes on there.
    let (status, _) = one
        .request(Method::DELETE, "/v1/things/shared/shadow")
        .await;
    assert_eq!(status, 200);
    let (status, _) = two.request(Method::GET, "/v1/things/shared/shadow").await;
    assert_eq!(status, 404);
    let (_, body) = update(&two, 99).await;
    assert_eq!(body["version"], 22);
    assert_eq!(
        psql(
            &db.name,
            &[
                "-tAc",
                "SELECT version FROM weir_shadows WHERE thing = 'shared'"
            ]
        )
        .trim(),
        "22"
    );
}

#[tokio::test]
async fn a_thing_asked_past_its_rate_is_told_too_many_requests() {
    let dir = temp_dir("shadow-rate");
    let weir = Weir::start(&dir, &["--shadow-requests-per-second-per-thing", "2"]).await;
    let mut statuses = Vec::new();
    for n in 0..10 {
        let (status, body) = weir
            .send_json(
                Method::POST,
                "/v1/things/chatty/shadow",
                &json!({"state": {"reported": {"n": n}}}),
            )
            .await;
        if status == 429 {
            assert_eq!(body["error"]["message"], "Too Many Requests");
        }
        statuses.push(status.as_u16());
    }
    let accepted = statuses.iter().filter(|s| **s == 200).count();
    assert!((2..=4).contains(&accepted), "{statuses:?}");
    assert_eq!(
        accepted + statuses.iter().filter(|s| **s == 429).count(),
        10
    );
    // Another thing is not held back by this one.
    let (status, _) = weir
        .send_json(
            Method::POST,
            "/v1/things/quiet/shadow",
            &json!({"state": {"reported": {"n": 1}}}),
        )
        .await;
    assert_eq!(status, 200);
    let throttled = weir
        .metric(r#"weir_shadow_requests_total{op="update",outcome="throttled"}"#)
        .await;
    assert_eq!(throttled as usize, 10 - accepted);
    // A second later the thing may ask again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, _) = weir
        .send_json(
            Method::POST,
            "/v1/things/chatty/shadow",
            &json!({"state": {"reported": {"n": 10}}}),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_will_on_a_shadow_topic_reaches_subscribers_but_not_the_shadow() {
    let dir = temp_dir("shadow-will");
    let weir = Weir::start(&dir, &[]).await;
    let topic = "$aws/things/w1/shadow/update";
    let mut watcher = Mqtt::connect(weir.mqtt, "watcher").await;
    watcher.subscribe(topic).await;
    watcher.subscribe("$aws/things/w1/shadow/get/+").await;
    let mut opts = MqttOptions::new("w1", weir.mqtt.ip().to_string(), weir.mqtt.port());
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_last_will(rumqttc::LastWill::new(
        topic,
        json!({"state": {"reported": {"online": false}}}).to_string(),
        QoS::AtLeastOnce,
        false,
    ));
    let (_client, mut el) = rumqttc::AsyncClient::new(opts, 10);
    let task = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    weir.wait_metric("weir_broker_connections", 2.0).await;
    task.abort();
    let (got, v) = watcher.next(10).await.expect("the will");
    assert_eq!(
        (got.as_str(), v["state"]["reported"]["online"].clone()),
        (topic, json!(false))
    );
    // The shadow service did not take it: a get after it finds no shadow.
    watcher.publish("$aws/things/w1/shadow/get", "").await;
    let (got, v) = watcher.next(10).await.expect("the get's answer");
    assert_eq!(got, "$aws/things/w1/shadow/get/rejected");
    assert_eq!(v["code"], 404);
}

#[tokio::test]
async fn a_rule_republishing_to_a_shadow_update_topic_updates_the_shadow() {
    let dir = temp_dir("shadow-republish");
    let weir = Weir::start(&dir, &[]).await;
    // AWS's documented way to turn a will into a shadow change: a rule that republishes
    // it to the shadow's update topic.
    let rule = json!({
        "sql": "SELECT {'reported': {'online': online}} AS state FROM 'status/+'",
        "actions": [{"republish": {"topic": "$aws/things/${topic(2)}/shadow/update", "qos": 1}}]
    });
    let (status, body) = weir.put_rule("wills", rule).await;
    assert_eq!(status, 201, "{body}");
    let mut app = Mqtt::connect(weir.mqtt, "app").await;
    app.subscribe("$aws/things/bulb/shadow/update/accepted")
        .await;
    let device = Mqtt::connect(weir.mqtt, "bulb").await;
    device.publish("status/bulb", r#"{"online": false}"#).await;
    let (_, v) = app
        .next(10)
        .await
        .expect("the shadow took the republished update");
    assert_eq!(v["state"], json!({"reported": {"online": false}}));
    assert_eq!(v["version"], 1);
    let (_, doc) = weir.request(Method::GET, "/v1/things/bulb/shadow").await;
    assert_eq!(doc["state"]["reported"], json!({"online": false}));
}
