use serde_json::json;
use weir_engine::template::TemplateExprs;

use super::*;
use crate::sink::SinkConfig;
use crate::sink::testing::{assert_refused, parse};

#[test]
fn urls_headers_and_timeouts_are_checked_once() {
    let mut exprs = TemplateExprs::default();
    let v = parse::<WebhookConfig>(json!({
        "url": "http://127.0.0.1:9/${topic(1)}",
        "headers": {"x-device": "${clientid()}"},
        "timeout": "2s",
        "retry": {"max_attempts": 3}
    }))
    .validate(&mut exprs)
    .unwrap();
    let names: Vec<&str> = v.templates.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["url", "headers.x-device"]);
    assert_eq!(exprs.as_slice(), ["topic(1)", "clientid()"]);
    assert_eq!(v.retry.max_attempts, 3);
    assert_eq!(v.settings.timeout, Duration::from_secs(2));
    assert_refused::<WebhookConfig>(vec![
        (json!({"url": "ftp://x"}), "must start with http://"),
        (json!({"url": "http://"}), "invalid url"),
        (json!({"url": "http://x", "timeout": "0s"}), "more than 0"),
        (
            json!({"url": "http://x", "headers": {"bad name": "v"}}),
            "invalid header name",
        ),
        (json!({"url": "http://x/${"}), "template"),
    ]);
}

#[test]
fn statuses_are_classified_once() {
    assert_eq!(answer("u", StatusCode::OK), Outcome::Delivered);
    assert_eq!(answer("u", StatusCode::NO_CONTENT), Outcome::Delivered);
    // 429 and 5xx: later; other 4xx: never.
    for (status, later) in [
        (StatusCode::TOO_MANY_REQUESTS, true),
        (StatusCode::SERVICE_UNAVAILABLE, true),
        (StatusCode::INTERNAL_SERVER_ERROR, true),
        (StatusCode::BAD_REQUEST, false),
        (StatusCode::NOT_FOUND, false),
        (StatusCode::FORBIDDEN, false),
    ] {
        match answer("u", status) {
            Outcome::Retry(f) if later => assert_eq!(f.reason, Reason::HttpStatus),
            Outcome::DeadLetter(f) if !later => assert_eq!(f.reason, Reason::HttpStatus),
            other => panic!("{status}: {other:?}"),
        }
    }
}
