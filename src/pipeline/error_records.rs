//! What a rule's error action receives: a JSON document per message the rule could not
//! process, and per output an action gave up on.
//!
//! `{"rule", "reason", "error", "topic", "clientid", "timestamp", "payload_base64",
//! "payload" (when it is JSON), "action" and "output" (for an output an action gave up
//! on)}`.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;
use weir_connectors::delivery::{Delivery, Undeliverable};
use weir_engine::Message;

/// Turns the outputs a rule's actions gave up on into error records for its error action,
/// until every action has stopped.
pub(super) async fn forward(
    rule: String,
    mut failed: mpsc::Receiver<Undeliverable>,
    error_tx: mpsc::Sender<Delivery>,
) {
    let error_tx = Some(error_tx);
    while let Some(u) = failed.recv().await {
        let record = error_record(
            &rule,
            Some(&u.label),
            u.error.reason.as_str(),
            &u.error.message,
            &u.delivery.source,
            Some(&u.delivery.payload),
        );
        send_error(&error_tx, &rule, record, u.delivery.source).await;
    }
}

/// Sends an error record to the rule's error action, if it has one.
pub(super) async fn send_error(
    tx: &Option<mpsc::Sender<Delivery>>,
    rule: &str,
    record: Bytes,
    source: Arc<Message>,
) {
    let Some(tx) = tx else {
        return;
    };
    let d = Delivery {
        payload: record,
        params: Arc::new(Vec::new()),
        source,
    };
    if tx.send(d).await.is_err() {
        tracing::error!(rule, "error action stopped early; error record lost");
    }
}

/// The JSON document the error action receives.
pub(super) fn error_record(
    rule: &str,
    action: Option<&str>,
    reason: &str,
    error: &str,
    msg: &Message,
    output: Option<&Bytes>,
) -> Bytes {
    let payload: Option<serde_json::Value> = serde_json::from_slice(&msg.payload).ok();
    let mut doc = json!({
        "rule": rule,
        "reason": reason,
        "error": error,
        "topic": msg.topic,
        "clientid": msg.client_id,
        "timestamp": msg.received_at_ms,
        "payload_base64": base64::engine::general_purpose::STANDARD.encode(&msg.payload),
    });
    if let Some(a) = action {
        doc["action"] = json!(a);
    }
    if let Some(p) = payload {
        doc["payload"] = p;
    }
    if let Some(o) = output.and_then(|o| serde_json::from_slice::<serde_json::Value>(o).ok()) {
        doc["output"] = o;
    }
    Bytes::from(serde_json::to_vec(&doc).expect("a JSON value serialises"))
}
