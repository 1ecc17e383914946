//! The API's error answer: `{"error": {"code": "...", "message": "...", ...}}` with a 4xx
//! or 5xx status; SQL errors add `line` and `column`, action errors the `field`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::rules::RuleError;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: serde_json::Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: serde_json::Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// A failure of weir's own (the disk), logged.
    pub fn internal(e: anyhow::Error) -> Self {
        tracing::error!(error = %format!("{e:#}"), "request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{e:#}"),
        )
    }

    /// A request body that is not the JSON it should be, saying where: `shape` is the code
    /// of JSON of the wrong shape.
    pub fn body(e: &serde_json::Error, shape: &'static str) -> Self {
        let code = if e.is_data() { shape } else { "invalid_json" };
        Self::new(StatusCode::BAD_REQUEST, code, e.to_string())
            .with("line", e.line())
            .with("column", e.column())
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
            RuleError::NotAllowed { context, message } => ApiError::new(
                StatusCode::BAD_REQUEST,
                "destination_not_allowed",
                format!("{context}: {message}"),
            )
            .with("field", context),
            RuleError::InvalidName(e) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string())
            }
            e @ RuleError::ConnectionNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            e @ RuleError::ConnectionInUse { .. } => {
                ApiError::new(StatusCode::CONFLICT, "connection_in_use", e.to_string())
            }
            e @ RuleError::TooManyConnections(_) => {
                ApiError::new(StatusCode::CONFLICT, "too_many_connections", e.to_string())
            }
            e @ RuleError::TooManyRules(_) => {
                ApiError::new(StatusCode::CONFLICT, "too_many_rules", e.to_string())
            }
            RuleError::NotFound(name) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no rule named '{name}'"),
            )
            .with("rule", name),
            RuleError::Request(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_rule", m),
            e @ RuleError::Conflict(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            e @ RuleError::PreconditionFailed { .. } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                e.to_string(),
            ),
            RuleError::TestsFailed { total, failures } => ApiError::new(
                StatusCode::BAD_REQUEST,
                "rule_tests_failed",
                format!("{} of the rule's {total} tests failed", failures.len()),
            )
            .with("failures", failures),
            RuleError::Store(e) => ApiError::internal(e),
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
