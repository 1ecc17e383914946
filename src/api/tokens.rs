//! `/v1/tokens`: an admin makes, lists and revokes API tokens. A new token is in the
//! answer to its `POST`, once; weir keeps only its hash.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::state::{AppState, parse_body};
use crate::auth::Role;
use crate::auth::tokens::TokenError;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    name: String,
    role: Role,
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::InvalidName(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string())
            }
            TokenError::Exists(_) => ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            TokenError::Reserved(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string())
            }
            TokenError::TooMany => {
                ApiError::new(StatusCode::CONFLICT, "too_many_tokens", e.to_string())
            }
            TokenError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            TokenError::Store(e) => ApiError::internal(e),
        }
    }
}

pub(super) async fn create(
    State(s): State<Arc<AppState>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: NewToken = parse_body(&body, "invalid_request")?;
    let token = s.auth.create(&req.name, req.role).await?;
    tracing::info!(token = %req.name, role = req.role.as_str(), "API token made");
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({"name": req.name, "role": req.role, "token": token})),
    )
        .into_response())
}

pub(super) async fn list(State(s): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"tokens": s.auth.list()})).into_response()
}

pub(super) async fn delete(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if !s.auth.remove(&name).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no token named '{name}'"),
        ));
    }
    tracing::info!(token = %name, "API token revoked");
    Ok(StatusCode::NO_CONTENT.into_response())
}
