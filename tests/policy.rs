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

/// Named connections: an admin defines one with its endpoint and credentials; rules name
/// it and add only their own parameters; its secrets are never shown; it may reach what
/// an inline destination may not; changing it restarts the rules that use it; one in use
/// cannot be deleted.
#[tokio::test]
async fn rules_reach_destinations_through_named_connections() {
    let dir = temp_dir("connections");
    let weir = Weir::start(&dir, &[]).await;
    let admin = weir.admin_token().unwrap();
    let call = |token: &str, method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = reqwest::Client::new()
            .request(method, weir.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (_, editor) = call(
        &admin,
        reqwest::Method::POST,
        "/v1/tokens",
        Some(json!({"name": "ed", "role": "editor"})),
    )
    .await;
    let editor = editor["token"].as_str().unwrap().to_owned();

    let hook = Receiver::start(vec![]).await;
    let hooks = json!({"webhook": {"url": hook.url("/in"), "headers": {"Authorization": "Bearer hook-secret-9"}}});
    let (status, _) = call(
        &editor,
        reqwest::Method::PUT,
        "/v1/connections/hooks",
        Some(hooks.clone()),
    )
    .await;
    assert_eq!(status, 403, "an editor may not define connections");
    let (status, body) = call(
        &admin,
        reqwest::Method::PUT,
        "/v1/connections/hooks",
        Some(hooks),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["webhook"]["headers"]["Authorization"], "<redacted>");
    assert_eq!(body["source"], "api");
    let (status, list) = call(&editor, reqwest::Method::GET, "/v1/connections", None).await;
    assert_eq!(status, 200);
    assert!(!list.to_string().contains("hook-secret-9"), "{list}");
    assert_eq!(list["connections"][0]["name"], "hooks");

    // A rule names the connection and adds a path; the request carries the secret.
    let rule = json!({"sql": "SELECT a FROM 'c/+'", "actions": [
        {"webhook": {"connection": "hooks", "path": "dev/${topic(2)}"}}]});
    let (status, body) = call(&editor, reqwest::Method::PUT, "/v1/rules/fwd", Some(rule)).await;
    assert_eq!(status, 201, "{body}");
    let (_, shown) = call(&editor, reqwest::Method::GET, "/v1/rules/fwd", None).await;
    assert_eq!(shown["actions"][0]["webhook"]["connection"], "hooks");
    assert!(
        shown["actions"][0]["webhook"].get("url").is_none(),
        "{shown}"
    );
    let device = Mqtt::connect(weir.mqtt, "d").await;
    device.publish("c/d7", r#"{"a": 1}"#).await;
    assert_eq!(hook.wait_for(1).await, [json!({"a": 1})]);
    assert_eq!(
        hook.requests.lock().unwrap()[0],
        (
            "/in/dev/d7".to_owned(),
            Some("Bearer hook-secret-9".to_owned())
        )
    );

    // Sent back redacted, the secret is kept; a new URL restarts the rule with it.
    let other = Receiver::start(vec![]).await;
    let (_, current) = call(&admin, reqwest::Method::GET, "/v1/connections/hooks", None).await;
    let mut changed = json!({"webhook": current["webhook"].clone()});
    changed["webhook"]["url"] = json!(other.url("/v2"));
    let (status, body) = call(
        &admin,
        reqwest::Method::PUT,
        "/v1/connections/hooks",
        Some(changed),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    device.publish("c/d8", r#"{"a": 2}"#).await;
    assert_eq!(other.wait_for(1).await, [json!({"a": 2})]);
    assert_eq!(
        other.requests.lock().unwrap()[0],
        (
            "/v2/dev/d8".to_owned(),
            Some("Bearer hook-secret-9".to_owned())
        )
    );

    // What a rule may not reach inline, the operator's connection may.
    let meta = json!({"webhook": {"url": "http://169.254.169.254/latest"}});
    assert_eq!(
        call(
            &admin,
            reqwest::Method::PUT,
            "/v1/connections/meta",
            Some(meta)
        )
        .await
        .0,
        201
    );
    let uses_meta = json!({"sql": "SELECT a FROM 'm'", "enabled": false,
        "actions": [{"webhook": {"connection": "meta"}}]});
    assert_eq!(
        call(
            &editor,
            reqwest::Method::PUT,
            "/v1/rules/m",
            Some(uses_meta)
        )
        .await
        .0,
        201
    );

    // Refusals.
    for (rule, code, needle) in [
        (
            json!({"sql": "SELECT a FROM 'x'", "actions": [{"webhook": {"connection": "nope"}}]}),
            "invalid_action",
            "no connection named 'nope'",
        ),
        (
            json!({"sql": "SELECT a FROM 'x'", "actions": [{"kafka": {"connection": "hooks", "topic": "t"}}]}),
            "invalid_action",
            "the connection 'hooks' is for webhook actions, not kafka",
        ),
        (
            json!({"sql": "SELECT a FROM 'x'", "actions": [{"webhook": {"connection": "hooks", "url": "http://x/"}}]}),
            "invalid_action",
            "url comes from the connection 'hooks'",
        ),
    ] {
        let (status, body) = call(&editor, reqwest::Method::PUT, "/v1/rules/bad", Some(rule)).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some(code)),
            "{body}"
        );
        assert!(
            body["error"]["message"].as_str().unwrap().contains(needle),
            "{body}"
        );
    }
    let (status, body) = call(
        &admin,
        reqwest::Method::DELETE,
        "/v1/connections/hooks",
        None,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "connection_in_use");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("fwd"),
        "{body}"
    );
    call(&editor, reqwest::Method::DELETE, "/v1/rules/fwd", None).await;
    assert_eq!(
        call(
            &admin,
            reqwest::Method::DELETE,
            "/v1/connections/hooks",
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        call(&admin, reqwest::Method::GET, "/v1/connections/hooks", None)
            .await
            .0,
        404
    );
    // The store keeps the secrets, privately.
    stored_text(&dir);
}

/// Connections of the config file are there at start, marked as such.
#[tokio::test]
async fn connections_come_from_the_config_file() {
    let dir = temp_dir("connections-file");
    let config = dir.join("weir.toml");
    std::fs::write(
        &config,
        "[connections.lake.object_store]\nurl = \"file:///srv/lake/raw\"\n\n\
         [connections.events.kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n\
         properties = { \"sasl.password\" = \"kafka-secret-4\", \"ssl.ca.location\" = \"/etc/ca.pem\" }\n",
    )
    .unwrap();
    let weir = Weir::start(&dir, &["--config", config.to_str().unwrap()]).await;
    let (status, list) = weir.request(reqwest::Method::GET, "/v1/connections").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = list["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["events", "lake"]);
    assert_eq!(list["connections"][0]["source"], "config");
    assert!(!list.to_string().contains("kafka-secret-4"), "{list}");
    // A rule writes below the connection's prefix, outside what inline URLs may reach.
    let rule = json!({"sql": "SELECT a FROM 'x'", "enabled": false, "actions": [
        {"object_store": {"connection": "lake", "path": "site=${topic(1)}/", "format": "jsonl"}},
        {"kafka": {"connection": "events", "topic": "t"}}]});
    let (status, body) = weir.put_rule("r", rule).await;
    assert_eq!(status, 201, "{body}");
}

/// Trying a rule that names a connection shows the action's own templated parameters,
/// never the connection's headers.
#[tokio::test]
async fn a_rule_test_does_not_show_a_connections_secrets() {
    let dir = temp_dir("connections-test-run");
    let weir = Weir::start(&dir, &[]).await;
    let hooks = json!({"webhook": {"url": "https://hooks.example.com/in",
        "headers": {"Authorization": "Bearer hook-secret-7"}}});
    let (status, _) = weir
        .send_json(reqwest::Method::PUT, "/v1/connections/hooks", &hooks)
        .await;
    assert_eq!(status, 201);
    let (status, body) = weir
        .test_rule(&json!({
            "sql": "SELECT a FROM 'c/+'",
            "actions": [{"webhook": {"connection": "hooks", "path": "${topic(2)}",
                "headers": {"x-device": "${clientid()}"}}}],
            "messages": [{"topic": "c/d1", "payload": {"a": 1}, "clientid": "dev-1"}]
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.to_string().contains("hook-secret-7"), "{body}");
    let params = &body["results"][0]["actions"][0]["params"];
    assert_eq!(params["url"], "https://hooks.example.com/in/d1", "{body}");
}
