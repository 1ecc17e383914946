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
            RuleError::Invalid { field, message } => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_rule",
                format!("{field}: {message}"),
            )
            .with("field", field),
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
        .route("/v1/test", post(test_rule))
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

/// Parses a JSON body with an error that says where it is wrong.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice::<T>(body).map_err(|e| {
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
    let spec: RuleSpec = parse_body(&body)?;
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

/// `POST /v1/test`: a rule and sample messages.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRequest {
    sql: String,
    #[serde(default)]
    actions: Vec<weir_connectors::actions::ActionConfig>,
    #[serde(default = "crate::store::current_sql_version")]
    sql_version: String,
    messages: Vec<TestMessage>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TestMessage {
    topic: String,
    /// The payload as JSON.
    #[serde(default)]
    payload: Option<Value>,
    /// The payload as these exact bytes (UTF-8), for payloads that are not JSON.
    #[serde(default)]
    payload_raw: Option<String>,
    #[serde(default)]
    clientid: Option<String>,
    /// MQTT 5 properties of the PUBLISH (see `weir_engine::MqttProperties::from_json`);
    /// without them the message came over MQTT 3.1.1.
    #[serde(default)]
    mqtt_properties: Option<Value>,
}

/// Runs a rule on sample messages without deploying it: per message, the outputs and the
/// rendered action parameters, or why there is none.
async fn test_rule(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let req: TestRequest = parse_body(&body)?;
    let spec = RuleSpec {
        sql: req.sql,
        actions: req.actions,
        error_action: None,
        enabled: true,
        description: None,
        sql_version: req.sql_version,
    };
    let rule = s.pipeline.check(&spec)?;
    let mut exprs = weir_engine::template::TemplateExprs::default();
    let mut params = Vec::with_capacity(spec.actions.len());
    for (i, a) in spec.actions.iter().enumerate() {
        let templates = a.templates(&mut exprs).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_action",
                format!("actions[{i}]: {e}"),
            )
        })?;
        params.push((format!("{i}-{}", a.kind()), templates));
    }
    let mut results = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        let payload = match (m.payload, m.payload_raw) {
            (Some(v), None) => serde_json::to_vec(&v).expect("a JSON value serialises"),
            (None, Some(raw)) => raw.into_bytes(),
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_rule",
                    format!("messages[{i}]: give exactly one of payload and payload_raw"),
                ));
            }
        };
        let mut msg = weir_engine::Message::new(m.topic.clone(), payload);
        msg.client_id = m.clientid;
        if let Some(p) = &m.mqtt_properties {
            let p = weir_engine::MqttProperties::from_json(p).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_rule",
                    format!("messages[{i}].mqtt_properties: {e}"),
                )
            })?;
            msg.properties = Some(Arc::new(p));
        }
        let mut result = serde_json::Map::new();
        result.insert("topic".to_owned(), json!(m.topic));
        if !weir_engine::topic::matches(rule.topic_filter(), &msg.topic) {
            result.insert("status".to_owned(), json!("topic_mismatch"));
            results.push(Value::Object(result));
            continue;
        }
        let outcome = rule.process(std::slice::from_ref(&msg));
        let status = if !outcome.outputs.is_empty() {
            "output"
        } else if !outcome.failures.is_empty() {
            "failed"
        } else {
            "filtered"
        };
        result.insert("status".to_owned(), json!(status));
        let outputs: Vec<Value> = outcome
            .outputs
            .iter()
            .map(|o| {
                serde_json::from_slice(&o.payload)
                    .unwrap_or_else(|_| json!(String::from_utf8_lossy(&o.payload)))
            })
            .collect();
        let actions: Vec<Value> = outcome
            .outputs
            .iter()
            .flat_map(|o| {
                params.iter().map(move |(label, templates)| {
                    let rendered: serde_json::Map<String, Value> = templates
                        .iter()
                        .map(|(name, t)| (name.clone(), json!(t.render(&o.params))))
                        .collect();
                    json!({"action": label, "params": rendered})
                })
            })
            .collect();
        if let Some(f) = outcome.failures.first() {
            result.insert(
                "error".to_owned(),
                json!({"reason": f.reason.as_str(), "message": f.message}),
            );
        }
        result.insert("outputs".to_owned(), json!(outputs));
        result.insert("actions".to_owned(), json!(actions));
        result.insert(
            "undefined".to_owned(),
            json!(rule.undefined_fields(&msg.payload)),
        );
        results.push(Value::Object(result));
    }
    Ok(
        axum::Json(json!({"topic_filter": rule.topic_filter(), "results": results}))
            .into_response(),
    )
}
