//! `/v1/things/{thing}/shadow[?name=]` and `/v1/things/{thing}/shadows`: device shadows
//! over HTTP, as AWS IoT's data plane (viewer reads, editor writes; a device token may
//! do what the ACL would let its MQTT client do: publish the request, read the
//! `/accepted` answer). An update or delete
//! made here publishes the same MQTT answers as one made over MQTT; the caller gets the
//! `/accepted` document, or AWS's code and text in weir's error body.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::state::AppState;
use crate::auth::Caller;
use crate::shadow::{Op, ShadowError, ShadowId, Shadows};
use weir_connectors::mqtt::embedded::access::Want;

/// The most names one page of `/shadows` holds (AWS: 100).
const PAGE_MAX: usize = 100;
/// A page's size when the caller names none (AWS: 25).
const PAGE_DEFAULT: usize = 25;

impl From<ShadowError> for ApiError {
    fn from(e: ShadowError) -> Self {
        let code = match e.code {
            400 => "invalid_request",
            404 => "not_found",
            409 => "conflict",
            413 => "payload_too_large",
            415 => "unsupported_media_type",
            429 => "too_many_requests",
            _ => "internal",
        };
        let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, code, e.message)
    }
}

type Params = Query<BTreeMap<String, String>>;

/// The shadow a request names: the thing in the path, the shadow in `?name=`.
fn shadow_id(thing: &str, params: &BTreeMap<String, String>) -> Result<ShadowId, ApiError> {
    ShadowId::new(thing, params.get("name").map(String::as_str))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", e.to_string()))
}

async fn run(
    s: &AppState,
    caller: Option<Extension<Caller>>,
    thing: &str,
    params: &BTreeMap<String, String>,
    op: Op,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = shadow_id(thing, params)?;
    let caller = caller.map(|Extension(c)| c);
    let request = format!("{}/{}", id.prefix(), op.as_str());
    if !(s.devices.may(caller.as_ref(), Want::Write, &request)
        && s.devices
            .may(caller.as_ref(), Want::Read, &id.answer(op, "accepted")))
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the ACL does not let this device publish to {request} and read its answer"),
        ));
    }
    let doc = s.shadows.request(id, op, body).await?;
    Ok(axum::Json(doc).into_response())
}

pub(super) async fn get(
    State(s): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    Path(thing): Path<String>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    run(&s, caller, &thing, &params, Op::Get, Bytes::new()).await
}

pub(super) async fn update(
    State(s): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    Path(thing): Path<String>,
    Query(params): Params,
    body: Bytes,
) -> Result<Response, ApiError> {
    run(&s, caller, &thing, &params, Op::Update, body).await
}

pub(super) async fn delete(
    State(s): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    Path(thing): Path<String>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    run(&s, caller, &thing, &params, Op::Delete, Bytes::new()).await
}

/// A thing's named shadows, a page at a time (`pageSize` 1 to 100, `nextToken` from the
/// page before); the classic shadow is not listed, as on AWS.
pub(super) async fn list(
    State(s): State<Arc<AppState>>,
    Path(thing): Path<String>,
    Query(params): Params,
) -> Result<Response, ApiError> {
    shadow_id(&thing, &BTreeMap::new())?;
    let size = match params.get("pageSize") {
        None => PAGE_DEFAULT,
        Some(p) => p
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=PAGE_MAX).contains(n))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    format!("pageSize must be a whole number from 1 to {PAGE_MAX}, got '{p}'"),
                )
            })?,
    };
    let after = params.get("nextToken").cloned();
    let page = s.shadows.list(&thing, after, size).await?;
    let mut body = json!({"results": page.names, "timestamp": Shadows::now()});
    if let Some(next) = page.next {
        body["nextToken"] = json!(next);
    }
    Ok(axum::Json(body).into_response())
}
