//! `/v1/rules` and `/v1/test`: a rule's JSON (secrets redacted, version as ETag), its
//! preconditions (`If-Match`, `If-None-Match`), and the handlers, each a call of the rule
//! service.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::error::ApiError;
use super::state::{AppState, parse_body};
use crate::rules::spec::{Precondition, RuleSpec, StoredRule};
use crate::store::{Kind, validate_name};

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

/// A rule's answer: its JSON, with its version as the ETag.
fn rule_response(status: StatusCode, r: &StoredRule) -> Response {
    (
        status,
        [(header::ETAG, format!("\"{}\"", r.version))],
        axum::Json(rule_json(r)),
    )
        .into_response()
}

/// The request's `If-Match` / `If-None-Match`, as a [`Precondition`]. Only `*` is taken
/// in `If-None-Match`: weir's other reads do not serve conditional GETs.
fn precondition(headers: &axum::http::HeaderMap) -> Result<Precondition, ApiError> {
    let text = |name: header::HeaderName| -> Result<Option<String>, ApiError> {
        let values: Vec<&str> = headers
            .get_all(&name)
            .iter()
            .map(|v| v.to_str())
            .collect::<Result<_, _>>()
            .map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_header",
                    format!("{name} is not text"),
                )
            })?;
        Ok((!values.is_empty()).then(|| values.join(",")))
    };
    if let Some(v) = text(header::IF_NONE_MATCH)? {
        if v.trim() == "*" {
            return Ok(Precondition::Absent);
        }
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            "If-None-Match takes only *: create the rule only if it does not exist",
        ));
    }
    let Some(v) = text(header::IF_MATCH)? else {
        return Ok(Precondition::None);
    };
    if v.trim() == "*" {
        return Ok(Precondition::Exists);
    }
    // Entity tags as weir gives them ("3"); a weak one (W/"3") is the same version. A
    // tag that is not a version of weir's matches no rule.
    Ok(Precondition::Version(
        v.split(',')
            .filter_map(|t| {
                let t = t.trim();
                let t = t.strip_prefix("W/").unwrap_or(t);
                t.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
            })
            .collect(),
    ))
}

pub async fn list_rules(State(s): State<Arc<AppState>>) -> Response {
    let rules: Vec<Value> = s.rules.list().await.iter().map(rule_json).collect();
    axum::Json(json!({ "rules": rules })).into_response()
}

pub async fn get_rule(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let r = s
        .rules
        .get(&name)
        .await
        .ok_or(crate::rules::RuleError::NotFound(name))?;
    Ok(rule_response(StatusCode::OK, &r))
}

pub async fn put_rule(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    validate_name(Kind::Rule, &name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string()))?;
    let precondition = precondition(&headers)?;
    let spec: RuleSpec = parse_body(&body, "invalid_rule")?;
    let (rule, created) = s
        .rules
        .put(&name, spec, "api".to_owned(), &precondition)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(rule_response(status, &rule))
}

pub async fn set_enabled(s: &AppState, name: &str, enabled: bool) -> Result<Response, ApiError> {
    let rule = s.rules.set_enabled(name, enabled).await?;
    Ok(rule_response(StatusCode::OK, &rule))
}

pub async fn enable_rule(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_enabled(&s, &name, true).await
}

pub async fn disable_rule(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    set_enabled(&s, &name, false).await
}

pub async fn delete_rule(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    s.rules.delete(&name, &precondition(&headers)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v1/test`: a rule tried on sample messages (see [`crate::rules::test_run`]).
pub async fn test_rule(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, ApiError> {
    let report = s.rules.test(parse_body(&body, "invalid_rule")?)?;
    Ok(axum::Json(report).into_response())
}
