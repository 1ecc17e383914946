//! What a rule's inline destinations may reach: the operator's policy refuses, with a 400
//! naming the option and the setting that would allow it, files outside the output
//! directory, link-local addresses, weir's own listeners, options that read local files,
//! load code or turn off certificate checks, and cloud destinations without credentials of
//! their own; a templated webhook URL is checked for each output.

mod common;

use common::*;
use serde_json::{Value, json};

fn rule(action: Value) -> Value {
    json!({"sql": "SELECT a FROM 'in'", "actions": [action], "enabled": false})
}

#[tokio::test]
async fn inline_destinations_are_held_to_the_policy() {
    let dir = temp_dir("policy");
    let weir = Weir::start(&dir, &[]).await;
    let own_api = format!("http://{}/v1/tokens", weir.http);
    let s3 = |extra: Value| {
        let mut o = json!({"access_key_id": "a", "secret_access_key": "s",
            "endpoint": "http://127.0.0.1:9000", "allow_http": "true"});
        o.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"object_store": {"url": "s3://lake/raw", "options": o}})
    };
    let cases = [
        (
            json!({"object_store": {"url": "file:///etc/cron.d"}}),
            "file:// destination '/etc/cron.d' is outside the directories rules may write to",
            "allow_file_dirs",
        ),
        (
            json!({"object_store": {"url": format!("file://{}/out/../../x", dir.display())}}),
            "must not contain '.' or '..'",
            "",
        ),
        (
            json!({"webhook": {"url": "http://169.254.169.254/latest/meta-data/iam/"}}),
            "address 169.254.169.254 is link-local",
            "allow_link_local (--allow-link-local)",
        ),
        (
            json!({"webhook": {"url": own_api}}),
            "is weir's own listener",
            "allow_weir_listeners (--allow-weir-listeners)",
        ),
        (
            json!({"kafka": {"bootstrap_servers": "127.0.0.1:9092", "topic": "t",
                "properties": {"ssl.ca.location": "/etc/shadow"}}}),
            "property 'ssl.ca.location' is not allowed in a rule: it reads a local file",
            "allow_kafka_properties (--allow-kafka-properties)",
        ),
        (
            json!({"kafka": {"bootstrap_servers": "127.0.0.1:9092", "topic": "t",
                "properties": {"plugin.library.paths": "/tmp/x.so"}}}),
            "it loads code",
            "allow_kafka_properties",
        ),
        (
            s3(json!({"web_identity_token_file": "/var/run/secrets/token"})),
            "option 'web_identity_token_file' is not allowed in a rule: it reads a local file",
            "allow_store_options (--allow-store-options)",
        ),
        (
            s3(json!({"allow_invalid_certificates": "true"})),
            "it turns off certificate checks",
            "allow_store_options",
        ),
        (
            json!({"object_store": {"url": "s3://lake/raw", "options": {"region": "eu-west-1"}}}),
            "must carry its own credentials",
            "allow_ambient_credentials (--allow-ambient-credentials)",
        ),
    ];
    for (action, needle, setting) in &cases {
        let (status, body) = weir.put_rule("r", rule(action.clone())).await;
        assert_eq!(status, 400, "{action}: {body}");
        let e = &body["error"];
        assert_eq!(e["code"], "destination_not_allowed", "{action}: {body}");
        assert_eq!(e["field"], "actions[0]", "{body}");
        let message = e["message"].as_str().unwrap();
        assert!(message.contains(needle), "{action}: {message}");
        assert!(message.contains(setting), "{action}: {message}");
    }
    // The error action is held to the same policy.
    let mut r = rule(json!({"republish": {"topic": "out"}}));
    r["error_action"] = json!({"webhook": {"url": "http://169.254.169.254/"}});
    let (status, body) = weir.put_rule("r", r).await;
    assert_eq!(
        (status.as_u16(), body["error"]["field"].as_str()),
        (400, Some("error_action")),
        "{body}"
    );
    // Below the output directory, and with credentials of its own, a rule may write.
    let inside = format!("file://{}/out/lake/${{topic(1)}}/", dir.display());
    for ok in [
        json!({"object_store": {"url": inside}}),
        s3(json!({"region": "eu-west-1"})),
    ] {
        let (status, body) = weir.put_rule("ok", rule(ok.clone())).await;
        assert_eq!(status, 201, "{ok}: {body}");
        weir.request(reqwest::Method::DELETE, "/v1/rules/ok").await;
    }
}

#[tokio::test]
async fn the_operator_can_widen_the_policy() {
    let dir = temp_dir("policy-open");
    let export = temp_dir("policy-export");
    let export_dir = export.display().to_string();
    let weir = Weir::start(
        &dir,
        &[
            "--allow-file-dirs",
            &export_dir,
            "--allow-link-local",
            "true",
            "--allow-kafka-properties",
            "ssl.ca.location,debug",
            "--allow-store-options",
            "web_identity_token_file",
            "--allow-ambient-credentials",
            "true",
        ],
    )
    .await;
    for action in [
        json!({"object_store": {"url": format!("file://{export_dir}/x")}}),
        json!({"webhook": {"url": "http://169.254.169.254/"}}),
        json!({"kafka": {"bootstrap_servers": "127.0.0.1:9092", "topic": "t",
            "properties": {"ssl.ca.location": "/etc/ssl/ca.pem", "debug": "broker"}}}),
        json!({"object_store": {"url": "s3://lake/raw",
            "options": {"web_identity_token_file": "/var/run/t"}}}),
    ] {
        let (status, body) = weir.put_rule("r", rule(action.clone())).await;
        assert_eq!(status, 201, "{action}: {body}");
        weir.request(reqwest::Method::DELETE, "/v1/rules/r").await;
    }
    // Not widened: weir's own listeners.
    let (status, body) = weir
        .put_rule(
            "r",
            rule(json!({"webhook": {"url": format!("http://{}/v1/rules", weir.http)}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

/// A templated URL is checked when each output's URL is rendered: an output bound for
/// weir's own API is dead-lettered with reason `not_allowed`; one bound for a receiver is
/// delivered.
#[tokio::test]
async fn rendered_webhook_urls_are_checked_for_each_output() {
    let dir = temp_dir("policy-render");
    let weir = Weir::start(&dir, &[]).await;
    let hook = Receiver::start(vec![]).await;
    let errors = Receiver::start(vec![]).await;
    let rule = json!({
        "sql": "SELECT a FROM 'hooks/#'",
        "actions": [{"webhook": {"url": "http://${topic(2)}/hook"}}],
        "error_action": {"webhook": {"url": errors.url("/e")}}
    });
    let (status, body) = weir.put_rule("fwd", rule).await;
    assert_eq!(status, 201, "{body}");
    let device = Mqtt::connect(weir.mqtt, "dev").await;
    let own = format!("hooks/{}", weir.http);
    device.publish(&own, r#"{"a": 1}"#).await;
    let receiver = hook.url("/");
    let receiver_host = receiver.trim_start_matches("http://").trim_end_matches('/');
    device
        .publish(&format!("hooks/{receiver_host}"), r#"{"a": 2}"#)
        .await;
    let got = hook.wait_for(1).await;
    assert_eq!(got[0]["a"], 2);
    let errs = errors.wait_for(1).await;
    assert_eq!(errs[0]["reason"], "not_allowed", "{errs:?}");
    assert_eq!(errs[0]["output"], json!({"a": 1}));
    let why = errs[0]["error"].as_str().unwrap();
    assert!(why.contains("is weir's own listener"), "{why}");
    weir.wait_metric(
        r#"weir_action_dead_lettered_total{action="0-webhook",reason="not_allowed",rule="fwd"}"#,
        1.0,
    )
    .await;
}
