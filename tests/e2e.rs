//! End to end with the embedded broker: weir in the test process (and the real binary
//! where a crash, a signal or the exit code is the point), a real MQTT client, a real HTTP
//! receiver, files on disk.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn seed_rule_reaches_every_action() {
    let dir = temp_dir("seed");
    let out_dir = dir.join("out");
    let weir = Weir::start(&dir, &[]).await;
    let hook = Receiver::start(vec![]).await;
    let (status, body) = weir
        .put_rule(
            "hot",
            json!({
                "sql": SEED_SQL,
                "description": "hot machines",
                "actions": [
                    {"republish": {"topic": "alerts/${topic(3)}"}},
                    {"webhook": {"url": hook.url("/hook"), "headers": {"x-device": "${clientid()}"}}},
                    {"object_store": {"url": format!("file://{}", out_dir.display()), "format": "jsonl", "max_rows": 1}}
                ]
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["topic_filter"], "enterprise/facilities/+/metrics");

    let mut watcher = Mqtt::connect(weir.mqtt, "watcher").await;
    watcher.subscribe("alerts/#").await;
    let device = Mqtt::connect(weir.mqtt, "plant-sensor-7").await;
    // Cold first: if it were let through, it would arrive before the hot one.
    device
        .publish("enterprise/facilities/plant-01/metrics", COLD)
        .await;
    device
        .publish("enterprise/facilities/plant-01/metrics", HOT)
        .await;

    let (topic, v) = watcher.next(10).await.expect("republished output");
    assert_eq!(topic, "alerts/plant-01");
    assert_seed_output(&v, Some("plant-sensor-7"));
    let bodies = hook.wait_for(1).await;
    assert_seed_output(&bodies[0], Some("plant-sensor-7"));

    // max_rows = 1: the file is rolled (visible) after one row.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let files = loop {
        let files: Vec<_> = std::fs::read_dir(&out_dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        let done: Vec<_> = files
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        if !done.is_empty() || std::time::Instant::now() > deadline {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1);
    assert_seed_output(
        &serde_json::from_str(lines[0]).unwrap(),
        Some("plant-sensor-7"),
    );

    // Nothing else arrives: the cold message was filtered.
    assert!(watcher.next(1).await.is_none());
    let rule = r#"{rule="hot"}"#;
    weir.wait_metric(&format!("weir_rule_messages_matched_total{rule}"), 2.0)
        .await;
    assert_eq!(
        weir.metric(&format!("weir_rule_messages_passed_total{rule}"))
            .await,
        1.0
    );
    assert_eq!(
        weir.metric(&format!("weir_rule_messages_filtered_total{rule}"))
            .await,
        1.0
    );
    weir.wait_metric(
        r#"weir_action_delivered_total{action="1-webhook",rule="hot"}"#,
        1.0,
    )
    .await;
    assert_eq!(
        weir.metric(r#"weir_action_delivered_total{action="0-republish",rule="hot"}"#)
            .await,
        1.0
    );
    assert_eq!(
        weir.metric(r#"weir_rule_processing_seconds_count{rule="hot"}"#)
            .await,
        2.0
    );
    // One output delivered per action, each timed from its message's receipt.
    assert_eq!(
        weir.metric(r#"weir_action_delivery_seconds_count{action="1-webhook",rule="hot"}"#)
            .await,
        1.0
    );
    assert_eq!(hook.bodies.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_payloads_are_counted_and_sent_to_the_error_action() {
    let dir = temp_dir("bad");
    let weir = Weir::start(&dir, &[]).await;
    let (status, body) = weir
        .put_rule(
            "temps",
            json!({
                "sql": "SELECT reading.temp * 2 AS doubled FROM 'sensors/+' WHERE reading.temp > 0",
                "actions": [{"republish": {"topic": "out/${topic(2)}"}}],
                "error_action": {"republish": {"topic": "errors"}}
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let mut watcher = Mqtt::connect(weir.mqtt, "watcher").await;
    watcher.subscribe("out/#").await;
    watcher.subscribe("errors").await;
    let device = Mqtt::connect(weir.mqtt, "dev-1").await;
    device.publish("sensors/a", "this is not json").await;
    // A string where the rule reads into an object. (An object where it reads a number
    // is no failure: AWS's arithmetic on it is Undefined, and the WHERE is false.)
    device.publish("sensors/a", r#"{"reading": "hot"}"#).await;
    device
        .publish("sensors/a", r#"{"reading": {"temp": 21}}"#)
        .await;

    let mut errors = Vec::new();
    let mut outputs = Vec::new();
    while errors.len() + outputs.len() < 3 {
        let (topic, v) = watcher.next(10).await.expect("three messages");
        if topic == "errors" {
            errors.push(v)
        } else {
            outputs.push((topic, v))
        }
    }
    assert_eq!(outputs, [("out/a".to_owned(), json!({"doubled": 42}))]);
    let reasons: Vec<&str> = errors
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["invalid_json", "type_mismatch"], "{errors:?}");
    assert_eq!(errors[0]["rule"], "temps");
    assert_eq!(errors[0]["topic"], "sensors/a");
    assert_eq!(errors[0]["clientid"], "dev-1");
    assert!(errors[0].get("payload").is_none());
    assert_eq!(errors[1]["payload"], json!({"reading": "hot"}));
    weir.wait_metric(
        r#"weir_rule_messages_failed_total{reason="invalid_json",rule="temps"}"#,
        1.0,
    )
    .await;
    assert_eq!(
        weir.metric(r#"weir_rule_messages_failed_total{reason="type_mismatch",rule="temps"}"#)
            .await,
        1.0
    );
    assert_eq!(
        weir.metric(r#"weir_rule_messages_passed_total{rule="temps"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn webhook_retries_5xx_and_sends_4xx_to_the_error_action() {
    let dir = temp_dir("hook");
    let weir = Weir::start(&dir, &[]).await;
    // Two 503s then success for the first output; a 400 for the second.
    let hook = Receiver::start(vec![503, 503, 200, 400]).await;
    let errors = Receiver::start(vec![]).await;
    let (status, body) = weir
        .put_rule(
            "fwd",
            json!({
                "sql": "SELECT n FROM 'in'",
                "actions": [{"webhook": {"url": hook.url("/h"), "retry": {"initial_backoff": "10ms", "max_attempts": 5}}}],
                "error_action": {"webhook": {"url": errors.url("/e")}}
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let device = Mqtt::connect(weir.mqtt, "d").await;
    device.publish("in", r#"{"n": 1}"#).await;
    assert_eq!(hook.wait_for(1).await, [json!({"n": 1})]);
    device.publish("in", r#"{"n": 2}"#).await;
    let e = errors.wait_for(1).await;
    assert_eq!(e[0]["action"], "0-webhook");
    assert_eq!(e[0]["reason"], "http_status");
    assert_eq!(e[0]["output"], json!({"n": 2}));
    assert!(e[0]["error"].as_str().unwrap().contains("400"), "{e:?}");
    assert_eq!(*hook.hits.lock().unwrap(), 4);
    assert_eq!(
        weir.metric(r#"weir_action_retries_total{action="0-webhook",rule="fwd"}"#)
            .await,
        2.0
    );
    assert_eq!(
        weir.metric(r#"weir_action_delivered_total{action="0-webhook",rule="fwd"}"#)
            .await,
        1.0
    );
    assert_eq!(
        weir.metric(
            r#"weir_action_dead_lettered_total{action="0-webhook",reason="http_status",rule="fwd"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn rules_are_managed_over_http_and_survive_a_restart() {
    let dir = temp_dir("crud");
    let mut weir = WeirProcess::start(&dir, &[]).await;
    let rule = json!({"sql": "SELECT v FROM 'a/+'", "actions": [{"republish": {"topic": "b/${topic(2)}"}}]});
    assert_eq!(weir.put_rule("r1", rule.clone()).await.0, 201);
    assert_eq!(weir.put_rule("r1", rule.clone()).await.0, 200);
    let (status, list) = weir.request(Method::GET, "/v1/rules").await;
    assert_eq!(status, 200);
    assert_eq!(list["rules"].as_array().unwrap().len(), 1);
    let (_, one) = weir.request(Method::GET, "/v1/rules/r1").await;
    assert_eq!(one["name"], "r1");
    assert_eq!(one["enabled"], true);
    assert_eq!(one["source"], "api");
    assert_eq!(one["sql_version"], "2016-03-23");

    let mut watcher = Mqtt::connect(weir.mqtt, "w").await;
    watcher.subscribe("b/#").await;
    let device = Mqtt::connect(weir.mqtt, "d").await;

    // Disabled: nothing flows. Enabled again: it does.
    let (status, r) = weir.request(Method::POST, "/v1/rules/r1/disable").await;
    assert_eq!((status.as_u16(), r["enabled"].clone()), (200, json!(false)));
    device.publish("a/x", r#"{"v": 1}"#).await;
    assert!(watcher.next(1).await.is_none());
    assert_eq!(
        weir.request(Method::POST, "/v1/rules/r1/enable").await.0,
        200
    );
    device.publish("a/x", r#"{"v": 2}"#).await;
    assert_eq!(
        watcher.next(10).await.unwrap(),
        ("b/x".to_owned(), json!({"v": 2}))
    );

    // Replace: the new SQL takes effect without a restart.
    let replaced = json!({"sql": "SELECT v * 10 AS w FROM 'a/+'", "actions": [{"republish": {"topic": "b/${topic(2)}"}}]});
    assert_eq!(weir.put_rule("r1", replaced).await.0, 200);
    device.publish("a/y", r#"{"v": 3}"#).await;
    assert_eq!(
        watcher.next(10).await.unwrap(),
        ("b/y".to_owned(), json!({"w": 30}))
    );

    // Restart on the same data directory: the rule is still there and runs.
    let (http, mqtt) = (weir.http, weir.mqtt);
    weir.kill();
    drop(watcher);
    drop(device);
    let weir = WeirProcess::start_on(&dir, http, mqtt, &[]).await;
    let (status, one) = weir.request(Method::GET, "/v1/rules/r1").await;
    assert_eq!(status, 200);
    assert!(one["sql"].as_str().unwrap().contains("v * 10"));
    let mut watcher = Mqtt::connect(weir.mqtt, "w").await;
    watcher.subscribe("b/#").await;
    let device = Mqtt::connect(weir.mqtt, "d").await;
    device.publish("a/z", r#"{"v": 4}"#).await;
    assert_eq!(
        watcher.next(10).await.unwrap(),
        ("b/z".to_owned(), json!({"w": 40}))
    );

    // Delete.
    assert_eq!(weir.request(Method::DELETE, "/v1/rules/r1").await.0, 204);
    let (status, e) = weir.request(Method::GET, "/v1/rules/r1").await;
    assert_eq!(status, 404);
    assert_eq!(e["error"]["code"], "not_found");
    assert_eq!(weir.request(Method::DELETE, "/v1/rules/r1").await.0, 404);
    device.publish("a/z", r#"{"v": 5}"#).await;
    assert!(watcher.next(1).await.is_none());
    assert!(!weir.metrics().await.contains(r#"rule="r1""#));
}

#[tokio::test]
async fn bad_rules_get_a_400_that_says_where_and_why() {
    let dir = temp_dir("errors");
    let weir = Weir::start(&dir, &[]).await;
    let cases = [
        (
            json!({"sql": "SELECT a FROM 'x' WHERE", "actions": []}),
            "invalid_sql",
            Some((1, 24)),
        ),
        (
            json!({"sql": "SELECT nope(a) FROM 'x'", "actions": []}),
            "invalid_sql",
            Some((1, 8)),
        ),
        (
            json!({"sql": "SELECT a\nFROM 'x/#/y'", "actions": []}),
            "invalid_sql",
            Some((2, 6)),
        ),
        (
            json!({"sql": "SELECT a FROM x", "actions": []}),
            "invalid_sql",
            Some((1, 15)),
        ),
        (
            json!({"sql": "DROP TABLE x", "actions": []}),
            "invalid_sql",
            None,
        ),
        (
            json!({"sql": "SELECT a FROM 'x'", "actions": [{"kafkaa": {}}]}),
            "invalid_rule",
            None,
        ),
        (
            json!({"sql": "SELECT a FROM 'x'", "actions": [{"republish": {"topic": "a/+"}}]}),
            "invalid_action",
            None,
        ),
        (
            json!({"sql": "SELECT a FROM 'x'", "actions": [{"webhook": {"url": "ftp://x"}}]}),
            "invalid_action",
            None,
        ),
        (
            json!({"sql": "SELECT a FROM 'x'", "actions": [{"republish": {"topic": "t/${nosuch()}"}}]}),
            "invalid_sql",
            None,
        ),
        (json!({"sql": "SELECT a FROM 'x'"}), "invalid_rule", None),
        (
            json!({"sql": "SELECT a FROM 'x'", "actions": [], "colour": "red"}),
            "invalid_rule",
            None,
        ),
    ];
    for (body, code, pos) in cases {
        let (status, e) = weir.put_rule("bad", body.clone()).await;
        assert_eq!(status, 400, "{body} → {e}");
        assert_eq!(e["error"]["code"], code, "{body} → {e}");
        assert!(!e["error"]["message"].as_str().unwrap().is_empty());
        if let Some((line, column)) = pos {
            assert_eq!(
                (e["error"]["line"].clone(), e["error"]["column"].clone()),
                (json!(line), json!(column)),
                "{e}"
            );
        }
    }
    let (status, e) = weir
        .put_rule(
            "bad",
            json!({"sql": "SELECT a FROM 'x'", "actions": [], "sql_version": "beta"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        (e["error"]["code"].as_str(), e["error"]["field"].as_str()),
        (Some("invalid_rule"), Some("sql_version"))
    );
    // A 2015-10-08 rule cannot use what 2016-03-23 added, and is told where.
    let (status, e) = weir
        .put_rule(
            "old",
            json!({"sql": "SELECT length(a) AS n FROM 'x'", "actions": [], "sql_version": "2015-10-08"}),
        )
        .await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["code"], "invalid_sql", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("length() needs sql_version 2016-03-23"),
        "{e}"
    );
    assert_eq!(
        (e["error"]["line"].clone(), e["error"]["column"].clone()),
        (json!(1), json!(8))
    );
    let (_, e) = weir
        .put_rule(
            "bad",
            json!({"sql": "SELECT a FROM 'x/#/y'", "actions": []}),
        )
        .await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'#' must be the last level"),
        "{e}"
    );
    let (_, e) = weir
        .put_rule(
            "bad",
            json!({"sql": "SELECT a FROM 'x'", "actions": [{"kafkaa": {}}]}),
        )
        .await;
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown variant `kafkaa`"),
        "{e}"
    );

    // Not JSON at all, though it says it is.
    let r = weir
        .client
        .put(weir.url("/v1/rules/bad"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "invalid_json");
    // Bad names, unknown routes.
    let (status, e) = weir
        .put_rule(
            "bad%20name",
            json!({"sql": "SELECT a FROM 'x'", "actions": []}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), e["error"]["code"].as_str()),
        (400, Some("invalid_name"))
    );
    assert_eq!(weir.request(Method::GET, "/v2/nothing").await.0, 404);
    // None of them was stored.
    let (_, list) = weir.request(Method::GET, "/v1/rules").await;
    assert_eq!(list["rules"], json!([]));
}

#[tokio::test]
async fn rule_files_are_loaded_at_start() {
    let dir = temp_dir("files");
    let queries = concat!(env!("CARGO_MANIFEST_DIR"), "/queries");
    let mut weir = Weir::start(&dir, &["--queries-dir", queries]).await;
    let (_, list) = weir.request(Method::GET, "/v1/rules").await;
    let shipped: Vec<String> = std::fs::read_dir(queries)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(!shipped.is_empty());
    for name in &shipped {
        let rule = list["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name.as_str());
        let rule = rule.unwrap_or_else(|| panic!("{name} not loaded: {list}"));
        assert!(rule["source"].as_str().unwrap().starts_with("file:"));
    }
    // The shipped walkthrough rule works as documented.
    let mut watcher = Mqtt::connect(weir.mqtt, "watcher").await;
    watcher.subscribe("alerts/#").await;
    let device = Mqtt::connect(weir.mqtt, "plant-sensor-1").await;
    device
        .publish("enterprise/facilities/plant-01/metrics", HOT)
        .await;
    let (topic, v) = watcher.next(10).await.expect("alert");
    assert_eq!(topic, "alerts/plant-01/high-temperature");
    assert_seed_output(&v, Some("plant-sensor-1"));
    // Its file action names no URL: the output lands in <data dir>/out/<rule>/.
    weir.wait_metric(
        r#"weir_action_delivered_total{action="1-object_store",rule="high_temperature"}"#,
        1.0,
    )
    .await;
    weir.stop().await.expect("weir stops cleanly");
    let out = dir.join("out").join("high_temperature");
    let files: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let line = std::fs::read_to_string(&files[0]).unwrap();
    assert_seed_output(
        &serde_json::from_str(line.trim()).unwrap(),
        Some("plant-sensor-1"),
    );
}

/// Rules that once aborted weir (a sum of 100,000 terms exhausted a thread's stack; a
/// variable doubled 30 times, the memory) get a 400 that says why, and weir carries on.
#[tokio::test]
async fn rules_that_would_exhaust_weir_get_a_400() {
    let dir = temp_dir("exhaust");
    let weir = Weir::start(&dir, &[]).await;
    let sum = |n: usize| format!("SELECT {} AS x FROM 't'", vec!["1"; n].join("+"));
    let mut doubled = "SET @v0 = a".to_owned();
    for i in 1..=30 {
        doubled.push_str(&format!(", @v{i} = @v{} + @v{}", i - 1, i - 1));
    }
    doubled.push_str(" SELECT @v30 AS x FROM 't'");
    for (sql, says) in [
        (sum(100_000), "at most 65536"),
        (sum(20_000), "levels deep"),
        (doubled, "variables are substituted"),
    ] {
        let rule = json!({"sql": sql, "actions": []});
        let (status, body) = weir.put_rule("big", rule).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_sql");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
    }
    assert_eq!(weir.request(Method::GET, "/healthz").await.0, 200);
    let ok = json!({"sql": sum(100), "actions": []});
    assert_eq!(weir.put_rule("fine", ok).await.0, 201);
}

/// The HTTP API answers while weir loads its rules: `/readyz` says 503 until they run.
#[tokio::test]
async fn readiness_waits_for_the_rules_to_load() {
    let dir = temp_dir("ready");
    let queries = dir.join("queries");
    std::fs::create_dir_all(&queries).unwrap();
    for i in 0..300 {
        std::fs::write(
            queries.join(format!("r{i}.sql")),
            format!("-- action: {{\"republish\": {{\"topic\": \"out/{i}\"}}}}\nSELECT a + {i} AS b FROM 'in/{i}'\n"),
        )
        .unwrap();
    }
    let weir = Weir::start(&dir, &["--queries-dir", queries.to_str().unwrap()]).await;
    assert!(
        weir.answered_not_ready,
        "/readyz answered 503 while the rules loaded"
    );
    let (_, list) = weir.request(Method::GET, "/v1/rules").await;
    assert_eq!(list["rules"].as_array().unwrap().len(), 300);
}

/// Rules deleted over the API while weir starts its stored rules stay deleted: the
/// loading does not start them again from what it read before.
#[tokio::test]
async fn rules_deleted_while_weir_starts_stay_deleted() {
    let dir = temp_dir("delete-at-start");
    let rules: Vec<serde_json::Value> = (0..1000)
        .map(|i| {
            json!({
                "name": format!("r{i:04}"),
                "sql": format!("SELECT a + {i} AS b FROM 'in/{i}'"),
                "actions": [{"republish": {"topic": format!("out/{i}")}}],
                "source": "api", "created_at_ms": 1, "updated_at_ms": 1
            })
        })
        .collect();
    std::fs::write(
        dir.join("rules.json"),
        serde_json::to_vec(&json!({"version": 1, "rules": rules})).unwrap(),
    )
    .unwrap();
    // The admin token is known before weir is up: the deletes go out while it starts.
    let token = "the-admin-token-of-this-test";
    std::fs::write(dir.join("token"), token).unwrap();
    let mut weir = Weir::launch(
        &dir,
        &["--admin-token-file", dir.join("token").to_str().unwrap()],
    );
    weir.use_token(Some(token));
    // Delete the last 100 rules, one after the other, while the stored rules start.
    let mut deleted = Vec::new();
    for i in 900..1000 {
        let name = format!("r{i:04}");
        match weir
            .client
            .delete(weir.url(&format!("/v1/rules/{name}")))
            .send()
            .await
        {
            Ok(r) => {
                assert_eq!(r.status(), 204, "{name}");
                deleted.push(i);
            }
            // The HTTP API is not up yet.
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    weir.wait_started().await;
    assert!(!deleted.is_empty());
    let (_, list) = weir.request(Method::GET, "/v1/rules").await;
    assert_eq!(
        list["rules"].as_array().unwrap().len(),
        1000 - deleted.len()
    );
    // None of them runs: a message on their topics gives nothing.
    let mut watcher = Mqtt::connect(weir.mqtt, "watcher").await;
    watcher.subscribe("out/#").await;
    let device = Mqtt::connect(weir.mqtt, "device").await;
    for i in &deleted {
        device.publish(&format!("in/{i}"), r#"{"a": 1}"#).await;
    }
    device.publish("in/0", r#"{"a": 1}"#).await;
    let (topic, _) = watcher.next(10).await.expect("the output of a kept rule");
    assert_eq!(topic, "out/0", "a deleted rule ran");
    assert!(watcher.next(1).await.is_none());
}

#[tokio::test]
async fn a_taken_port_is_a_one_line_error_naming_the_setting() {
    init();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = temp_dir("port");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "serve",
            "--http-listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        // Settings come from the environment as well as from flags.
        .env("WEIR_MQTT_LISTEN", format!("127.0.0.1:{port}"))
        .env("WEIR_DATA_DIR", &*dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.trim().lines().last().unwrap();
    assert!(last.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(
        last.contains("--mqtt-listen") && last.contains("WEIR_MQTT_LISTEN"),
        "{stderr}"
    );
    assert!(last.contains("in use"), "{stderr}");
    assert_eq!(
        last.matches("in use").count(),
        1,
        "the reason said once: {stderr}"
    );
}

#[tokio::test]
async fn shutdown_rolls_open_files() {
    let dir = temp_dir("shutdown");
    let (mut weir, out_dir, _device) = file_rule_with_rows(&dir, 3).await;
    let listing = || -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&out_dir) else {
            return Vec::new();
        };
        let mut v: Vec<String> = entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    // Still open: the rows are in a staging file in the data directory, nothing is in the
    // output directory yet.
    assert!(listing().is_empty(), "{:?}", listing());
    let staging = dir.join("actions/files/0-object_store/staging");
    let staged: Vec<String> = std::fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jsonl"))
        .collect();
    assert_eq!(staged.len(), 1, "{staged:?}");
    assert!(weir.terminate().success());
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "the staging file is removed once uploaded"
    );
    let after = listing();
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(
        after[0].starts_with("files-0-object_store-") && after[0].ends_with(".jsonl"),
        "{after:?}"
    );
    let text = std::fs::read_to_string(out_dir.join(&after[0])).unwrap();
    assert_eq!(text, "{\"n\":0}\n{\"n\":1}\n{\"n\":2}\n");
}

#[tokio::test]
async fn a_crash_leaves_no_half_written_file_and_the_next_start_completes_it() {
    let dir = temp_dir("crash");
    let (mut weir, out_dir, device) = file_rule_with_rows(&dir, 2).await;
    let (http, mqtt) = (weir.http, weir.mqtt);
    weir.kill();
    drop(device);
    let visible = |d: &std::path::Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect()
    };
    assert!(
        visible(&out_dir).is_empty(),
        "nothing is visible before it is complete"
    );
    let _weir = WeirProcess::start_on(&dir, http, mqtt, &[]).await;
    let files = visible(&out_dir);
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert_eq!(text, "{\"n\":0}\n{\"n\":1}\n");
}

/// Starts weir with a rule that writes `{"n": ...}` lines to `<dir>/out` (rolled only by
/// age, an hour) and publishes `rows` messages to it; returns when all were written.
async fn file_rule_with_rows(
    dir: &std::path::Path,
    rows: u32,
) -> (WeirProcess, std::path::PathBuf, Mqtt) {
    let out_dir = dir.join("out");
    let weir = WeirProcess::start(dir, &[]).await;
    let url = format!("file://{}", out_dir.display());
    let rule = json!({"sql": "SELECT n FROM 'f'", "actions": [{"object_store": {"url": url, "max_age": "1h"}}]});
    assert_eq!(weir.put_rule("files", rule).await.0, 201);
    let device = Mqtt::connect(weir.mqtt, "d").await;
    for n in 0..rows {
        device.publish("f", format!(r#"{{"n": {n}}}"#)).await;
    }
    weir.wait_metric(
        r#"weir_action_delivered_total{action="0-object_store",rule="files"}"#,
        f64::from(rows),
    )
    .await;
    (weir, out_dir, device)
}

#[tokio::test]
async fn a_rule_can_be_tested_on_sample_messages_without_deploying_it() {
    let dir = temp_dir("dry-run");
    let weir = Weir::start(&dir, &[]).await;
    let body = json!({
        "sql": SEED_SQL,
        "actions": [
            {"republish": {"topic": "alerts/${topic(3)}"}},
            {"webhook": {"url": "http://127.0.0.1:9/${clientid()}", "headers": {"x-site": "${topic(3)}"}}}
        ],
        "messages": [
            {"topic": "enterprise/facilities/plant-01/metrics", "clientid": "dev-1",
             "payload": {"currentAmbientTemperature": 90.5, "geoCoordinates": {"latitude": 52.1}}},
            {"topic": "enterprise/facilities/plant-01/metrics", "payload": {"currentAmbientTemperature": 20}},
            {"topic": "somewhere/else", "payload": {}},
            {"topic": "enterprise/facilities/plant-01/metrics", "payload_raw": "not json"}
        ]
    });
    let (status, v) = weir.test_rule(&body).await;
    assert_eq!(status, 200);
    let res = v["results"].as_array().unwrap();
    assert_eq!(res[0]["status"], "output", "{v}");
    assert_eq!(res[0]["outputs"][0]["deviceIdentifier"], "dev-1");
    assert_eq!(res[0]["outputs"][0]["lat"], 52.1);
    assert_eq!(res[0]["undefined"], json!(["geoCoordinates.longitude"]));
    assert_eq!(
        res[0]["actions"][0],
        json!({"action": "0-republish", "params": {"topic": "alerts/plant-01"}})
    );
    assert_eq!(
        res[0]["actions"][1],
        json!({"action": "1-webhook", "params": {"url": "http://127.0.0.1:9/dev-1", "headers.x-site": "plant-01"}})
    );
    assert_eq!(res[1]["status"], "filtered");
    assert_eq!(res[1]["undefined"], json!(["geoCoordinates"]));
    assert_eq!(res[2]["status"], "topic_mismatch");
    assert_eq!(res[3]["status"], "failed");
    assert_eq!(res[3]["error"]["reason"], "invalid_json");
    // Nothing was deployed.
    let (_, list) = weir.request(Method::GET, "/v1/rules").await;
    assert_eq!(list["rules"], json!([]));
    // Bad SQL: a 400 that says where.
    let bad = json!({"sql": "SELECT a FROM 'x' WHERE", "messages": []});
    let (status, e) = weir.test_rule(&bad).await;
    assert_eq!(status, 400);
    assert_eq!(
        (e["error"]["code"].as_str(), e["error"]["line"].as_u64()),
        (Some("invalid_sql"), Some(1))
    );

    // Sample messages may carry MQTT 5 properties.
    let body = json!({
        "sql": "SELECT get_mqtt_property('content_type') AS ct, get_user_properties('tag') AS tags FROM 'v5'",
        "actions": [{"republish": {"topic": "out/${get_user_properties('tag')[1]}"}}],
        "messages": [
            {"topic": "v5", "payload": {}, "mqtt_properties": {"content_type": "text/plain",
             "user_properties": [{"tag": "a"}, {"tag": "b"}]}},
            {"topic": "v5", "payload": {}},
            {"topic": "v5", "payload": {}, "mqtt_properties": {"format_indicator": "UTF9"}}
        ]
    });
    let (status, e) = weir.test_rule(&body).await;
    assert_eq!(status, 400, "a bad format_indicator is refused");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("messages[2].mqtt_properties"), "{message}");
    let mut body = body;
    body["messages"].as_array_mut().unwrap().pop();
    let (status, v) = weir.test_rule(&body).await;
    assert_eq!(status, 200);
    let res = v["results"].as_array().unwrap();
    assert_eq!(
        res[0]["outputs"][0],
        json!({"ct": "text/plain", "tags": ["a", "b"]})
    );
    assert_eq!(res[0]["actions"][0]["params"]["topic"], "out/b");

    // The rule's SQL version decides how a whole-number Decimal is written.
    for (version, want) in [
        ("2016-03-23", r#"{"r":10}"#),
        ("2015-10-08", r#"{"r":10.0}"#),
    ] {
        let body = json!({"sql": "SELECT r FROM 'v'", "sql_version": version,
            "messages": [{"topic": "v", "payload": {"r": 10.0}}]});
        let (status, v) = weir.test_rule(&body).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["results"][0]["outputs"][0].to_string(), want, "{version}");
    }
    // Without properties (MQTT 3.1.1) both are Undefined.
    assert_eq!(res[1]["outputs"][0], json!({}));
}

#[tokio::test]
async fn basic_ingest_topics_reach_only_the_named_rule() {
    let dir = temp_dir("ingest");
    let weir = Weir::start(&dir, &[]).await;
    for name in ["ingest", "other"] {
        let rule = json!({
            "sql": "SELECT topic() AS t, v FROM 'sensors/+'",
            "actions": [{"republish": {"topic": format!("out/{name}")}}]
        });
        assert_eq!(weir.put_rule(name, rule).await.0, 201);
    }
    let mut watcher = Mqtt::connect(weir.mqtt, "watcher").await;
    watcher.subscribe("out/#").await;
    let device = Mqtt::connect(weir.mqtt, "device").await;
    device
        .publish("$aws/rules/ingest/sensors/a", r#"{"v": 1}"#)
        .await;
    // The named rule's filter must match the rest of the topic.
    device
        .publish("$aws/rules/ingest/elsewhere/a", r#"{"v": 2}"#)
        .await;
    device
        .publish("$aws/rules/nosuchrule/sensors/a", r#"{"v": 3}"#)
        .await;
    assert_eq!(
        watcher.next(10).await.unwrap(),
        ("out/ingest".to_owned(), json!({"t": "sensors/a", "v": 1}))
    );
    assert!(watcher.next(1).await.is_none());
    weir.wait_metric("weir_ingress_unmatched_total", 2.0).await;
}

#[tokio::test]
async fn replacing_a_rule_loses_none_of_its_open_file() {
    let dir = temp_dir("replace-file");
    let (mut weir, out_dir, device) = file_rule_with_rows(&dir, 2).await;
    // Replace the rule (same action): the old version drains into its own file.
    let url = format!("file://{}", out_dir.display());
    let rule = json!({"sql": "SELECT n FROM 'f'", "actions": [{"object_store": {"url": url, "max_age": "1h"}}]});
    assert_eq!(weir.put_rule("files", rule).await.0, 200);
    for n in 2..4 {
        device.publish("f", format!(r#"{{"n": {n}}}"#)).await;
    }
    weir.wait_metric(
        r#"weir_action_delivered_total{action="0-object_store",rule="files"}"#,
        4.0,
    )
    .await;
    assert!(weir.terminate().success());
    let mut lines: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        [r#"{"n":0}"#, r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]
    );
}

#[tokio::test]
async fn a_rule_starts_its_workers_with_its_first_message() {
    let dir = temp_dir("lazy");
    let weir = Weir::start(&dir, &[]).await;
    for name in ["used", "idle"] {
        let rule = json!({
            "sql": format!("SELECT v FROM '{name}/+'"),
            "actions": [{"republish": {"topic": format!("out/{name}")}}]
        });
        assert_eq!(weir.put_rule(name, rule).await.0, 201);
    }
    // Neither rule has seen a message: neither has workers, so neither has series.
    let text = weir.metrics().await;
    assert!(!text.contains(r#"rule="used""#), "{text}");
    let mut watcher = Mqtt::connect(weir.mqtt, "watcher").await;
    watcher.subscribe("out/#").await;
    let device = Mqtt::connect(weir.mqtt, "device").await;
    device.publish("used/a", r#"{"v": 1}"#).await;
    assert_eq!(
        watcher.next(10).await.unwrap(),
        ("out/used".to_owned(), json!({"v": 1}))
    );
    weir.wait_metric(
        r#"weir_action_delivered_total{action="0-republish",rule="used"}"#,
        1.0,
    )
    .await;
    let text = weir.metrics().await;
    assert!(
        text.contains(r#"weir_rule_messages_matched_total{rule="used"} 1"#),
        "{text}"
    );
    assert!(!text.contains(r#"rule="idle""#), "{text}");
    // The idle rule still works when its first message comes.
    device.publish("idle/a", r#"{"v": 2}"#).await;
    assert_eq!(
        watcher.next(10).await.unwrap(),
        ("out/idle".to_owned(), json!({"v": 2}))
    );
}

/// An instance keeps at most `--max-rules` rules (a new one past that is a 409; replacing
/// one is not), and a rule has at most 10 actions (AWS IoT's limit).
#[tokio::test]
async fn rules_and_actions_are_bounded() {
    let dir = temp_dir("max-rules");
    let weir = Weir::start(&dir, &["--max-rules", "2"]).await;
    let rule = json!({"sql": "SELECT a FROM 'in'", "actions": [{"republish": {"topic": "out"}}]});
    assert_eq!(weir.put_rule("a", rule.clone()).await.0, 201);
    assert_eq!(weir.put_rule("b", rule.clone()).await.0, 201);
    let (status, body) = weir.put_rule("c", rule.clone()).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "too_many_rules");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("weir has 2 rules, as many as --max-rules allows"),
        "{body}"
    );
    assert_eq!(weir.put_rule("b", rule.clone()).await.0, 200);
    weir.request(Method::DELETE, "/v1/rules/a").await;
    assert_eq!(weir.put_rule("c", rule).await.0, 201);

    let eleven: Vec<_> = (0..11)
        .map(|i| json!({"republish": {"topic": format!("out/{i}")}}))
        .collect();
    let (status, body) = weir
        .put_rule("c", json!({"sql": "SELECT a FROM 'in'", "actions": eleven}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_rule");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a rule has at most 10 actions, got 11"),
        "{body}"
    );
}

#[tokio::test]
async fn a_rule_over_its_memory_budget_fails_its_messages_and_the_others_carry_on() {
    let dir = temp_dir("memory");
    let weir = Weir::start(&dir, &["--rule-memory-budget", "8388608"]).await;
    let errors = Receiver::start(vec![]).await;
    let fine = Receiver::start(vec![]).await;
    // 100 copies of a 100 KB field: 10 MB per message, over the 8 MiB budget.
    let copies = vec!["s"; 100].join(", ");
    let (status, body) = weir
        .put_rule(
            "greedy",
            json!({
                "sql": format!("SELECT i, concat({copies}) AS big FROM 'mem/+'"),
                "actions": [{"webhook": {"url": fine.url("/greedy")}}],
                "error_action": {"webhook": {"url": errors.url("/e")}}
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = weir
        .put_rule(
            "modest",
            json!({
                "sql": "SELECT i FROM 'mem/+'",
                "actions": [{"webhook": {"url": fine.url("/modest")}}]
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let device = Mqtt::connect(weir.mqtt, "d").await;
    let s = "y".repeat(100_000);
    for i in 0..3 {
        device
            .publish("mem/a", json!({"i": i, "s": s}).to_string())
            .await;
    }
    // A small message still passes the greedy rule: 100 copies of 10 bytes.
    device
        .publish("mem/a", json!({"i": 3, "s": "0123456789"}).to_string())
        .await;
    let failed = errors.wait_for(3).await;
    assert!(
        failed.iter().all(|e| e["reason"] == "memory_budget"),
        "{failed:?}"
    );
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("its memory budget is 8.0 MiB (--rule-memory-budget)"),
        "{failed:?}"
    );
    let got = fine.wait_for(5).await;
    let mut modest: Vec<i64> = Vec::new();
    let mut greedy = Vec::new();
    for v in &got {
        if v.get("big").is_some() {
            greedy.push(v["i"].as_i64().unwrap());
        } else {
            modest.push(v["i"].as_i64().unwrap());
        }
    }
    modest.sort();
    assert_eq!((modest, greedy), (vec![0, 1, 2, 3], vec![3]));
    weir.wait_metric(
        r#"weir_rule_messages_failed_total{reason="memory_budget",rule="greedy"}"#,
        3.0,
    )
    .await;
    assert_eq!(weir.request(Method::GET, "/healthz").await.0, 200);
    // Trying the rule on a sample runs within the same budget.
    let (status, tried) = weir
        .test_rule(&json!({
            "sql": format!("SELECT concat({copies}) AS big FROM 'mem/+'"),
            "messages": [{"topic": "mem/a", "payload": {"s": s}}]
        }))
        .await;
    assert_eq!(status, 200, "{tried}");
    let result = &tried["results"][0];
    assert_eq!(result["status"], "failed", "{result}");
    assert_eq!(result["error"]["reason"], "memory_budget", "{result}");
}

/// Every API response carries `x-request-id`: the caller's when it is sane, otherwise one
/// weir makes; and with `--log-format json` every log line is a JSON object, the lines
/// logged while answering a request carrying its id.
#[tokio::test]
async fn requests_have_ids_and_logs_can_be_json() {
    let dir = temp_dir("request-ids");
    let weir = WeirProcess::start(&dir, &["--log-format", "json"]).await;
    let id_of = |r: &reqwest::Response| {
        r.headers()
            .get("x-request-id")
            .expect("a request id")
            .to_str()
            .unwrap()
            .to_owned()
    };
    let get = |id: Option<&str>| {
        let mut req = weir.client.get(weir.url("/healthz"));
        if let Some(id) = id {
            req = req.header("x-request-id", id);
        }
        req.send()
    };
    let (a, b) = (get(None).await.unwrap(), get(None).await.unwrap());
    assert_ne!(id_of(&a), id_of(&b));
    assert_eq!(
        id_of(&get(Some("job-42.step:3")).await.unwrap()),
        "job-42.step:3"
    );
    for bad in ["has spaces", "quote\"d", &"x".repeat(65)] {
        let made = id_of(&get(Some(bad)).await.unwrap());
        assert!(made != bad && made.len() == 24, "{bad} gave {made}");
    }

    // A token made over the API is logged, inside the request's span.
    let made = weir
        .client
        .post(weir.url("/v1/tokens"))
        .header("x-request-id", "make-token-1")
        .json(&json!({"name": "ci", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 201);
    let log = std::fs::read_to_string(dir.join("weir.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["fields"].is_object())
    );
    let made_line = lines
        .iter()
        .find(|l| l["fields"]["message"] == "API token made")
        .unwrap_or_else(|| panic!("no token line in {log}"));
    assert_eq!(made_line["span"]["id"], "make-token-1", "{made_line}");
    assert_eq!(made_line["span"]["path"], "/v1/tokens");
}
