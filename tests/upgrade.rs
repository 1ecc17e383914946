//! A data directory written by an earlier weir starts and serves what it held: the weir
//! of commit 1e150a0 kept each kind in a file of its own (`tests/fixtures/data-dir-1e150a0`,
//! its README says how it was made); today's keeps every kind in one store, and reads
//! those files at its first start.

mod common;

use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::json;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/data-dir-1e150a0"
);
const EDITOR: &str = "weir_pNDgRmL06jQiD8x5DOzSw2VBhYE5XU0MCtND2exEUfk";
const VIEWER: &str = "weir_W26MHQPb6QjwMlst6tf9zYh595GMHHqQcc9xAA8DJCA";

/// A copy of the fixture, files readable by weir's user alone as weir wrote them.
fn copy_fixture() -> TestDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("upgrade");
    for entry in std::fs::read_dir(FIXTURE).unwrap().flatten() {
        let name = entry.file_name();
        if name == "README.md" {
            continue;
        }
        let to = dir.join(&name);
        std::fs::copy(entry.path(), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    dir
}

#[tokio::test]
async fn a_data_directory_of_weir_1e150a0_starts_and_serves_its_rules_connections_and_tokens() {
    let dir = copy_fixture();
    let admin_file = dir.join("admin.token");
    let admin = std::fs::read_to_string(&admin_file)
        .unwrap()
        .trim()
        .to_owned();
    let flags = ["--admin-token-file", admin_file.to_str().unwrap()];
    let mut weir = Weir::start(&dir, &flags).await;
    for round in ["first start", "restart"] {
        weir.use_token(Some(&admin));
        let (status, list) = weir.request(Method::GET, "/v1/rules").await;
        assert_eq!(status, 200, "{round}: {list}");
        let rules: Vec<(String, u64, bool)> = list["rules"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["name"] != "new_one")
            .map(|r| {
                let name = r["name"].as_str().unwrap().to_owned();
                (
                    name,
                    r["version"].as_u64().unwrap(),
                    r["enabled"].as_bool().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            rules,
            [
                ("hot".to_owned(), 3, true),
                ("quiet".to_owned(), 1, false),
                ("via_connection".to_owned(), 1, true)
            ],
            "{round}"
        );
        let (status, hooks) = weir.request(Method::GET, "/v1/connections/hooks").await;
        assert_eq!(status, 200, "{round}: {hooks}");
        assert_eq!(hooks["webhook"]["url"], "https://hooks.example.com/in");
        assert!(
            !hooks.to_string().contains("connection-secret-1"),
            "{hooks}"
        );
        let stored = stored_text(&dir);
        for secret in ["connection-secret-1", "action-secret-2"] {
            assert!(stored.contains(secret), "{round}: {secret} kept");
        }
        // The tokens: a viewer reads and may not write; an editor writes.
        weir.use_token(Some(VIEWER));
        assert_eq!(weir.request(Method::GET, "/v1/rules/hot").await.0, 200);
        let rule = json!({"sql": "SELECT a FROM 'x'", "actions": [{"republish": {"topic": "y"}}]});
        assert_eq!(
            weir.put_rule("new_one", rule.clone()).await.0,
            403,
            "{round}"
        );
        weir.use_token(Some(EDITOR));
        let (status, body) = weir.put_rule("new_one", rule).await;
        assert!(status == 201 || status == 200, "{round}: {status} {body}");
        // The rule `hot` runs.
        let mut sub = Mqtt::connect(weir.mqtt, &format!("sub-{}", round.len())).await;
        sub.subscribe("alerts/#").await;
        let device = Mqtt::connect(weir.mqtt, "device-7").await;
        device
            .publish("plant/p1/metrics", json!({"temp": 90}).to_string())
            .await;
        let (topic, out) = sub.next(10).await.expect("the rule hot republishes");
        assert_eq!(
            (topic.as_str(), &out),
            ("alerts/p1", &json!({"temp": 90, "device": "device-7"}))
        );
        if round == "first start" {
            let mut files: Vec<String> = std::fs::read_dir(&*dir)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".imported"))
                .collect();
            files.sort();
            assert_eq!(
                files,
                [
                    "connections.json.imported",
                    "rules.journal.imported",
                    "rules.json.imported",
                    "tokens.json.imported"
                ]
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
            weir = weir.restart().await;
        }
    }
}
