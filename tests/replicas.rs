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
