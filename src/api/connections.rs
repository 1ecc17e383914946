//! `/v1/connections`: the named destinations an operator defines (admin to change, any
//! role to read), which actions name instead of writing endpoints and credentials inline.
//! Secrets are write-only: answers show them as `"<redacted>"`, and a connection sent
//! back with `"<redacted>"` keeps the secret it had.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use weir_connectors::sinks::ConnectionConfig;

use super::error::ApiError;
use super::state::{AppState, parse_body};
use crate::rules::RuleError;

pub(super) async fn list(State(s): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"connections": s.rules.connections()})).into_response()
}

pub(super) async fn get(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let c = s
        .rules
        .connection(&name)
        .ok_or(RuleError::ConnectionNotFound(name))?;
    Ok(axum::Json(c).into_response())
}

pub(super) async fn put(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let config: ConnectionConfig = parse_body(&body, "invalid_request")?;
    let (stored, created) = s.rules.put_connection(&name, config, "api").await?;
    tracing::info!(connection = %name, kind = stored.config.kind(), "connection stored");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(stored)).into_response())
}

pub(super) async fn delete(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    s.rules.delete_connection(&name).await?;
    tracing::info!(connection = %name, "connection deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}
