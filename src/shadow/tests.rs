//! The golden cases (`golden.json`: AWS's documented examples and weir's choices;
//! `golden_moto.json`: moto's tests that were run against AWS): each case a sequence of
//! requests at given times, each request's answers compared whole.

use serde_json::{Value, json};

use super::document::{self, Limits, Record};
use super::request;

/// One request's answers: the topic's last level and the message.
fn run_step(
    stored: &mut Option<Record>,
    step: &Value,
    limits: Limits,
) -> Vec<(&'static str, Value)> {
    let now = step["at"].as_u64().expect("every step has its time");
    let payload = |v: &Value| match v {
        Value::String(s) => s.clone().into_bytes(),
        v => v.to_string().into_bytes(),
    };
    let shown = "simShadow1";
    let result = if let Some(p) = step.get("update") {
        let p = payload(p);
        request::parse_update(&p)
            .and_then(|req| document::update(stored.as_ref(), &req, now, limits))
            .map(|u| {
                *stored = Some(u.record);
                let mut out = vec![("accepted", u.accepted)];
                out.extend(u.delta.map(|d| ("delta", d)));
                out.push(("documents", u.documents));
                out
            })
            .map_err(|e| (e, request::token_of(&p)))
    } else if let Some(p) = step.get("get") {
        let p = payload(p);
        request::parse_plain(&p)
            .and_then(|t| document::get(stored.as_ref(), shown, now, t.as_deref()))
            .map(|doc| vec![("accepted", doc)])
            .map_err(|e| (e, request::token_of(&p)))
    } else if let Some(p) = step.get("delete") {
        let token = request::parse_plain(&payload(p)).ok().flatten();
        document::delete(stored.as_ref(), shown, now, token.as_deref())
            .map(|(tombstone, accepted)| {
                *stored = Some(tombstone);
                vec![("accepted", accepted)]
            })
            .map_err(|e| (e, token))
    } else {
        panic!("a step is an update, a get or a delete: {step}")
    };
    result.unwrap_or_else(|(e, token)| {
        vec![("rejected", document::rejected(&e, now, token.as_deref()))]
    })
}

fn run_file(text: &str) -> usize {
    let cases: Vec<Value> = serde_json::from_str(text).expect("the golden file is JSON");
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["case"].as_str().unwrap_or("?");
        let limits = Limits {
            max_bytes: case["limit"].as_u64().map_or(8192, |n| n as usize),
        };
        let mut stored: Option<Record> = case
            .get("given")
            .map(|g| serde_json::from_value(g.clone()).expect("a given record reads"));
        for (i, step) in case["steps"].as_array().unwrap().iter().enumerate() {
            let answers = run_step(&mut stored, step, limits);
            let got = |k: &str| answers.iter().find(|(a, _)| *a == k).map(|(_, v)| v);
            let mut check = |what: &str, expected: &Value, actual: Option<&Value>| {
                let same = match (expected, actual) {
                    (Value::Null, None) => true,
                    (e, Some(a)) => e == a,
                    _ => false,
                };
                if !same {
                    failures.push(format!(
                        "{name}, step {i}, {what}:\n  expected {expected}\n  got      {}",
                        actual.map_or("nothing".to_owned(), Value::to_string)
                    ));
                }
            };
            for key in ["accepted", "delta", "documents", "rejected"] {
                if let Some(expected) = step.get(key) {
                    check(key, expected, got(key));
                }
            }
            if step.get("rejected").is_none() && got("rejected").is_some() {
                check("rejected", &json!("no rejection"), got("rejected"));
            }
            if let Some(expected) = step.get("version") {
                check(
                    "version",
                    expected,
                    got("accepted").and_then(|a| a.get("version")),
                );
            }
            if let Some(expected) = step.get("state") {
                check(
                    "state",
                    expected,
                    got("accepted").and_then(|a| a.get("state")),
                );
            }
            if let Some(expected) = step.get("token") {
                check(
                    "clientToken",
                    expected,
                    got("accepted").and_then(|a| a.get("clientToken")),
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    cases.len()
}

#[test]
fn golden_cases_from_aws_documentation() {
    assert!(run_file(include_str!("golden.json")) >= 10);
}

#[test]
fn golden_cases_from_moto_run_against_aws() {
    assert_eq!(run_file(include_str!("golden_moto.json")), 14);
}

#[test]
fn a_tombstone_keeps_its_version_for_48_hours() {
    let t = Record {
        version: 7,
        deleted_at: Some(1000),
        ..Record::default()
    };
    assert!(!t.expired(1000 + document::TOMBSTONE_SECS - 1));
    assert!(t.expired(1000 + document::TOMBSTONE_SECS));
    let req = request::parse_update(br#"{"state": {"desired": {"a": 1}}}"#).unwrap();
    let limits = Limits { max_bytes: 8192 };
    let u = document::update(Some(&t), &req, 2000, limits).unwrap();
    assert_eq!(u.record.version, 8);
    assert_eq!(u.documents["previous"], Value::Null);
}

#[test]
fn numbers_compare_by_value_and_arrays_in_order() {
    use document::same;
    assert!(same(&json!(1), &json!(1.0)));
    assert!(same(&json!({"a": [1, 2.5]}), &json!({"a": [1.0, 2.5]})));
    assert!(!same(&json!([1, 2]), &json!([2, 1])));
    assert!(!same(&json!(u64::MAX), &json!(-1)));
    assert!(!same(&json!("1"), &json!(1)));
}
