//! The HTTP API: rules CRUD, enable/disable, the rule test endpoint, tokens, metrics,
//! health, readiness and the OpenAPI document. Handlers only translate HTTP: every rule
//! change goes through the [`RuleService`], every error is an [`ApiError`]. Every `/v1`
//! request is authorised first ([`authorize`]): a bearer token whose role may do it.

mod connections;
mod error;
pub mod server;
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
use crate::rules::spec::{Precondition, RuleSpec, StoredRule, validate_name};

/// Shared state of the API handlers.
pub struct AppState {
    pub rules: Arc<RuleService>,
    pub auth: Arc<Auth>,
    /// Whether weir serves traffic: false while it starts (rules load) and once it stops.
    pub ready: AtomicBool,
    /// Which browser pages and host names may call `/v1` and `/metrics`.
    pub browsers: Browsers,
}

/// Which browser pages (`Origin`) and host names (`Host`) may call the API.
#[derive(Debug, Clone, Default)]
pub struct Browsers {
    /// Origins whose pages may call the API (`https://console.example.com`); a request
    /// from any other page is refused. Empty: none.
    pub origins: Vec<String>,
    /// Host names the API answers to (`weir.example.com`, with or without the port),
    /// against DNS rebinding. Empty: any.
    pub hosts: Vec<String>,
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
        .route("/v1/connections", get(connections::list))
        .route(
            "/v1/connections/{name}",
            get(connections::get)
                .put(connections::put)
                .delete(connections::delete),
        )
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
        // The last layer runs first: the request's id, the deadline, where from, who
        // may, then what the body is.
        .layer(axum::middleware::from_fn(json_bodies))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            from_browsers,
        ))
        .layer(axum::middleware::from_fn(deadline))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
}

/// The header that carries a request's id.
const REQUEST_ID: &str = "x-request-id";

/// Every request has an id: the caller's `x-request-id` (1 to 64 of `A-Za-z0-9._:-`), or
/// one weir makes. The response carries it back, and what weir logs while it answers
/// carries it in the `request` span, so a client's report finds weir's log lines.
async fn request_id(req: Request, next: Next) -> Response {
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
async fn deadline(req: Request, next: Next) -> Response {
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
async fn from_browsers(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
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
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

/// Reads a body to its end, dropping it; false if it broke off.
async fn drain(body: axum::body::Body) -> bool {
    use futures_util::StreamExt;
    let mut data = body.into_data_stream();
    while let Some(chunk) = data.next().await {
        if chunk.is_err() {
            return false;
        }
    }
    true
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
    // Anyone may see which connections exist (secrets redacted); only an admin changes them.
    let writes = !matches!(*method, Method::GET | Method::HEAD);
    if writes && (path == "/v1/connections" || path.starts_with("/v1/connections/")) {
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
    Ok(rule_response(StatusCode::OK, &r))
}

/// Parses a JSON body with an error that says where it is wrong.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice::<T>(body).map_err(|e| ApiError::body(&e))
}

async fn put_rule(
    State(s): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    validate_name(&name).map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid_name", m))?;
    let precondition = precondition(&headers)?;
    let spec: RuleSpec = parse_body(&body)?;
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

async fn set_enabled(s: &AppState, name: &str, enabled: bool) -> Result<Response, ApiError> {
    let rule = s.rules.set_enabled(name, enabled).await?;
    Ok(rule_response(StatusCode::OK, &rule))
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
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    s.rules.delete(&name, &precondition(&headers)?).await?;
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
                budget: std::time::Duration::from_secs(10),
                memory_budget: 256 << 20,
                action_queue: 16,
                output_dir: tmp.path().join("out"),
                state_dir: tmp.path().join("actions"),
                buffer_max_bytes: 1 << 20,
                policy: Default::default(),
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
                crate::connections::ConnectionStore::open(tmp.path()).unwrap(),
                1000,
            )),
            auth: Arc::new(Auth::open(&auth, tmp.path()).unwrap()),
            ready: AtomicBool::new(false),
            browsers: Browsers::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(server::serve(
            listener,
            router(state.clone()),
            None,
            Default::default(),
        ));
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
