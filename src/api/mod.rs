//! The HTTP API: rules CRUD, enable/disable, the rule test endpoint, tokens, device
//! shadows, devices' publishes, metrics, health, readiness and the OpenAPI document. Handlers only translate HTTP: every rule
//! change goes through the [`RuleService`], every error is an [`ApiError`]. Every `/v1`
//! request is authorised first ([`authorize`]): a bearer token whose role may do it.

mod connections;
mod error;
mod guards;
mod publish;
mod rules;
pub mod server;
mod shadows;
mod state;
#[cfg(test)]
mod tests;
mod tokens;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
pub use error::ApiError;
use guards::{MAX_BODY, authorize, deadline, from_browsers, json_bodies, request_id};
use rules::{delete_rule, disable_rule, enable_rule, get_rule, list_rules, put_rule, test_rule};
use serde_json::json;
pub use state::{AppState, parse_body};

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
        .route(
            "/v1/things/{thing}/shadow",
            get(shadows::get)
                .post(shadows::update)
                .delete(shadows::delete),
        )
        .route("/v1/things/{thing}/shadows", get(shadows::list))
        // The body is a payload of any type and size up to the MQTT packet size, which
        // the handler bounds itself.
        .route(
            "/v1/topics/{*topic}",
            post(publish::publish).layer(axum::extract::DefaultBodyLimit::disable()),
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
