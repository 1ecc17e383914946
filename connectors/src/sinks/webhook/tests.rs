use serde_json::json;
use weir_engine::template::TemplateExprs;

use super::*;
use crate::sink::SinkConfig;

fn config(v: serde_json::Value) -> WebhookConfig {
    serde_json::from_value(v).expect("parses")
}

#[test]
fn urls_headers_and_timeouts_are_checked_once() {
    let mut exprs = TemplateExprs::default();
    let v = config(json!({
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
    for (body, needle) in [
        (json!({"url": "ftp://x"}), "must start with http://"),
        (json!({"url": "http://"}), "invalid url"),
        (json!({"url": "http://x", "timeout": "0s"}), "more than 0"),
        (
            json!({"url": "http://x", "headers": {"bad name": "v"}}),
            "invalid header name",
        ),
        (json!({"url": "http://x/${"}), "template"),
    ] {
        let err = config(body)
            .validate(&mut TemplateExprs::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err} should mention {needle}");
    }
}

#[test]
fn statuses_are_classified_once() {
    assert_eq!(answer("u", StatusCode::OK), Outcome::Delivered);
    assert_eq!(answer("u", StatusCode::NO_CONTENT), Outcome::Delivered);
    for retry in [
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::INTERNAL_SERVER_ERROR,
    ] {
        assert!(
            matches!(answer("u", retry), Outcome::Retry(f) if f.reason == Reason::HttpStatus),
            "{retry}"
        );
    }
    for refused in [
        StatusCode::BAD_REQUEST,
        StatusCode::NOT_FOUND,
        StatusCode::FORBIDDEN,
    ] {
        assert!(
            matches!(answer("u", refused), Outcome::DeadLetter(f) if f.reason == Reason::HttpStatus),
            "{refused}"
        );
    }
}
