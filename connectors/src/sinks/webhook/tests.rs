use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use weir_engine::template::TemplateExprs;

use super::sink::answer;
use super::*;
use crate::delivery::testing::{assert_refused, parse};
use crate::delivery::{Outcome, Reason, SinkConfig};

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

#[test]
fn the_policy_keeps_literal_urls_off_metadata_services_and_weir() {
    use crate::delivery::testing::{assert_allowed, assert_not_allowed, default_policy};
    let p = default_policy();
    assert_not_allowed::<WebhookConfig>(
        &p,
        vec![
            (
                json!({"url": "http://169.254.169.254/latest/meta-data/"}),
                "address 169.254.169.254 is link-local (where cloud metadata services answer); the operator setting allow_link_local (--allow-link-local) would allow it",
            ),
            (json!({"url": "http://[fe80::1]:8000/"}), "link-local"),
            (
                json!({"url": "http://2852039166/"}),
                "169.254.169.254 is link-local",
            ),
            (
                json!({"url": "http://127.0.0.1:8080/v1/rules"}),
                "127.0.0.1:8080 is weir's own listener; the operator setting allow_weir_listeners (--allow-weir-listeners) would allow it",
            ),
            (
                json!({"url": "http://localhost:8080/v1/tokens"}),
                "weir's own listener",
            ),
        ],
    );
    assert_allowed::<WebhookConfig>(
        &p,
        vec![
            json!({"url": "http://127.0.0.1:9000/hook"}),
            json!({"url": "https://hooks.example.com/x"}),
            // Checked when each output's URL is rendered instead.
            json!({"url": "http://${topic(1)}/x"}),
        ],
    );
}
