//! The API served on a real listener, over HTTP.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::Value;

use super::*;
use crate::auth::Auth;
use crate::config::Browsers;
use crate::pipeline::{BatchSettings, Pipeline};
use crate::rules::RuleService;
use crate::store::Store;
use weir_connectors::metrics::Metrics;
use weir_connectors::mqtt::{Broker, Publisher};

/// `/readyz` answers 503 until weir says it is ready (while rules load at start) and
/// again once it stops; `/healthz` answers throughout.
#[tokio::test]
async fn readiness_follows_the_service() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let (ingress, _) = tokio::sync::mpsc::channel(1);
    let pipeline = Pipeline::new(
        metrics.clone(),
        Publisher::Embedded(Broker::new(ingress, metrics)),
        None,
        BatchSettings {
            max_rows: 16,
            linger: std::time::Duration::ZERO,
            budget: std::time::Duration::from_secs(10),
            memory_budget: 256 << 20,
            action_queue: 16,
            output_dir: tmp.path().join("out"),
            state_dir: tmp.path().join("actions"),
            buffer_max_bytes: 1 << 20,
            policy: Default::default(),
        },
    );
    let store = Store::new(Arc::new(
        crate::store::local::Local::open(tmp.path()).unwrap(),
    ));
    let auth = crate::config::AuthSettings {
        enabled: true,
        admin_token: crate::config::AdminToken::DataDir,
        metrics: false,
    };
    let shadows = crate::shadow::Shadows::start(
        &crate::config::ShadowSettings {
            max_bytes: 8192,
            max_shadows: 10,
            cache_bytes: 1 << 20,
            requests_per_second_per_thing: 20,
        },
        tmp.path(),
        None,
        &pipeline,
        true,
        Default::default(),
    )
    .await
    .unwrap();
    let state = Arc::new(AppState {
        shadows,
        rules: Arc::new(
            RuleService::open(weir_engine::Engine::new(), pipeline, store.clone(), 1000)
                .await
                .unwrap(),
        ),
        auth: Arc::new(Auth::open(&auth, tmp.path(), store).await.unwrap()),
        devices: crate::auth::device::Devices::new(None, 4096),
        ready: AtomicBool::new(false),
        browsers: Browsers::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve(
        listener,
        router(state.clone()),
        None,
        Default::default(),
    ));
    let client = reqwest::Client::new();
    let get = |path: &'static str| {
        let client = client.clone();
        async move {
            let r = client
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = get("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "not_ready");
    assert_eq!(get("/healthz").await.0, 200);
    state.ready.store(true, Ordering::Release);
    assert_eq!(get("/readyz").await, (200, json!({"status": "ready"})));
    state.ready.store(false, Ordering::Release);
    assert_eq!(get("/readyz").await.0, 503);
}

#[test]
fn device_tokens_reach_only_the_publish_and_shadow_routes() {
    use crate::auth::{Need, Role};
    use axum::http::Method;
    let need = |m: Method, p: &str| guards::required(&m, p, false);
    let device = |m: Method, p: &str| need(m, p).is_some_and(|n| Role::Device.may(n));
    assert!(device(Method::POST, "/v1/topics/plant/p1/temp"));
    assert!(device(Method::GET, "/v1/things/p1/shadow"));
    assert!(device(Method::POST, "/v1/things/p1/shadow"));
    assert!(device(Method::DELETE, "/v1/things/p1/shadow"));
    for (m, p) in [
        (Method::GET, "/v1/things/p1/shadows"),
        (Method::GET, "/v1/rules"),
        (Method::PUT, "/v1/rules/r"),
        (Method::POST, "/v1/test"),
        (Method::GET, "/v1/tokens"),
        (Method::GET, "/v1/connections"),
        (Method::GET, "/v1/things/p1/shadow/x"),
    ] {
        assert!(!device(m.clone(), p), "{m} {p}");
    }
    // A viewer may not publish; an editor may.
    let publish = need(Method::POST, "/v1/topics/a").unwrap();
    assert_eq!(publish, Need::or_device(Role::Editor));
    assert!(!Role::Viewer.may(publish) && Role::Editor.may(publish));
}
