//! Rules as code: a rule's own tests run whenever it is stored, and `weir rules` manages
//! a running weir's rules from a directory, over the API.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use reqwest::Method;
use serde_json::json;

const HOT_SQL: &str = "SELECT temp, topic(2) AS site FROM 'plant/+/metrics' WHERE temp > 85";

#[tokio::test]
async fn a_rule_whose_tests_fail_is_refused_with_the_difference() {
    let dir = temp_dir("rule-tests");
    let weir = Weir::start(&dir, &[]).await;
    let rule = |expected_site: &str| {
        json!({
            "sql": HOT_SQL,
            "actions": [{"republish": {"topic": "alerts"}}],
            "tests": [
                {"name": "cool is dropped", "topic": "plant/a/metrics", "payload": {"temp": 20}, "expect": []},
                {"name": "hot", "topic": "plant/a/metrics", "payload": {"temp": 90.0},
                 "expect": [{"temp": 90, "site": expected_site}]},
                {"topic": "plant/a/metrics", "payload_raw": "not json", "expect_error": "invalid_json"}
            ]
        })
    };
    let (status, e) = weir.put_rule("hot", rule("b")).await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["code"], "rule_tests_failed");
    assert_eq!(e["error"]["message"], "1 of the rule's 3 tests failed");
    let failures = e["error"]["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{e}");
    assert_eq!(failures[0]["test"], 1);
    assert_eq!(failures[0]["name"], "hot");
    assert_eq!(failures[0]["got"], json!([{"temp": 90, "site": "a"}]));
    let diff = failures[0]["diff"].as_str().unwrap();
    assert!(diff.contains("-     \"site\": \"b\""), "{diff}");
    assert!(diff.contains("+     \"site\": \"a\""), "{diff}");
    let (status, _) = weir.request(Method::GET, "/v1/rules/hot").await;
    assert_eq!(status, 404, "a refused rule is not stored");

    // 90 and 90.0 are the same number; the rule is stored with its tests.
    let (status, stored) = weir.put_rule("hot", rule("a")).await;
    assert_eq!(status, 201, "{stored}");
    assert_eq!(stored["tests"].as_array().unwrap().len(), 3);

    // A test whose topic the rule does not read fails as such.
    let mut wrong = rule("a");
    wrong["tests"][0]["topic"] = json!("elsewhere");
    let (status, e) = weir.put_rule("hot", wrong).await;
    assert_eq!(status, 400);
    assert!(
        e["error"]["failures"][0]["got"]["topic_mismatch"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{e}"
    );
    // The stored version is untouched.
    let (_, kept) = weir.request(Method::GET, "/v1/rules/hot").await;
    assert_eq!(kept["tests"][0]["topic"], "plant/a/metrics");

    // At most 100 tests a rule.
    let mut many = rule("a");
    many["tests"] = json!(vec![
        json!({"topic": "plant/a/metrics", "payload": {"temp": 1}});
        101
    ]);
    let (status, e) = weir.put_rule("many", many).await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 100 tests"),
        "{e}"
    );

    // POST /v1/test runs tests without storing anything.
    let mut body = rule("b");
    body.as_object_mut().unwrap().remove("actions");
    let (status, v) = weir.test_rule(&body).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["tests"]["total"], 3);
    assert_eq!(v["tests"]["failed"][0]["test"], 1);
}

/// A PUT or DELETE of a rule with a precondition header: status, ETag and body.
async fn conditional(
    weir: &Weir,
    method: Method,
    name: &str,
    header: (&str, &str),
    body: Option<serde_json::Value>,
) -> (u16, Option<String>, serde_json::Value) {
    let token = weir.admin_token().unwrap();
    let mut req = reqwest::Client::new()
        .request(method, weir.url(&format!("/v1/rules/{name}")))
        .bearer_auth(token)
        .header(header.0, header.1);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let etag = r
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        r.status().as_u16(),
        etag,
        r.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// Two editors change one rule: the one that read an older version gets a 412 instead
/// of overwriting the other's change unseen.
#[tokio::test]
async fn a_change_over_a_stale_version_is_refused() {
    let dir = temp_dir("rule-if-match");
    let weir = Weir::start(&dir, &[]).await;
    let put = |header: (&'static str, &'static str), n: u32| {
        let body = json!({"sql": format!("SELECT {n} AS n FROM 'x'"), "actions": []});
        conditional(&weir, Method::PUT, "r", header, Some(body))
    };
    let (status, etag, created) = put(("If-None-Match", "*"), 1).await;
    assert_eq!((status, etag.as_deref()), (201, Some("\"1\"")), "{created}");
    assert_eq!(created["version"], 1);
    let (status, _, e) = put(("If-None-Match", "*"), 1).await;
    assert_eq!(status, 412, "create-only over an existing rule: {e}");
    assert_eq!(e["error"]["code"], "precondition_failed");

    // Both read version 1; the first change wins, the second is refused.
    let (status, etag, _) = put(("If-Match", "\"1\""), 2).await;
    assert_eq!((status, etag.as_deref()), (200, Some("\"2\"")));
    let (status, _, e) = put(("If-Match", "\"1\""), 3).await;
    assert_eq!(status, 412, "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("version 2"), "{e}");
    let (_, r) = weir.request(Method::GET, "/v1/rules/r").await;
    assert_eq!(
        r["sql"], "SELECT 2 AS n FROM 'x'",
        "the second change was not made"
    );
    // Enabling is a change too.
    let (status, _) = weir.request(Method::POST, "/v1/rules/r/disable").await;
    assert_eq!(status, 200);
    let (status, _, _) = conditional(&weir, Method::DELETE, "r", ("If-Match", "\"2\""), None).await;
    assert_eq!(status, 412);
    let (status, _, _) =
        conditional(&weir, Method::DELETE, "r", ("If-Match", "W/\"3\""), None).await;
    assert_eq!(status, 204);
    let (status, _, _) = put(("If-Match", "*"), 4).await;
    assert_eq!(status, 412, "If-Match: * needs the rule to exist");
}

/// Runs `weir rules ARGS` against `weir`, with its admin token: exit code and output.
fn cli(weir: &Weir, data_dir: &Path, args: &[&str]) -> (i32, String) {
    let token_file = data_dir.join("admin.token");
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("rules")
        .args(["--url", &weir.url("")])
        .arg("--token-file")
        .arg(&token_file)
        .args(args)
        .output()
        .expect("weir runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn weir_rules_applies_a_directory_and_round_trips_through_export() {
    let dir = temp_dir("rules-cli");
    let weir = Weir::start(&dir, &[]).await;
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("hot.sql"),
        format!(
            "-- action: {{\"republish\": {{\"topic\": \"alerts\"}}}}\n-- test: {{\"topic\": \"plant/a/metrics\", \"payload\": {{\"temp\": 90}}, \"expect\": [{{\"temp\": 90, \"site\": \"a\"}}]}}\n{HOT_SQL}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        rules.join("all.json"),
        json!({"sql": "SELECT * FROM 'plant/#'", "actions": [{"republish": {"topic": "copy"}}]})
            .to_string(),
    )
    .unwrap();
    let path = rules.to_str().unwrap();

    // A dry run prints the plan, checks each rule on weir and changes nothing.
    let (code, out) = cli(&weir, &dir, &["apply", path, "--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("+ create    all"), "{out}");
    assert!(out.contains("+ create    hot"), "{out}");
    assert!(
        out.contains("plan: 2 to create, 0 to update, 0 to delete, 0 unchanged"),
        "{out}"
    );
    assert!(out.contains("hot: would be accepted"), "{out}");
    let (_, list) = weir.request(Method::GET, "/v1/rules").await;
    assert_eq!(list["rules"], json!([]), "a dry run stores nothing");

    let (code, out) = cli(&weir, &dir, &["apply", path]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("hot: created") && out.contains("all: created"),
        "{out}"
    );
    let (_, hot) = weir.request(Method::GET, "/v1/rules/hot").await;
    assert_eq!(hot["topic_filter"], "plant/+/metrics");

    // Again: nothing to do.
    let (code, out) = cli(&weir, &dir, &["apply", path]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("plan: 0 to create, 0 to update, 0 to delete, 2 unchanged"),
        "{out}"
    );

    // A rule made over the API meanwhile is kept, unless --prune.
    let (status, _) = weir
        .put_rule("stray", json!({"sql": "SELECT * FROM 'x'", "actions": []}))
        .await;
    assert_eq!(status, 201);
    let (_, out) = cli(&weir, &dir, &["apply", path]);
    assert!(out.contains("  kept      stray"), "{out}");

    // A changed rule whose test now fails is refused with the difference; the other
    // changes go ahead, and the exit code says something failed.
    std::fs::write(
        rules.join("hot.sql"),
        format!(
            "-- action: {{\"republish\": {{\"topic\": \"alerts\"}}}}\n-- test: {{\"topic\": \"plant/a/metrics\", \"payload\": {{\"temp\": 90}}, \"expect\": [{{\"temp\": 90, \"site\": \"z\"}}]}}\n{HOT_SQL} AND temp < 1000\n"
        ),
    )
    .unwrap();
    let (code, out) = cli(&weir, &dir, &["apply", path, "--prune"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("~ update    hot"), "{out}");
    assert!(out.contains("- delete    stray"), "{out}");
    assert!(
        out.contains("hot: refused: 1 of the rule's 1 tests failed"),
        "{out}"
    );
    assert!(out.contains("-     \"site\": \"z\""), "{out}");
    assert!(out.contains("stray: deleted"), "{out}");
    let (_, hot) = weir.request(Method::GET, "/v1/rules/hot").await;
    assert!(
        !hot["sql"].as_str().unwrap().contains("1000"),
        "the refused version is not stored"
    );
    let (status, _) = weir.request(Method::GET, "/v1/rules/stray").await;
    assert_eq!(status, 404);

    // `test` runs the tests on weir and fails the same way.
    let (code, out) = cli(&weir, &dir, &["test", path]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("hot: FAILED, 1 of 1 tests"), "{out}");
    assert!(out.contains("all: no tests"), "{out}");

    // Export, then apply the export: nothing changes.
    let exported = dir.join("exported");
    let (code, out) = cli(&weir, &dir, &["export", exported.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(exported.join("hot.json").exists() && exported.join("all.json").exists());
    let (code, out) = cli(&weir, &dir, &["apply", exported.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("plan: 0 to create, 0 to update, 0 to delete, 2 unchanged"),
        "{out}"
    );

    let (code, out) = cli(&weir, &dir, &["list"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("hot") && out.contains("plant/+/metrics"),
        "{out}"
    );
    let (code, out) = cli(&weir, &dir, &["delete", "all", "nope"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("all: deleted"), "{out}");
    assert!(out.contains("no rule named 'nope'"), "{out}");

    // Without a token: refused, exit code 2.
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["rules", "--url", &weir.url(""), "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
}
