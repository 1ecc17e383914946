//! A fleet: several weir processes sharing their rules through PostgreSQL
//! (`--rule-store postgres://...`), the machine's PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::json;

const TOKEN: &str = "weir_replica_test_admin_token_0123456789";

/// Starts `n` replicas on one shared store, each with its own data directory and
/// embedded broker, all with the same admin token.
async fn fleet(root: &std::path::Path, url: &str, n: usize) -> Vec<WeirProcess> {
    std::fs::create_dir_all(root).unwrap();
    let token_file = root.join("admin.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let mut replicas = Vec::new();
    for i in 0..n {
        let dir = root.join(format!("replica-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = WeirProcess::start(
            &dir,
            &[
                "--rule-store",
                url,
                "--admin-token-file",
                token_file.to_str().unwrap(),
            ],
        )
        .await;
        w.use_token(Some(TOKEN));
        replicas.push(w);
    }
    replicas
}

/// Polls `path` on `w` until it answers `status`; returns how long that took.
async fn until_status(w: &WeirProcess, path: &str, status: u16) -> Duration {
    let t0 = Instant::now();
    loop {
        let (s, _) = w.request(Method::GET, path).await;
        if s.as_u16() == status {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{path} did not answer {status} within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether the replica's pipeline runs the rule: a device publishing to the replica's own
/// broker gets an output on `alerts/#` within `secs`.
async fn runs_the_rule(w: &WeirProcess, id: &str, secs: u64) -> bool {
    let mut watcher = Mqtt::connect(w.mqtt, &format!("{id}-watcher")).await;
    watcher.subscribe("alerts/#").await;
    let device = Mqtt::connect(w.mqtt, &format!("{id}-device")).await;
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        device.publish("plant/p1/metrics", r#"{"temp": 90}"#).await;
        if let Some((topic, v)) = watcher.next(1).await {
            assert_eq!((topic.as_str(), &v), ("alerts/p1", &json!({"temp": 90})));
            return true;
        }
    }
    false
}

#[tokio::test]
async fn three_replicas_run_the_rules_changed_through_any_of_them() {
    let db = Database::create("weir_replicas");
    let root = temp_dir("replicas");
    let replicas = fleet(&root, &db.url(), 3).await;
    let (a, b, c) = (&replicas[0], &replicas[1], &replicas[2]);

    // Created through A: B and C have it, and run it, without a restart.
    let rule = json!({
        "sql": "SELECT temp FROM 'plant/+/metrics' WHERE temp > 85",
        "actions": [{"republish": {"topic": "alerts/${topic(2)}"}}]
    });
    let (status, created) = a.put_rule("hot", rule.clone()).await;
    assert_eq!(status, 201, "{created}");
    let to_b = until_status(b, "/v1/rules/hot", 200).await;
    let to_c = until_status(c, "/v1/rules/hot", 200).await;
    eprintln!(
        "a new rule reached the other replicas in {} ms and {} ms",
        to_b.as_millis(),
        to_c.as_millis()
    );
    for (i, w) in replicas.iter().enumerate() {
        assert!(
            runs_the_rule(w, &format!("r{i}"), 10).await,
            "replica {i} runs the rule"
        );
    }

    // Two editors read version 1: the one through A wins, the one through B is refused,
    // whether or not B has heard of A's change yet.
    let mut v2 = rule.clone();
    v2["sql"] = json!("SELECT temp FROM 'plant/+/metrics' WHERE temp > 80");
    let put_if = |w: &WeirProcess, body: serde_json::Value| {
        w.client
            .put(w.url("/v1/rules/hot"))
            .bearer_auth(TOKEN)
            .header("If-Match", "\"1\"")
            .json(&body)
            .send()
    };
    let accepted = put_if(a, v2.clone()).await.unwrap();
    assert_eq!(
        accepted.status().as_u16(),
        200,
        "{}",
        accepted.text().await.unwrap()
    );
    let refused = put_if(b, rule.clone()).await.unwrap();
    assert_eq!(refused.status().as_u16(), 412);
    let t0 = Instant::now();
    loop {
        let (_, r) = c.request(Method::GET, "/v1/rules/hot").await;
        if r["version"] == 2 {
            assert_eq!(r["sql"], v2["sql"]);
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "C did not get version 2: {r}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Deleted through C: gone from A, whose pipeline stops running it.
    let (status, _) = c.request(Method::DELETE, "/v1/rules/hot").await;
    assert_eq!(status, 204);
    until_status(a, "/v1/rules/hot", 404).await;
    assert!(
        !runs_the_rule(a, "after-delete", 2).await,
        "A stopped the rule"
    );

    // Tokens made through one replica work on all, and revoked through another stop
    // working on all.
    let (status, made) = a
        .send_json(
            Method::POST,
            "/v1/tokens",
            &json!({"name": "ci", "role": "viewer"}),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let ci = made["token"].as_str().unwrap().to_owned();
    let with_ci = |w: &WeirProcess| {
        w.client
            .get(w.url("/v1/rules"))
            .bearer_auth(ci.clone())
            .send()
    };
    let t0 = Instant::now();
    while with_ci(c).await.unwrap().status().as_u16() != 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "C never took the new token"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _) = b.request(Method::DELETE, "/v1/tokens/ci").await;
    assert_eq!(status, 204);
    let t0 = Instant::now();
    while with_ci(a).await.unwrap().status().as_u16() != 401 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "A still takes the revoked token"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Named connections too: defined through A, a rule through B names it.
    let (status, body) = a
        .send_json(
            Method::PUT,
            "/v1/connections/alerts",
            &json!({"mqtt": {"url": "mqtt://127.0.0.1:9"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    until_status(b, "/v1/connections/alerts", 200).await;
    let (status, body) = b
        .put_rule(
            "named",
            json!({"sql": "SELECT * FROM 'n'", "actions": [{"republish": {"connection": "alerts", "topic": "x"}}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // A replica that starts later finds the fleet's rules.
    let (status, _) = b.put_rule("late", rule.clone()).await;
    assert_eq!(status, 201);
    let later = fleet(&root.join("later"), &db.url(), 1).await;
    let (status, got) = later[0].request(Method::GET, "/v1/rules/late").await;
    assert_eq!(status, 200, "{got}");
    assert!(runs_the_rule(&later[0], "later", 10).await);
}

/// The fleet of issue 19 on one machine: three replicas share a Mosquitto's stream through
/// a shared subscription and their rules through PostgreSQL, and write to a Kafka broker.
/// A rule created through one runs on all; the load is split; one replica is killed
/// mid-stream and the others carry on, one of them taking over its broker session (what
/// the broker queued for it and its share from then on); an independent consumer finds
/// every message at least once before the killed one comes back. Restarted on its
/// persistent session, it takes its session back and its share again.
#[tokio::test]
async fn a_fleet_splits_the_load_and_survives_a_killed_replica() {
    let db = Database::create("weir_fleet");
    // Mosquitto keeps at most max_queued_messages (1,000 by default) for a client that
    // is away, and drops the rest: the killed replica's share must fit.
    let port = free_port();
    let broker = Mosquitto::start_with(
        port,
        &format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"),
    )
    .await;
    let kafka = Kafka::start().await;
    kafka.create_topic("fleet-out").await;
    let root = temp_dir("fleet");
    let token_file = root.join("admin.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let url = format!("mqtt://{}", broker.addr);
    let db_url = db.url();
    let args = |i: usize| -> Vec<String> {
        [
            "--rule-store",
            &db_url,
            "--admin-token-file",
            token_file.to_str().unwrap(),
            "--broker",
            &url,
            "--broker-client-id",
            &format!("weir-fleet-{i}"),
            "--broker-share-group",
            "fleet",
            "--broker-qos",
            "1",
            "--broker-adopt-after",
            "2s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut replicas = Vec::new();
    for i in 0..3 {
        let dir = root.join(format!("replica-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let a = args(i);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let mut w = WeirProcess::start(&dir, &a).await;
        w.use_token(Some(TOKEN));
        replicas.push(w);
    }
    let rule = json!({
        "sql": "SELECT n FROM 'fleet/+/data'",
        "actions": [{"kafka": {"bootstrap_servers": kafka.bootstrap(), "topic": "fleet-out",
            "key": "${topic(2)}"}}]
    });
    assert_eq!(replicas[0].put_rule("fleet", rule).await.0, 201);
    // Every replica runs it (and has subscribed) once it has processed a probe.
    let device = Mqtt::connect(broker.addr, "fleet-device").await;
    let matched = r#"weir_rule_messages_matched_total{rule="fleet"}"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        device.publish("fleet/probe/data", r#"{"n": -1}"#).await;
        let mut all = true;
        for w in &replicas {
            all &= w.metric(matched).await > 0.0;
        }
        if all {
            break;
        }
        assert!(Instant::now() < deadline, "not every replica took a share");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before: Vec<f64> = {
        let mut v = Vec::new();
        for w in &replicas {
            v.push(w.metric(matched).await);
        }
        v
    };
    // 3,000 messages from 30 devices; replica 1 is killed at the 1,000th.
    const TOTAL: i64 = 3000;
    let mut split = Vec::new();
    for n in 0..TOTAL {
        if n == 1000 {
            // Each replica has taken part of the first thousand.
            tokio::time::sleep(Duration::from_millis(500)).await;
            for (i, w) in replicas.iter().enumerate() {
                split.push(w.metric(matched).await - before[i]);
            }
            replicas[1].kill();
        }
        device
            .publish(
                &format!("fleet/dev{}/data", n % 30),
                format!(r#"{{"n": {n}}}"#),
            )
            .await;
        if n % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        split.iter().all(|s| *s > 0.0),
        "the load is split: {split:?} of the first 1,000"
    );
    // The two left carry on.
    for i in [0, 2] {
        let w = &replicas[i];
        w.wait_metric(matched, before[i] + 1000.0).await;
    }
    let all_arrived = |total: i64| {
        move |got: &[KafkaRecord]| {
            let seen: std::collections::HashSet<i64> = got
                .iter()
                .filter_map(|r| r.value["n"].as_i64())
                .filter(|n| *n >= 0)
                .collect();
            seen.len() as i64 >= total
        }
    };
    let missing = |records: &[KafkaRecord], total: i64| {
        let seen: std::collections::HashSet<i64> = records
            .iter()
            .filter_map(|r| r.value["n"].as_i64())
            .filter(|n| *n >= 0)
            .collect();
        (0..total)
            .filter(|n| !seen.contains(n))
            .take(20)
            .collect::<Vec<i64>>()
    };
    // Replica 1 stays away: one of the others takes over its session and delivers what
    // the broker kept for it.
    let records = kafka
        .consume_until("fleet-out", all_arrived(TOTAL), 60)
        .await;
    let lost = missing(&records, TOTAL);
    assert!(
        lost.is_empty(),
        "not delivered while replica 1 was away: {lost:?} (and maybe more)"
    );
    let adoptions = replicas[0].metric("weir_fleet_adoptions_total").await
        + replicas[2].metric("weir_fleet_adoptions_total").await;
    assert_eq!(adoptions, 1.0, "one replica adopted the away session");
    let adopter = if replicas[0].metric("weir_fleet_adopted_sessions").await == 1.0 {
        0
    } else {
        2
    };
    assert_eq!(
        replicas[adopter]
            .metric("weir_fleet_adopted_sessions")
            .await,
        1.0
    );
    let members = db.query("SELECT client_id FROM weir_members ORDER BY client_id");
    assert_eq!(
        members.lines().collect::<Vec<_>>(),
        ["weir-fleet-0", "weir-fleet-1", "weir-fleet-2"]
    );
    // Replica 1 comes back on its persistent session: the adopter hands it back, and
    // replica 1 takes its share again.
    let (http, mqtt) = (replicas[1].http, replicas[1].mqtt);
    let a = args(1);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let mut back = WeirProcess::start_on(&root.join("replica-1"), http, mqtt, &a).await;
    back.use_token(Some(TOKEN));
    replicas[1] = back;
    replicas[adopter]
        .wait_metric_eq("weir_fleet_adopted_sessions", 0.0)
        .await;
    const MORE: i64 = 600;
    for n in TOTAL..TOTAL + MORE {
        device
            .publish(
                &format!("fleet/dev{}/data", n % 30),
                format!(r#"{{"n": {n}}}"#),
            )
            .await;
    }
    let records = kafka
        .consume_until("fleet-out", all_arrived(TOTAL + MORE), 60)
        .await;
    let lost = missing(&records, TOTAL + MORE);
    assert!(
        lost.is_empty(),
        "not delivered after replica 1 came back: {lost:?} (and maybe more)"
    );
    assert!(
        replicas[1].metric(matched).await > 0.0,
        "replica 1 took its share again"
    );
    for w in &replicas {
        assert_eq!(w.metric("weir_fleet_adopted_sessions").await, 0.0);
    }
    const TOTAL_ALL: i64 = TOTAL + MORE;
    let duplicates = records.len() as i64 - TOTAL_ALL;
    let mut shares = Vec::new();
    for w in &replicas {
        shares.push(w.metric(matched).await);
    }
    eprintln!(
        "{TOTAL_ALL} messages delivered, {} records in all (probes and duplicates included, {duplicates} beyond one each); the first 1,000 split {split:?}; adopted by replica {adopter}; matched per replica at the end: {shares:?}",
        records.len()
    );
}

/// A replica away for longer than --broker-retire-after does not keep a share of the
/// stream: the replica that adopted its session drains it, ends it at the broker and
/// takes it off the roll, and from then on the others get every message.
#[tokio::test]
async fn the_session_of_a_replica_away_too_long_is_retired() {
    let db = Database::create("weir_retire");
    let port = free_port();
    let broker = Mosquitto::start_with(
        port,
        &format!("listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\n"),
    )
    .await;
    let root = temp_dir("retire");
    let token_file = root.join("admin.token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let (url, db_url) = (format!("mqtt://{}", broker.addr), db.url());
    let mut replicas = Vec::new();
    for i in 0..2 {
        let dir = root.join(format!("replica-{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let id = format!("weir-retire-{i}");
        let mut w = WeirProcess::start(
            &dir,
            &[
                "--rule-store",
                &db_url,
                "--admin-token-file",
                token_file.to_str().unwrap(),
                "--broker",
                &url,
                "--broker-client-id",
                &id,
                "--broker-share-group",
                "retire",
                "--broker-adopt-after",
                "1s",
                "--broker-retire-after",
                "4s",
            ],
        )
        .await;
        w.use_token(Some(TOKEN));
        replicas.push(w);
    }
    let rule = json!({"sql": "SELECT n FROM 'retire/+/data'", "actions": [{"object_store": {}}]});
    assert_eq!(replicas[0].put_rule("retire", rule).await.0, 201);
    let device = Mqtt::connect(broker.addr, "retire-device").await;
    let matched = r#"weir_rule_messages_matched_total{rule="retire"}"#;
    // Both take a share, and both are on the roll.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        device.publish("retire/probe/data", r#"{"n": -1}"#).await;
        if replicas[0].metric(matched).await > 0.0 && replicas[1].metric(matched).await > 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "not every replica took a share");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let roll = || db.query("SELECT client_id FROM weir_members ORDER BY client_id");
    assert_eq!(roll().lines().count(), 2, "{}", roll());
    replicas[1].kill();
    // Adopted after a second or two, retired after four.
    let deadline = Instant::now() + Duration::from_secs(30);
    while replicas[0]
        .metric("weir_fleet_sessions_retired_total")
        .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the away replica's session was not retired\n{}",
            replicas[0].metrics().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(replicas[0].metric("weir_fleet_adoptions_total").await, 1.0);
    assert_eq!(replicas[0].metric("weir_fleet_adopted_sessions").await, 0.0);
    assert_eq!(roll().trim(), "weir-retire-0");
    // The broker has no session left in the group for it: replica 0 gets every message.
    let before = replicas[0].metric(matched).await;
    for n in 0..200 {
        device
            .publish(
                &format!("retire/dev{}/data", n % 10),
                format!(r#"{{"n": {n}}}"#),
            )
            .await;
    }
    replicas[0].wait_metric(matched, before + 200.0).await;
}

/// The shared store over TLS, as libpq URLs ask for it: `verify-full` with the CA that
/// signed the server's certificate works, and every connection weir makes is encrypted;
/// `verify-full` without that CA stops weir at start, saying why; `require` encrypts
/// without checking the certificate.
#[tokio::test]
async fn the_shared_store_speaks_tls_as_libpq_urls_ask() {
    let pg = TlsPostgres::start();
    let ca = pg.certs.join("ca.pem");
    let root = temp_dir("pgtls");
    let verified = pg.url(&format!("sslmode=verify-full&sslrootcert={}", ca.display()));
    let mut w = WeirProcess::start(&root, &["--rule-store", &verified]).await;
    let rule =
        json!({"sql": "SELECT * FROM 'tls/+'", "actions": [{"republish": {"topic": "out"}}]});
    assert_eq!(w.put_rule("over-tls", rule).await.0, 201);
    assert_eq!(pg.query("SELECT name FROM weir_objects").trim(), "over-tls");
    // weir's connections (the store's and the listener's): all encrypted.
    let weir_connections = "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()";
    let ssl: Vec<String> = pg
        .query(weir_connections)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(ssl.len() >= 2, "weir's connections: {ssl:?}");
    assert!(ssl.iter().all(|s| s == "t"), "weir's connections: {ssl:?}");
    w.terminate();
    // Without the CA, the server's certificate is not trusted: weir does not start.
    let unverified = pg.url("sslmode=verify-full");
    let log_path = root.join("refused.log");
    let log_file = std::fs::File::create(&log_path).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--data-dir", root.to_str().unwrap()])
        .args([
            "--http-listen",
            "127.0.0.1:0",
            "--mqtt-listen",
            "127.0.0.1:0",
        ])
        .args(["--rule-store", &unverified])
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("weir did not stop at start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("cannot connect to the rule store") && log.contains("UnknownIssuer"),
        "{log}"
    );
    // require: encrypted, the certificate not checked (libpq's meaning).
    let mut w = WeirProcess::start(&root, &["--rule-store", &pg.url("sslmode=require")]).await;
    let (status, rules) = w.request(Method::GET, "/v1/rules").await;
    assert_eq!(status, 200);
    assert!(rules.to_string().contains("over-tls"), "{rules}");
    w.terminate();
}
