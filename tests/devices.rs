//! Devices over HTTP (`POST /v1/topics/{topic}`, the shadow routes with a `device`
//! token): the broker's ACL judges a device token as the MQTT user of its name; a
//! publish reaches the rules and the subscribers, is retained if asked, is bounded as an
//! MQTT packet is; kill -9 right after a 200 at `qos=1` loses nothing.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// Makes a token `name` with `role` as the admin; returns the token.
async fn token(weir: &Api, name: &str, role: &str) -> String {
    let (status, body) = weir
        .send_json(
            Method::POST,
            "/v1/tokens",
            &json!({"name": name, "role": role}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// `POST path` with `token` and `body` as `content_type`: the status and the JSON answer.
async fn post(
    weir: &Api,
    token: &str,
    path: &str,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(weir.url(path))
        .bearer_auth(token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(weir: &Api, token: &str, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(weir.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_device_token_publishes_where_the_acl_lets_its_user_and_nowhere_else() {
    let dir = temp_dir("devices-publish");
    let acl = dir.join("acl");
    std::fs::write(
        &acl,
        "topic read out/#\ntopic read plant/#\n\
         pattern write plant/%u/#\npattern readwrite $aws/things/%c/shadow/#\n",
    )
    .unwrap();
    let weir = Weir::start(
        &dir,
        &[
            "--mqtt-acl-file",
            acl.to_str().unwrap(),
            "--mqtt-max-packet-size",
            "2048",
        ],
    )
    .await;
    let rule = json!({
        "sql": "SELECT t, principal() AS who, clientid() AS client, topic(2) AS plant FROM 'plant/+/temp'",
        "actions": [{"republish": {"topic": "out/${topic(2)}"}}]
    });
    assert_eq!(weir.put_rule("temps", rule).await.0, 201);
    let mut watcher = Mqtt::connect(weir.mqtt, "watcher").await;
    watcher.subscribe("out/#").await;
    let p1 = token(&weir, "p1", "device").await;
    let editor = token(&weir, "ops", "editor").await;

    // Its own topic: 200 once taken; the rule sees the token's name as the principal.
    let (status, body) = post(
        &weir,
        &p1,
        "/v1/topics/plant/p1/temp?qos=1",
        "application/json",
        r#"{"t": 21.5}"#,
    )
    .await;
    assert_eq!((status, body), (200, json!({"message": "OK"})));
    assert_eq!(
        watcher.next(10).await.unwrap(),
        (
            "out/p1".to_owned(),
            json!({"t": 21.5, "who": "p1", "client": "p1", "plant": "p1"})
        )
    );

    // Another device's topic: 403, and nothing reaches the rule.
    let (status, body) = post(
        &weir,
        &p1,
        "/v1/topics/plant/p2/temp",
        "application/json",
        r#"{"t": 99}"#,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("forbidden"))
    );
    assert!(watcher.next(1).await.is_none());
    // An editor is not judged by the ACL.
    let (status, _) = post(
        &weir,
        &editor,
        "/v1/topics/plant/p2/temp",
        "application/json",
        r#"{"t": 5}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(watcher.next(10).await.unwrap().1["who"], "ops");

    // Any payload type; retained when asked: a later subscriber gets it.
    let (status, _) = post(
        &weir,
        &p1,
        "/v1/topics/plant/p1/state?retain=true",
        "text/plain",
        "running",
    )
    .await;
    assert_eq!(status, 200);
    let mut late = Mqtt::connect(weir.mqtt, "late").await;
    late.subscribe("plant/p1/state").await;
    assert_eq!(
        late.next(10).await.unwrap(),
        ("plant/p1/state".to_owned(), json!("running"))
    );

    // Bounds as for MQTT: the packet size, the topic; and the options.
    let (status, body) = post(
        &weir,
        &p1,
        "/v1/topics/plant/p1/blob",
        "application/octet-stream",
        vec![7u8; 4000],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (413, json!("payload_too_large")),
        "{body}"
    );
    // A topic that alone fills the packet is refused, whatever the body. (One over the
    // 65,535 bytes MQTT can write does not make a URI the HTTP server takes.)
    let long = format!("/v1/topics/{}", "b".repeat(3000));
    let (status, body) = post(&weir, &editor, &long, "text/plain", "").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (413, json!("payload_too_large")),
        "{body}"
    );
    for (path, code) in [
        ("/v1/topics/plant/p1/temp?qos=2", "invalid_request"),
        ("/v1/topics/plant/p1/temp?retain=yes", "invalid_request"),
        ("/v1/topics/plant/%2B/temp", "invalid_topic"),
    ] {
        let (status, body) = post(&weir, &editor, path, "application/json", "{}").await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (400, json!(code)),
            "{path}: {body}"
        );
    }

    // A device token does nothing else: no rules, no other thing's shadow, no list.
    assert_eq!(get(&weir, &p1, "/v1/rules").await.0, 403);
    let update = r#"{"state": {"reported": {"on": true}}}"#;
    let (status, doc) = post(
        &weir,
        &p1,
        "/v1/things/p1/shadow",
        "application/json",
        update,
    )
    .await;
    assert_eq!((status, doc["version"].clone()), (200, json!(1)), "{doc}");
    let (status, _) = post(
        &weir,
        &p1,
        "/v1/things/p2/shadow",
        "application/json",
        update,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(get(&weir, &p1, "/v1/things/p2/shadow").await.0, 403);
    assert_eq!(get(&weir, &p1, "/v1/things/p1/shadows").await.0, 403);
    // A publish to its shadow's update topic changes the shadow before the 200.
    let (status, _) = post(
        &weir,
        &p1,
        "/v1/topics/$aws/things/p1/shadow/update?qos=1",
        "application/json",
        r#"{"state": {"reported": {"on": false}}}"#,
    )
    .await;
    assert_eq!(status, 200);
    let (status, doc) = get(&weir, &p1, "/v1/things/p1/shadow").await;
    assert_eq!(status, 200);
    assert_eq!(
        (doc["version"].clone(), doc["state"]["reported"].clone()),
        (json!(2), json!({"on": false}))
    );
}

#[tokio::test]
async fn a_kill_right_after_a_qos1_http_publish_is_answered_loses_nothing() {
    // The webhook refuses at first: outputs wait in the action's disk buffer, and the
    // publishes are answered once they are there.
    let hook = Receiver::start(vec![503; 100_000]).await;
    // Slowly: outputs wait in the action's queue too, not yet acknowledged.
    hook.set_delay(Duration::from_millis(50));
    let dir = temp_dir("devices-kill");
    let args = ["--batch-linger", "0ms"];
    let mut weir = WeirProcess::start(&dir, &args).await;
    let rule = json!({"sql": "SELECT n FROM 'kill/#'", "actions": [{"webhook": {"url": hook.url("/in")}}]});
    assert_eq!(weir.put_rule("kill", rule).await.0, 201);
    let device = token(&weir, "meter", "device").await;

    // Sixteen devices publish one after another, each remembering what was answered 200.
    let answered = Arc::new(Mutex::new(BTreeSet::new()));
    let url = weir.url("/v1/topics/kill/x?qos=1");
    let mut publishers = Vec::new();
    for lane in 0..16 {
        let (answered, url, device) = (answered.clone(), url.clone(), device.clone());
        publishers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for n in (lane..100_000).step_by(16) {
                let sent = client
                    .post(&url)
                    .bearer_auth(&device)
                    .body(format!(r#"{{"n": {n}}}"#))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 200 => {
                        answered.lock().unwrap().insert(n);
                    }
                    _ => return,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while answered.lock().unwrap().len() < 100 {
        assert!(Instant::now() < deadline, "weir made no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    weir.kill();
    for p in publishers {
        p.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    assert!(
        hook.bodies.lock().unwrap().is_empty(),
        "nothing was delivered before the kill"
    );
    // The webhook takes everything from now on: what was answered comes out of the
    // disk buffer after the restart.
    hook.set_script(Vec::new());
    hook.set_delay(Duration::ZERO);
    let (http, mqtt) = (weir.http, weir.mqtt);
    let _weir = WeirProcess::start_on(&dir, http, mqtt, &args).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got: BTreeSet<i64> = hook.numbers().into_iter().collect();
        let missing: Vec<i64> = answered
            .iter()
            .filter(|n| !got.contains(n))
            .copied()
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} answered 200 and never delivered: {missing:?}",
            missing.len(),
            answered.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn through_an_external_broker_an_http_publish_goes_to_that_broker() {
    let broker = Mosquitto::start().await;
    let dir = temp_dir("devices-external");
    let url = format!("mqtt://{}", broker.addr);
    let weir = Weir::start(&dir, &["--broker", &url, "--broker-qos", "1"]).await;
    let rule = json!({
        "sql": "SELECT t FROM 'plant/+/temp'",
        "actions": [{"republish": {"topic": "out/${topic(2)}"}}]
    });
    assert_eq!(weir.put_rule("temps", rule).await.0, 201);
    let mut watcher = Mqtt::connect(broker.addr, "watcher").await;
    watcher.subscribe("out/#").await;
    let editor = token(&weir, "ops", "editor").await;
    // weir subscribes for the rule once it is installed: publish until the rule's
    // output comes back through the broker.
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let (status, body) = post(
            &weir,
            &editor,
            "/v1/topics/plant/p1/temp?qos=1&retain=true",
            "application/json",
            r#"{"t": 7}"#,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        if let Some(got) = watcher.next(1).await {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "no output came through the broker"
        );
    };
    assert_eq!(got, ("out/p1".to_owned(), json!({"t": 7})));
    // Retained on that broker: a later subscriber of it gets the message.
    let mut late = Mqtt::connect(broker.addr, "late").await;
    late.subscribe("plant/p1/temp").await;
    assert_eq!(
        late.next(10).await.unwrap(),
        ("plant/p1/temp".to_owned(), json!({"t": 7}))
    );
}
