//! `POST /v1/topics/{topic}[?qos=0|1&retain=true|false]`: a device publishes over HTTP,
//! as on AWS IoT's HTTPS data plane. The body is the payload, whatever its type. The
//! message is taken as its MQTT PUBLISH would be (to the rules, the retained store, the
//! subscribers) and the answer is sent when an MQTT PUBACK would be: at QoS 1 once the
//! rules let go of it (their outputs handed to the actions' buffers, a shadow change
//! stored). A device token is judged by the broker's ACL as the MQTT user (and client
//! id) of its name; an editor's is not. Bounds as for MQTT: the packet size
//! (`--mqtt-max-packet-size`, 413 past it) and the topic's levels.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use weir_connectors::mqtt::QoS;
use weir_connectors::mqtt::embedded::access::Want;
use weir_engine::Message;
use weir_engine::topic::validate_topic;

use super::error::ApiError;
use super::guards::{DRAIN_LIMIT, drain};
use super::state::AppState;
use crate::auth::Caller;

/// The query of a publish: `qos` (0 by default, as AWS) and `retain` (false).
#[derive(Debug, serde::Deserialize)]
pub(super) struct Options {
    qos: Option<String>,
    retain: Option<String>,
}

impl Options {
    fn qos(&self) -> Result<QoS, ApiError> {
        match self.qos.as_deref() {
            None | Some("0") => Ok(QoS::AtMostOnce),
            Some("1") => Ok(QoS::AtLeastOnce),
            Some(q) => Err(invalid(format!("qos must be 0 or 1, got '{q}'"))),
        }
    }

    fn retain(&self) -> Result<bool, ApiError> {
        match self.retain.as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(r) => Err(invalid(format!("retain must be true or false, got '{r}'"))),
        }
    }
}

fn invalid(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
}

/// The bytes of an MQTT PUBLISH's fixed header and packet id beside its topic and
/// payload: what an HTTP publish is measured with against the packet size.
const OVERHEAD: usize = 5 + 2 + 2;

pub(super) async fn publish(
    State(s): State<Arc<AppState>>,
    caller: Option<Extension<Caller>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(topic): Path<String>,
    Query(options): Query<Options>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (qos, retain) = (options.qos()?, options.retain()?);
    validate_topic(&topic).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_topic",
            format!("'{topic}' is not a topic to publish to: {e}"),
        )
    })?;
    let caller = caller.map(|Extension(c)| c);
    if !s.devices.may(caller.as_ref(), Want::Write, &topic) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the ACL does not let this device publish to '{topic}'"),
        ));
    }
    // The payload's room in a packet of the largest size a device may send: none, when
    // the topic alone does not fit (refused below, whatever the body).
    let Some(room) = s.devices.max_packet.checked_sub(OVERHEAD + topic.len()) else {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the topic alone has {} bytes: it does not fit in an MQTT packet of {} bytes (--mqtt-max-packet-size)",
                topic.len(),
                s.devices.max_packet
            ),
        ));
    };
    let too_large = |n: String| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the payload has {n} bytes; on '{topic}' at most {room} fit in an MQTT packet of {} bytes (--mqtt-max-packet-size)",
                s.devices.max_packet
            ),
        )
    };
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(n) = length.filter(|n| *n > room) {
        // Read (and drop) a body of moderate size, so that the connection carries the
        // client's next request; a larger one closes it.
        let mut r = too_large(n.to_string()).into_response();
        if n as u64 > DRAIN_LIMIT || !drain(body).await {
            r.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        return Ok(r);
    }
    let payload = axum::body::to_bytes(body, room)
        .await
        .map_err(|_| too_large(format!("more than {room}")))?;
    let mut msg = Message::new(&topic, payload);
    if let Some(c) = &caller {
        msg.client_id = Some(c.name.clone());
        msg.principal = Some(c.name.clone());
    }
    msg.source_ip = Some(peer.ip().to_string());
    s.rules
        .pipeline()
        .publisher()
        .publish_from_http(msg, qos, retain)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the message could not be published: {e}"),
            )
        })?;
    Ok(axum::Json(json!({"message": "OK"})).into_response())
}
