//! What every request passes before its handler: an id, a deadline, a check of the
//! browser page and host it comes from, its bearer token's role, and a JSON body of a
//! bounded size. `router` in `mod.rs` layers them in that order.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::server;
use super::state::AppState;
use crate::auth::{Need, Role};

/// The header that carries a request's id.
const REQUEST_ID: &str = "x-request-id";

/// Every request has an id: the caller's `x-request-id` (1 to 64 of `A-Za-z0-9._:-`), or
/// one weir makes. The response carries it back, and what weir logs while it answers
/// carries it in the `request` span, so a client's report finds weir's log lines.
pub async fn request_id(req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
        })
        .map_or_else(new_request_id, str::to_owned);
    let span = tracing::info_span!(
        "request",
        id = %id,
        method = %req.method(),
        path = %req.uri().path()
    );
    let mut response = next.run(req).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "answered"));
    response.headers_mut().insert(
        REQUEST_ID,
        header::HeaderValue::from_str(&id).expect("the id is checked or made of hex digits"),
    );
    response
}

/// A request id unique in this process and unlikely to repeat across restarts: a random
/// number drawn at the first request, then a count.
fn new_request_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::AtomicU64;
    static NONCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nonce = *NONCE.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    });
    format!("{nonce:016x}{:08x}", COUNT.fetch_add(1, Ordering::Relaxed))
}

/// The largest request body weir reads: a rule's SQL is at most 64 KiB, a rule test's
/// sample messages a little more.
pub const MAX_BODY: usize = 2 * 1024 * 1024;

/// A request gets at most [`server::REQUEST_TIMEOUT`], however slowly its body arrives:
/// 408 after that.
pub async fn deadline(req: Request, next: Next) -> Response {
    match tokio::time::timeout(server::REQUEST_TIMEOUT, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            let mut r = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request took more than {}s",
                    server::REQUEST_TIMEOUT.as_secs()
                ),
            )
            .into_response();
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            r
        }
    }
}

/// Requests to `/v1` and `/metrics` from a browser page (they carry `Origin`) are
/// refused unless the page's origin is allowed (`--http-allowed-origins`), and requests
/// naming a host the API does not answer to (`--http-allowed-hosts`) are refused: a page
/// cannot use a visitor's browser to reach an API on the visitor's network. The health
/// routes answer whoever asks.
pub async fn from_browsers(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if !(path.starts_with("/v1/") || path == "/metrics") {
        return next.run(req).await;
    }
    let b = &state.browsers;
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        if !b.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!(
                    "requests from pages of '{origin}' are not allowed; the operator setting \
                     http_allowed_origins (--http-allowed-origins) would allow them"
                ),
            )
            .into_response();
        }
    }
    if !b.hosts.is_empty() {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let name = host.rsplit_once(':').map_or(host, |(n, _)| n);
        let known = b
            .hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(name));
        if !known {
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "host_not_allowed",
                format!(
                    "this API does not answer to host '{host}'; the operator setting \
                     http_allowed_hosts (--http-allowed-hosts) lists the names it answers to"
                ),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Request bodies are JSON, said so by their `Content-Type` (415 otherwise), and at most
/// [`MAX_BODY`] bytes as their `Content-Length` says (413 otherwise; a body sent in chunks
/// is cut at the same size while it is read). A browser on another site cannot send JSON
/// without asking first (CORS), so a form on a page cannot change rules.
pub async fn json_bodies(req: Request, next: Next) -> Response {
    let writes = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    let path = req.uri().path();
    // A device's publish carries a payload of any type, bounded by its handler.
    if writes && path.starts_with("/v1/") && !path.starts_with(PUBLISH) {
        let headers = req.headers();
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let has_body =
            length.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING);
        if let Some(length) = length.filter(|n| *n > MAX_BODY as u64) {
            // A body left unread ends the connection, and a client still sending it may
            // not see the answer: read and drop one of moderate size; past that, say
            // that the connection closes.
            let drained = length <= DRAIN_LIMIT && drain(req.into_body()).await;
            let mut r = ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the request body has {length} bytes; at most {MAX_BODY} are read"),
            )
            .into_response();
            if !drained {
                r.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            return r;
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

/// The largest refused body weir reads to the end, so that the connection may carry the
/// client's next request.
pub const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

/// Reads a body to its end, dropping it; false if it broke off.
pub async fn drain(body: axum::body::Body) -> bool {
    use futures_util::StreamExt;
    let mut data = body.into_data_stream();
    while let Some(chunk) = data.next().await {
        if chunk.is_err() {
            return false;
        }
    }
    true
}

/// What a request needs, or `None` for the open routes (health, readiness, the OpenAPI
/// document, and `/metrics` unless `metrics` says it is guarded). Device tokens may
/// publish and use a thing's shadow, their ACL judging the topic in the handler.
pub fn required(method: &Method, path: &str, metrics: bool) -> Option<Need> {
    if path == "/metrics" {
        return metrics.then_some(Need::role(Role::Viewer));
    }
    if path == "/v1/tokens" || path.starts_with("/v1/tokens/") {
        return Some(Need::role(Role::Admin));
    }
    let reads = matches!(*method, Method::GET | Method::HEAD);
    // Anyone may see which connections exist (secrets redacted); only an admin changes them.
    if !reads && (path == "/v1/connections" || path.starts_with("/v1/connections/")) {
        return Some(Need::role(Role::Admin));
    }
    let role = if reads { Role::Viewer } else { Role::Editor };
    if !reads && path.starts_with(PUBLISH) {
        return Some(Need::or_device(role));
    }
    if path
        .strip_prefix("/v1/things/")
        .is_some_and(|rest| rest.ends_with("/shadow") && rest.matches('/').count() == 1)
    {
        return Some(Need::or_device(role));
    }
    if path == "/v1" || path.starts_with("/v1/") {
        return Some(Need::role(role));
    }
    None
}

/// Where a publish's topic follows in its path: `POST /v1/topics/{topic}`.
pub const PUBLISH: &str = "/v1/topics/";

/// Lets a request through if its bearer token's role may make it: 401 without a token
/// weir knows, 403 with one whose role is too low.
pub async fn authorize(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if !s.auth.enabled() {
        return next.run(req).await;
    }
    let Some(needed) = required(req.method(), req.uri().path(), s.auth.guards_metrics()) else {
        return next.run(req).await;
    };
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token.and_then(|t| s.auth.caller(t)) {
        None => (
            [(header::WWW_AUTHENTICATE, "Bearer")],
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid API token is needed: send Authorization: Bearer <token>",
            ),
        )
            .into_response(),
        Some(caller) if !caller.role.may(needed) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs the {} role{}; the token's role is {}",
                needed.role.as_str(),
                if needed.devices {
                    " or the device role"
                } else {
                    ""
                },
                caller.role.as_str()
            ),
        )
        .into_response(),
        Some(caller) => {
            let mut req = req;
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
    }
}
