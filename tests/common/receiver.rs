//! A real HTTP receiver for webhook actions.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::Value;

use super::init;

/// A request's path and `Authorization` header, as the receiver saw them.
pub type Seen = (String, Option<String>);

/// A real HTTP server that records the bodies POSTed to it and answers with the statuses
/// it is told to (200 once the script runs out). A scripted 0 is a request that hangs
/// for 3 seconds and is then answered 503 (the client has timed out by then).
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub bodies: Arc<Mutex<Vec<Value>>>,
    script: Arc<Mutex<Vec<u16>>>,
    pub hits: Arc<Mutex<u32>>,
    /// Each request's path and `Authorization` header.
    pub requests: Arc<Mutex<Vec<Seen>>>,
    delay: Arc<Mutex<Duration>>,
}

impl Receiver {
    pub async fn start(script: Vec<u16>) -> Receiver {
        init();
        use axum::routing::post;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Receiver {
            addr,
            bodies: Default::default(),
            script: Arc::new(Mutex::new(script.into_iter().rev().collect())),
            hits: Default::default(),
            requests: Default::default(),
            delay: Default::default(),
        };
        let state = r.clone();
        let app = axum::Router::new().route(
            "/{*path}",
            post(
                move |uri: axum::http::Uri,
                      headers: axum::http::HeaderMap,
                      body: axum::body::Bytes| {
                    let state = state.clone();
                    async move {
                        *state.hits.lock().unwrap() += 1;
                        let auth = headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        state
                            .requests
                            .lock()
                            .unwrap()
                            .push((uri.path().to_owned(), auth));
                        let delay = *state.delay.lock().unwrap();
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        let status = state.script.lock().unwrap().pop().unwrap_or(200);
                        if status == 0 {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            return StatusCode::SERVICE_UNAVAILABLE;
                        }
                        if status == 200 {
                            state
                                .bodies
                                .lock()
                                .unwrap()
                                .push(serde_json::from_slice(&body).unwrap());
                        }
                        StatusCode::from_u16(status).unwrap()
                    }
                },
            ),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        r
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Replaces the statuses still to be answered.
    pub fn set_script(&self, script: Vec<u16>) {
        *self.script.lock().unwrap() = script.into_iter().rev().collect();
    }

    /// Makes every answer wait this long (a slow sink).
    pub fn set_delay(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }

    /// Waits until `n` bodies have arrived; returns them.
    pub async fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.bodies.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "webhook got {} of {n} bodies: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The `n` of every body received so far, in order (the fault tests number their
    /// messages so).
    pub fn numbers(&self) -> Vec<i64> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .map(|b| b["n"].as_i64().unwrap())
            .collect()
    }
}
