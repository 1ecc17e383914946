//! Who may use the HTTP API: the admin token weir makes (or is given), tokens with roles,
//! 401 without a token it knows, 403 for a role that may not, and the routes that stay
//! open.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// `method path` with `token` (or none); the status and the JSON body.
async fn call(
    weir: &Api,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, weir.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn rule() -> Value {
    json!({"sql": "SELECT a FROM 'in'", "actions": [{"republish": {"topic": "out"}}]})
}

#[tokio::test]
async fn every_v1_request_needs_a_token_whose_role_may_make_it() {
    let dir = temp_dir("auth");
    let mut weir = Weir::start(&dir, &[]).await;
    // The admin token was made at the first start, readable by weir's user alone.
    let admin = weir
        .admin_token()
        .expect("admin.token in the data directory");
    assert!(admin.starts_with("weir_") && admin.len() > 40, "{admin}");
    let mode = std::fs::metadata(dir.join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let admin = Some(admin.as_str());

    // No token, a wrong one: 401, with the usual error body.
    for token in [None, Some("weir_not-a-token"), Some("")] {
        let (status, body) = call(&weir, token, Method::GET, "/v1/rules", None).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Authorization: Bearer"),
            "{body}"
        );
    }
    let r = reqwest::get(weir.url("/v1/rules")).await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    // Unknown /v1 routes say nothing without a token either.
    assert_eq!(
        call(&weir, None, Method::GET, "/v1/nope", None).await.0,
        401
    );
    // Health, readiness, metrics and the OpenAPI document stay open.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.yaml"] {
        assert_eq!(
            call(&weir, None, Method::GET, path, None).await.0,
            200,
            "{path}"
        );
    }

    // The admin makes tokens: each is shown once.
    let mut made = std::collections::HashMap::new();
    for (name, role) in [("ci", "editor"), ("dash", "viewer"), ("ops", "admin")] {
        let (status, body) = call(
            &weir,
            admin,
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": name, "role": role})),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(
            (body["name"].as_str(), body["role"].as_str()),
            (Some(name), Some(role))
        );
        made.insert(name, body["token"].as_str().unwrap().to_owned());
    }
    for (body, code, status) in [
        (json!({"name": "ci", "role": "viewer"}), "conflict", 409),
        (json!({"name": "x", "role": "root"}), "invalid_request", 400),
        (
            json!({"name": "admin", "role": "viewer"}),
            "invalid_name",
            400,
        ),
        (
            json!({"name": "a b", "role": "viewer"}),
            "invalid_name",
            400,
        ),
    ] {
        let (got, answer) =
            call(&weir, admin, Method::POST, "/v1/tokens", Some(body.clone())).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
    }
    let (editor, viewer) = (Some(made["ci"].as_str()), Some(made["dash"].as_str()));

    // Listed by name and role, never the tokens themselves.
    let (status, list) = call(&weir, admin, Method::GET, "/v1/tokens", None).await;
    assert_eq!(status, 200);
    let names: Vec<(&str, &str)> = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["role"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            ("admin", "admin"),
            ("ci", "editor"),
            ("dash", "viewer"),
            ("ops", "admin")
        ]
    );
    let stored = stored_text(&dir);
    for token in made.values() {
        assert!(!list.to_string().contains(token.as_str()));
        assert!(!stored.contains(token.as_str()), "tokens are stored hashed");
    }

    // A viewer reads; an editor changes and tests rules; neither handles tokens.
    assert_eq!(
        call(&weir, editor, Method::PUT, "/v1/rules/r", Some(rule()))
            .await
            .0,
        201
    );
    assert_eq!(
        call(&weir, viewer, Method::GET, "/v1/rules", None).await.0,
        200
    );
    assert_eq!(
        call(&weir, viewer, Method::GET, "/v1/rules/r", None)
            .await
            .0,
        200
    );
    let (status, body) = call(&weir, viewer, Method::PUT, "/v1/rules/r", Some(rule())).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("editor"),
        "{body}"
    );
    for (method, path) in [
        (Method::DELETE, "/v1/rules/r"),
        (Method::POST, "/v1/rules/r/disable"),
        (Method::POST, "/v1/test"),
    ] {
        assert_eq!(
            call(&weir, viewer, method, path, Some(json!({}))).await.0,
            403,
            "{path}"
        );
    }
    let test =
        json!({"sql": "SELECT a FROM 'in'", "messages": [{"topic": "in", "payload": {"a": 1}}]});
    assert_eq!(
        call(&weir, editor, Method::POST, "/v1/test", Some(test))
            .await
            .0,
        200
    );
    for token in [editor, viewer] {
        assert_eq!(
            call(&weir, token, Method::GET, "/v1/tokens", None).await.0,
            403
        );
        let new = json!({"name": "more", "role": "admin"});
        assert_eq!(
            call(&weir, token, Method::POST, "/v1/tokens", Some(new))
                .await
                .0,
            403
        );
    }
    let ops = Some(made["ops"].as_str());
    assert_eq!(
        call(&weir, ops, Method::GET, "/v1/tokens", None).await.0,
        200
    );
    assert_eq!(
        call(&weir, editor, Method::DELETE, "/v1/rules/r", None)
            .await
            .0,
        204
    );

    // Revoked: the token stops working; the admin token cannot be revoked over the API.
    assert_eq!(
        call(&weir, admin, Method::DELETE, "/v1/tokens/ci", None)
            .await
            .0,
        204
    );
    assert_eq!(
        call(&weir, admin, Method::DELETE, "/v1/tokens/ci", None)
            .await
            .0,
        404
    );
    assert_eq!(
        call(&weir, editor, Method::GET, "/v1/rules", None).await.0,
        401
    );
    assert_eq!(
        call(&weir, admin, Method::DELETE, "/v1/tokens/admin", None)
            .await
            .0,
        400
    );

    // After a restart the same tokens hold.
    weir.use_token(None);
    let weir = weir.restart().await;
    assert_eq!(
        call(&weir, viewer, Method::GET, "/v1/rules", None).await.0,
        200
    );
    assert_eq!(
        call(&weir, editor, Method::GET, "/v1/rules", None).await.0,
        401
    );
    assert_eq!(
        call(&weir, admin, Method::GET, "/v1/tokens", None).await.0,
        200
    );
}

#[tokio::test]
async fn the_admin_token_can_come_from_a_file_and_metrics_can_need_a_token() {
    let dir = temp_dir("auth-file");
    let secret = dir.join("secret");
    std::fs::write(&secret, "a-long-operator-secret-1234\n").unwrap();
    let weir = Weir::start(
        &dir,
        &[
            "--admin-token-file",
            secret.to_str().unwrap(),
            "--metrics-auth",
            "true",
        ],
    )
    .await;
    assert!(weir.admin_token().is_none(), "no admin.token is made");
    let admin = Some("a-long-operator-secret-1234");
    assert_eq!(
        call(&weir, admin, Method::GET, "/v1/rules", None).await.0,
        200
    );
    assert_eq!(
        call(&weir, None, Method::GET, "/metrics", None).await.0,
        401
    );
    let (_, made) = call(
        &weir,
        admin,
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": "prometheus", "role": "viewer"})),
    )
    .await;
    let viewer = made["token"].as_str();
    let (status, text) = call(&weir, viewer, Method::GET, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(
        text.as_str()
            .unwrap()
            .contains("weir_ingress_messages_total")
    );
    assert_eq!(
        call(&weir, None, Method::GET, "/healthz", None).await.0,
        200
    );
}

#[tokio::test]
async fn with_auth_off_no_token_is_needed() {
    let dir = temp_dir("auth-off");
    let weir = Weir::start(&dir, &["--auth", "off"]).await;
    assert!(weir.admin_token().is_none());
    assert_eq!(
        call(&weir, None, Method::PUT, "/v1/rules/r", Some(rule()))
            .await
            .0,
        201
    );
    assert_eq!(
        call(&weir, None, Method::GET, "/v1/rules", None).await.0,
        200
    );
}

/// The real binary: a token from WEIR_ADMIN_TOKEN works; the log names the token file it
/// made, and never a token.
#[tokio::test]
async fn the_log_names_the_token_file_never_the_token() {
    let dir = temp_dir("auth-log");
    let weir = WeirProcess::start(&dir, &[]).await;
    let token = weir.admin_token().unwrap();
    let log = std::fs::read_to_string(dir.join("weir.log")).unwrap();
    assert!(
        log.contains(&dir.join("admin.token").display().to_string()),
        "{log}"
    );
    assert!(!log.contains(&token));
    drop(weir);

    let dir = temp_dir("auth-env");
    let (http, mqtt) = (free_port(), free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--data-dir", dir.to_str().unwrap()])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .args(["--mqtt-listen", &format!("127.0.0.1:{mqtt}")])
        .args(["--queries-dir", dir.join("none").to_str().unwrap()])
        .env("WEIR_ADMIN_TOKEN", "from-the-environment-0123456789")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{http}/v1/rules");
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        match client
            .get(&url)
            .bearer_auth("from-the-environment-0123456789")
            .send()
            .await
        {
            Ok(r) => break r.status().as_u16(),
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            Err(e) => panic!("weir did not answer: {e}"),
        }
    };
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(status, 200);
    assert!(!dir.join("admin.token").exists());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("from-the-environment-0123456789"), "{log}");
}

/// Secrets in actions (a Kafka SASL password, a storage key, a webhook's Authorization
/// header) are never in an API answer; a rule read and sent back as it was shown keeps
/// them; one that sends a redacted secret it never had is refused. The stored rules are
/// readable by weir's user alone.
#[tokio::test]
async fn secrets_in_actions_are_never_shown_and_kept_when_sent_back() {
    let dir = temp_dir("secrets");
    let weir = Weir::start(&dir, &[]).await;
    let admin = weir.admin_token();
    let admin = admin.as_deref();
    let rule = json!({
        "sql": "SELECT a FROM 'in'",
        "actions": [
            {"kafka": {"bootstrap_servers": "127.0.0.1:9", "topic": "t",
                "properties": {"sasl.password": "kafka-secret-1", "sasl.username": "weir", "acks": "all"}}},
            {"object_store": {"url": "s3://lake/raw", "options": {
                "access_key_id": "AKIDEXAMPLE", "secret_access_key": "s3-secret-2", "region": "eu-west-1"}}},
            {"webhook": {"url": "http://127.0.0.1:9/hook", "headers": {
                "Authorization": "Bearer hook-secret-3", "x-source": "weir"}}}
        ]
    });
    let secrets = ["kafka-secret-1", "s3-secret-2", "hook-secret-3"];
    let (status, put) = call(&weir, admin, Method::PUT, "/v1/rules/r", Some(rule)).await;
    assert_eq!(status, 201, "{put}");
    let (_, one) = call(&weir, admin, Method::GET, "/v1/rules/r", None).await;
    let (_, all) = call(&weir, admin, Method::GET, "/v1/rules", None).await;
    for shown in [&put, &one, &all] {
        for s in secrets {
            assert!(!shown.to_string().contains(s), "{s} in {shown}");
        }
    }
    let actions = &one["actions"];
    assert_eq!(
        actions[0]["kafka"]["properties"]["sasl.password"],
        "<redacted>"
    );
    assert_eq!(actions[0]["kafka"]["properties"]["sasl.username"], "weir");
    assert_eq!(
        actions[1]["object_store"]["options"]["secret_access_key"],
        "<redacted>"
    );
    assert_eq!(
        actions[1]["object_store"]["options"]["access_key_id"],
        "AKIDEXAMPLE"
    );
    assert_eq!(
        actions[2]["webhook"]["headers"]["Authorization"],
        "<redacted>"
    );
    assert_eq!(actions[2]["webhook"]["headers"]["x-source"], "weir");

    // Sent back as shown, with one change: the secrets stay what they were.
    let mut back = json!({"sql": one["sql"], "actions": one["actions"]});
    back["actions"][0]["kafka"]["properties"]["linger.ms"] = json!("10");
    let (status, body) = call(&weir, admin, Method::PUT, "/v1/rules/r", Some(back)).await;
    assert_eq!(status, 200, "{body}");
    let stored = stored_text(&dir);
    let last = stored.lines().last().unwrap();
    for s in secrets {
        assert!(last.contains(s), "{s} kept in the store");
    }
    assert!(last.contains(r#""linger.ms":"10""#), "{last}");

    // A redacted secret with nothing stored to keep is refused, naming it.
    let new = json!({"sql": "SELECT a FROM 'in'", "actions": [{"webhook": {
        "url": "http://127.0.0.1:9/", "headers": {"Authorization": "<redacted>"}}}]});
    let (status, body) = call(&weir, admin, Method::PUT, "/v1/rules/other", Some(new)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_action");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("headers.Authorization"),
        "{body}"
    );
}

/// Bodies are JSON, said so (415 otherwise: a form on another site cannot post one), and
/// at most 2 MiB (413 otherwise).
#[tokio::test]
async fn request_bodies_are_json_and_bounded() {
    let dir = temp_dir("bodies");
    let weir = Weir::start(&dir, &[]).await;
    let token = weir.admin_token().unwrap();
    let client = reqwest::Client::new();
    let rule = r#"{"sql": "SELECT a FROM 'in'", "actions": []}"#;
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = client
            .put(weir.url("/v1/rules/r"))
            .bearer_auth(&token)
            .body(rule);
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 415, "{content_type:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unsupported_media_type");
    }
    let r = client
        .put(weir.url("/v1/rules/r"))
        .bearer_auth(&token)
        .header("content-type", "application/json; charset=utf-8")
        .body(rule)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let big = format!(r#"{{"sql": "{}", "actions": []}}"#, "x".repeat(3 << 20));
    let r = client
        .put(weir.url("/v1/rules/big"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "payload_too_large");
    // Without a body, no content type is needed.
    let r = client
        .post(weir.url("/v1/rules/r/disable"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// With `--http-tls-cert` and `--http-tls-key` the API speaks HTTPS, and only HTTPS.
#[tokio::test]
async fn the_api_speaks_https_when_given_a_certificate() {
    let certs = make_certs();
    let dir = temp_dir("https");
    let (cert, key) = (certs.join("server.pem"), certs.join("server.key"));
    let weir = Weir::launch(
        &dir,
        &[
            "--http-tls-cert",
            cert.to_str().unwrap(),
            "--http-tls-key",
            key.to_str().unwrap(),
        ],
    );
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem")).unwrap()).unwrap();
    let https = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .unwrap();
    let base = format!("https://localhost:{}", weir.http.port());
    let mut ready = false;
    for _ in 0..300 {
        if let Ok(r) = https.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "weir answers over HTTPS");
    let token = weir.admin_token().unwrap();
    let r = https
        .get(format!("{base}/v1/rules"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Plain HTTP gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", weir.http))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
}

/// Half a certificate pair is refused at start, naming both flags.
#[test]
fn tls_needs_both_the_certificate_and_the_key() {
    let cli = ::weir::config::parse_from(["weir", "serve", "--http-tls-cert", "/x.pem"]).unwrap();
    let ::weir::config::Command::Serve(args) = cli.command else {
        panic!("weir serve")
    };
    let err = ::weir::config::Settings::resolve(&args).unwrap_err();
    assert!(
        format!("{err:#}").contains("--http-tls-cert and --http-tls-key go together"),
        "{err:#}"
    );
}

/// A client that does not finish sending a request's headers is disconnected.
#[tokio::test]
async fn a_client_that_sends_headers_slowly_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = temp_dir("slow-headers");
    let weir = Weir::start(&dir, &[]).await;
    let mut s = tokio::net::TcpStream::connect(weir.http).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection is closed");
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_secs(9),
        "closed after {took:?}"
    );
    // A well-behaved client is served meanwhile and after.
    let (status, _) = weir.request(Method::GET, "/healthz").await;
    assert_eq!(status, 200);
}

/// A request from a browser page (it carries `Origin`) is refused unless its origin is
/// allowed; with `--http-allowed-hosts` the API answers only to those names. The health
/// routes answer everyone.
#[tokio::test]
async fn browser_pages_and_unknown_host_names_are_refused() {
    let dir = temp_dir("origins");
    let weir = Weir::start(
        &dir,
        &[
            "--http-allowed-origins",
            "https://console.example.com",
            "--http-allowed-hosts",
            "127.0.0.1,weir.internal",
        ],
    )
    .await;
    let token = weir.admin_token().unwrap();
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut req = reqwest::Client::new()
            .get(weir.url(path))
            .bearer_auth(&token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, body) = get("/v1/rules", &[("origin", "https://evil.example")]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "origin_not_allowed");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--http-allowed-origins"),
        "{body}"
    );
    let (status, _) = get("/v1/rules", &[("origin", "https://console.example.com")]).await;
    assert_eq!(status, 200);
    let (status, body) = get("/v1/rules", &[("host", "rebound.example:8080")]).await;
    assert_eq!(status, 421, "{body}");
    assert_eq!(body["error"]["code"], "host_not_allowed");
    let (status, _) = get("/v1/rules", &[("host", "weir.internal:8080")]).await;
    assert_eq!(status, 200);
    let (status, _) = get("/metrics", &[("origin", "https://evil.example")]).await;
    assert_eq!(status, 403);
    let (status, _) = get(
        "/healthz",
        &[("origin", "https://evil.example"), ("host", "x")],
    )
    .await;
    assert_eq!(status, 200);
}
