//! The HTTP API: rules CRUD, enable/disable, the rule test endpoint, tokens, metrics,
//! health, readiness and the OpenAPI document. Handlers only translate HTTP: every rule
//! change goes through the [`RuleService`], every error is an [`ApiError`]. Every `/v1`
//! request is authorised first ([`authorize`]): a bearer token whose role may do it.

mod error;
mod tokens;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
pub use error::ApiError;
use serde_json::{Value, json};

use crate::auth::{Auth, Role};
use crate::rules::RuleService;
use crate::rules::spec::{RuleSpec, StoredRule, validate_name};

/// Shared state of the API handlers.
pub struct AppState {
    pub rules: Arc<RuleService>,
    pub auth: Arc<Auth>,
    /// Whether weir serves traffic: false while it starts (rules load) and once it stops.
    pub ready: AtomicBool,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/rules", get(list_rules))
        .route(
            "/v1/rules/{name}",
            get(get_rule).put(put_rule).delete(delete_rule),
        )
        .route("/v1/rules/{name}/enable", post(enable_rule))
        .route("/v1/rules/{name}/disable", post(disable_rule))
        .route("/v1/test", post(test_rule))
        .route("/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/v1/tokens/{name}", axum::routing::delete(tokens::delete))
        .route("/metrics", get(metrics))
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/openapi.yaml", get(openapi))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        // The last layer runs first: who may, then what the body is.
        .layer(axum::middleware::from_fn(json_bodies))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .with_state(state)
}

/// The largest request body weir reads: a rule's SQL is at most 64 KiB, a rule test's
/// sample messages a little more.
pub const MAX_BODY: usize = 2 * 1024 * 1024;

/// Request bodies are JSON, said so by their `Content-Type` (415 otherwise), and at most
/// [`MAX_BODY`] bytes as their `Content-Length` says (413 otherwise; a body sent in chunks
/// is cut at the same size while it is read). A browser on another site cannot send JSON
/// without asking first (CORS), so a form on a page cannot change rules.
async fn json_bodies(req: Request, next: Next) -> Response {
    let writes = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    if writes && req.uri().path().starts_with("/v1/") {
        let headers = req.headers();
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let has_body =
            length.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING);
        if length.is_some_and(|n| n > MAX_BODY as u64) {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the request body has {} bytes; at most {MAX_BODY} are read",
                    length.unwrap_or(0)
                ),
            )
            .into_response();
        }
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
        if has_body && !json {
            return ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "request bodies are JSON: send Content-Type: application/json",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// The role a request needs, or `None` for the open routes (health, readiness, the
/// OpenAPI document, and `/metrics` unless `metrics` says it is guarded).
fn required_role(method: &Method, path: &str, metrics: bool) -> Option<Role> {
    if path == "/metrics" {
        return metrics.then_some(Role::Viewer);
    }
    if path == "/v1/tokens" || path.starts_with("/v1/tokens/") {
        return Some(Role::Admin);
    }
    if path == "/v1" || path.starts_with("/v1/") {
        let reads = matches!(*method, Method::GET | Method::HEAD);
        return Some(if reads { Role::Viewer } else { Role::Editor });
    }
    None
}

/// Lets a request through if its bearer token's role may make it: 401 without a token
/// weir knows, 403 with one whose role is too low.
async fn authorize(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if !s.auth.enabled() {
        return next.run(req).await;
    }
    let Some(needed) = required_role(req.method(), req.uri().path(), s.auth.guards_metrics())
    else {
        return next.run(req).await;
    };
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token.and_then(|t| s.auth.role_of(t)) {
        None => (
            [(header::WWW_AUTHENTICATE, "Bearer")],
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid API token is needed: send Authorization: Bearer <token>",
            ),
        )
            .into_response(),
        Some(role) if role < needed => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs the {} role; the token's role is {}",
                needed.as_str(),
                role.as_str()
            ),
        )
        .into_response(),
        Some(_) => next.run(req).await,
    }
}

/// A rule as the API shows it: its actions' secrets redacted, its topic filter added.
fn rule_json(r: &StoredRule) -> Value {
    let mut shown = r.clone();
    for a in shown
        .spec
        .actions
        .iter_mut()
        .chain(shown.spec.error_action.as_mut())
    {
        *a = a.redacted();
    }
    let mut v = serde_json::to_value(&shown).expect("a rule serialises");
    // The topic filter is handy in listings; it is derived, so it is not stored.
    if let Ok(filter) = weir_engine::dialect::topic_filter_of(&r.spec.sql) {
        v["topic_filter"] = json!(filter);
    }
    v
}

async fn list_rules(State(s): State<Arc<AppState>>) -> Response {
    let rules: Vec<Value> = s.rules.list().await.iter().map(rule_json).collect();
    axum::Json(json!({ "rules": rules })).into_response()
}

async fn get_rule(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let r = s
        .rules
        .get(&name)
        .await
        .ok_or(crate::rules::RuleError::NotFound(name))?;
    Ok(axum::Json(rule_json(&r)).into_response())
}

/// Parses a JSON body with an error that says where it is wrong.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice::<T>(body).map_err(|e| ApiError::body(&e))
}

async fn put_rule(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    validate_name(&name).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", m))?;
    let spec: RuleSpec = parse_body(&body)?;
    let (rule, created) = s.rules.put(&name, spec, "api".to_owned()).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(rule_json(&rule))).into_response())
}

async fn set_enabled(s: &AppState, name: &str, enabled: bool) -> Result<Response, ApiError> {
    let rule = s.rules.set_enabled(name, enabled).await?;
    Ok(axum::Json(rule_json(&rule)).into_response())
}

async fn enable_rule(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_enabled(&s, &name, true).await
}

async fn disable_rule(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_enabled(&s, &name, false).await
}

async fn delete_rule(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    s.rules.delete(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/test`: a rule tried on sample messages (see [`crate::rules::test_run`]).
async fn test_rule(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let report = s.rules.test(parse_body(&body)?)?;
    Ok(axum::Json(report).into_response())
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.rules.pipeline().metrics().render(),
    )
        .into_response()
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        axum::Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "weir is starting or stopping",
        )
        .into_response()
    }
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/yaml")],
        include_str!("../../docs/openapi.yaml"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{BatchSettings, Pipeline};
    use crate::rule_store::RuleStore;
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
                action_queue: 16,
                output_dir: tmp.path().join("out"),
                state_dir: tmp.path().join("actions"),
                buffer_max_bytes: 1 << 20,
            },
        );
        let store = RuleStore::open(tmp.path()).unwrap();
        let auth = crate::config::AuthSettings {
            enabled: true,
            admin_token: crate::config::AdminToken::DataDir,
            metrics: false,
        };
        let state = Arc::new(AppState {
            rules: Arc::new(RuleService::new(
                weir_engine::Engine::new(),
                pipeline,
                store,
            )),
            auth: Arc::new(Auth::open(&auth, tmp.path()).unwrap()),
            ready: AtomicBool::new(false),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(axum::serve(listener, router(state.clone())).into_future());
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
}
