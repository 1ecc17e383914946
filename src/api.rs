//! The HTTP API: rules CRUD, enable/disable, metrics, health, the OpenAPI document.
//! Every error is `{"error": {"code": "...", "message": "...", ...}}` with a 4xx or 5xx
//! status; SQL errors add `line` and `column`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use weir_engine::now_ms;

use crate::pipeline::{Pipeline, RuleError};
use crate::store::{RuleSpec, RuleStore, StoredRule, validate_name};

/// Shared state of the API handlers.
pub struct AppState {
    pub pipeline: Arc<Pipeline>,
    /// The store; its lock also serialises rule changes.
    pub store: Mutex<RuleStore>,
    pub ready: std::sync::atomic::AtomicBool,
}

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: serde_json::Map<String, Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: serde_json::Map::new(),
        }
    }

    fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    fn not_found(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no rule named '{name}'"),
        )
        .with("rule", name)
    }

    fn internal(e: anyhow::Error) -> Self {
        tracing::error!(error = %format!("{e:#}"), "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{e:#}"),
        )
    }
}

impl From<RuleError> for ApiError {
    fn from(e: RuleError) -> Self {
        match e {
            RuleError::Sql(s) => {
                let mut err =
                    ApiError::new(StatusCode::BAD_REQUEST, "invalid_sql", s.message.clone());
                if let (Some(l), Some(c)) = (s.line, s.column) {
                    err = err.with("line", l).with("column", c);
                }
                err
            }
            RuleError::Action { context, message } => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_action",
                format!("{context}: {message}"),
            )
            .with("field", context),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::Map::new();
        body.insert("code".to_owned(), json!(self.code));
        body.insert("message".to_owned(), json!(self.message));
        body.extend(self.extra);
        (self.status, axum::Json(json!({ "error": body }))).into_response()
    }
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
        .with_state(state)
}

fn rule_json(r: &StoredRule) -> Value {
    let mut v = serde_json::to_value(r).expect("a rule serialises");
    // The topic filter is handy in listings; it is derived, so it is not stored.
    if let Ok(filter) = weir_engine::dialect::topic_filter_of(&r.spec.sql) {
        v["topic_filter"] = json!(filter);
    }
    v
}

async fn list_rules(State(s): State<Arc<AppState>>) -> Response {
    let store = s.store.lock().await;
    let rules: Vec<Value> = store.list().map(rule_json).collect();
    axum::Json(json!({ "rules": rules })).into_response()
}

async fn get_rule(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let store = s.store.lock().await;
    let r = store.get(&name).ok_or_else(|| ApiError::not_found(&name))?;
    Ok(axum::Json(rule_json(r)).into_response())
}

/// Parses a rule body with an error that says where the JSON is wrong.
fn parse_spec(body: &[u8]) -> Result<RuleSpec, ApiError> {
    serde_json::from_slice::<RuleSpec>(body).map_err(|e| {
        let code = if e.is_data() {
            "invalid_rule"
        } else {
            "invalid_json"
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
            .with("line", e.line())
            .with("column", e.column())
    })
}

async fn put_rule(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    validate_name(&name).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", m))?;
    let spec = parse_spec(&body)?;
    let mut store = s.store.lock().await;
    let created_at = store.get(&name).map(|r| r.created_at_ms);
    let rule = StoredRule {
        name: name.clone(),
        spec,
        source: "api".to_owned(),
        created_at_ms: created_at.unwrap_or_else(now_ms),
        updated_at_ms: now_ms(),
    };
    apply(&s.pipeline, &mut store, rule.clone()).await?;
    let status = if created_at.is_none() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(rule_json(&rule))).into_response())
}

/// Checks a rule, stores it and makes the pipeline run it (or stop it, when disabled).
pub async fn apply(
    pipeline: &Pipeline,
    store: &mut RuleStore,
    rule: StoredRule,
) -> Result<(), ApiError> {
    let prepared = if rule.spec.enabled {
        Some(pipeline.prepare(&rule.name, &rule.spec).await?)
    } else {
        pipeline.check(&rule.spec)?;
        None
    };
    store.put(rule.clone()).map_err(ApiError::internal)?;
    match prepared {
        Some(p) => pipeline.start(&rule.name, p),
        None => pipeline.stop(&rule.name),
    }
    Ok(())
}

async fn set_enabled(s: &AppState, name: &str, enabled: bool) -> Result<Response, ApiError> {
    let mut store = s.store.lock().await;
    let mut rule = store
        .get(name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(name))?;
    if rule.spec.enabled != enabled {
        rule.spec.enabled = enabled;
        rule.updated_at_ms = now_ms();
        apply(&s.pipeline, &mut store, rule.clone()).await?;
    }
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
    let mut store = s.store.lock().await;
    store
        .remove(&name)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(&name))?;
    s.pipeline.stop(&name);
    s.pipeline.metrics().forget_rule(&name);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.pipeline.metrics().render(),
    )
        .into_response()
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    if s.ready.load(std::sync::atomic::Ordering::Acquire) {
        axum::Json(json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "weir is starting",
        )
        .into_response()
    }
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/yaml")],
        include_str!("../docs/openapi.yaml"),
    )
        .into_response()
}
