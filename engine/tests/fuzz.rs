//! Fuzz targets for what analysts and devices send the engine: rule SQL (token soup and
//! generated expression trees), payloads (random JSON and random bytes) and `${...}`
//! templates. Each target generates inputs for `FUZZ_SECONDS` seconds (1 by default, so
//! that the test suite runs them briefly) and checks that compiling and evaluating never
//! panics and that every message of a batch is accounted for (an output, a failure or
//! filtered out); the rule targets also run each rule within a small memory budget and
//! check that it gives the same results, or fails messages for the budget. A failing
//! input is printed; keep it as a regression case below.
//!
//! Longer runs (see docs/security.md):
//! `FUZZ_SECONDS=300 cargo test --release --workspace --test fuzz -- --nocapture`

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use weir_engine::template::{Template, TemplateExprs};
use weir_engine::{Engine, FailureReason, Message, Outcome, Rule, memory};

/// The memory budgets of the rule targets are metered by the counting allocator.
#[global_allocator]
static ALLOCATOR: memory::Counting<std::alloc::System> = memory::Counting::new(std::alloc::System);

/// How long each target runs.
fn budget() -> Duration {
    let secs = std::env::var("FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs)
}

/// Runs `check` on inputs from `strategy` until the budget is spent; panics with the
/// input that made `check` panic or fail.
fn fuzz<S: Strategy>(name: &str, strategy: S, check: impl Fn(&S::Value) -> Result<(), String>)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::default();
    let deadline = Instant::now() + budget();
    let mut cases = 0u64;
    while Instant::now() < deadline {
        let input = strategy
            .new_tree(&mut runner)
            .expect("the strategy generates")
            .current();
        match std::panic::catch_unwind(AssertUnwindSafe(|| check(&input))) {
            Ok(Ok(())) => {}
            Ok(Err(why)) => panic!("{name}: {why}\ninput: {input:#?}"),
            Err(_) => panic!("{name}: panicked on\ninput: {input:#?}"),
        }
        cases += 1;
    }
    eprintln!("{name}: {cases} inputs in {:?}", budget());
}

/// Compiles `sql` (with `templates`); if it compiles, evaluates it on `payloads` and
/// checks that every message is accounted for.
fn compile_and_run(
    engine: &Arc<Engine>,
    sql: &str,
    templates: &[String],
    payloads: &[Vec<u8>],
) -> Result<(), String> {
    let Ok(rule) = Rule::compile(engine, sql, templates) else {
        return Ok(());
    };
    let msgs: Vec<Message> = payloads
        .iter()
        .map(|p| Message::new("plant/p1/metrics", p.clone()).with_client_id("dev-1"))
        .collect();
    let out = rule.process(&msgs);
    accounted(&out, msgs.len(), templates.len())?;
    // Again within a small memory budget, as the pipeline runs rules: the metered paths
    // (row by row, halves) give the same results, or fail messages with memory_budget.
    let scope = memory::Scope::enter(1 << 20);
    let budgeted = rule.process(&msgs);
    drop(scope);
    accounted(&budgeted, msgs.len(), templates.len())?;
    let lower = format!("{sql} {}", templates.join(" ")).to_ascii_lowercase();
    let volatile = ["timestamp", "newuuid", "traceid"]
        .iter()
        .any(|f| lower.contains(f));
    let over = budgeted
        .failures
        .iter()
        .any(|f| f.reason == FailureReason::MemoryBudget);
    if !volatile && !over {
        let failed = |o: &Outcome| -> Vec<(usize, FailureReason)> {
            o.failures.iter().map(|f| (f.index, f.reason)).collect()
        };
        if budgeted.outputs != out.outputs || failed(&budgeted) != failed(&out) {
            return Err(format!(
                "within a budget: {:?} / {:?}, without: {:?} / {:?}",
                budgeted.outputs, budgeted.failures, out.outputs, out.failures
            ));
        }
    }
    Ok(())
}

/// Every message is an output, a failure or filtered out, and outputs carry every
/// template value.
fn accounted(out: &Outcome, messages: usize, templates: usize) -> Result<(), String> {
    let seen = out.outputs.len() + out.failures.len() + out.filtered_out;
    if seen != messages {
        return Err(format!(
            "{messages} messages, but {} outputs, {} failures, {} filtered",
            out.outputs.len(),
            out.failures.len(),
            out.filtered_out
        ));
    }
    if out.outputs.iter().any(|o| o.params.len() != templates) {
        return Err("an output lacks template values".to_owned());
    }
    Ok(())
}

const FUNCTIONS: &[&str] = &[
    "abs",
    "substring",
    "lower",
    "upper",
    "concat",
    "get",
    "topic",
    "clientid",
    "timestamp",
    "encode",
    "decode",
    "md5",
    "sha256",
    "cast",
    "isNull",
    "isUndefined",
    "length",
    "indexof",
    "startswith",
    "regexp_replace",
    "regexp_matches",
    "parse_time",
    "time_to_epoch",
    "mod",
    "repeat",
    "lpad",
    "rpad",
    "range",
    "generate_series",
    "array_repeat",
    "array_resize",
    "array_to_string",
    "array_replace_all",
    "transform",
    "get_or_default",
    "nanvl",
    "bitand",
    "power",
    "round",
    "replace",
    "get_mqtt_property",
    "get_user_properties",
    "newuuid",
    "traceid",
    "coalesce",
    "make_array",
];

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "SELECT", "FROM", "WHERE", "AS", "AND", "OR", "NOT", "CASE", "WHEN", "THEN",
            "ELSE", "END", "SET", "VALUE", "IN", "IS", "NULL", "TRUE", "FALSE", "*", ",", "(",
            ")", "[", "]", ".", "+", "-", "/", "%", "=", "<>", "<", ">=", "||", "'t/#'",
            "'plant/+/metrics'", "@v", "a", "b", "c", "a.b", "a[0]", "temp", "Int", "String",
            "Decimal", "Boolean", "'x'", "''", "0", "-1", "2000000000", "1e308", "0.5",
        ]).prop_map(str::to_owned),
        2 => prop::sample::select(FUNCTIONS.to_vec()).prop_map(|f| format!("{f}(")),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => "[^']{0,12}".prop_map(|s| format!("'{s}'")),
        1 => "\\PC{0,6}",
    ]
}

/// SQL of random tokens, most starting as a rule does.
fn token_soup() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(token(), 1..30)).prop_map(|(prefix, tokens)| {
        let body = tokens.join(" ");
        if prefix {
            format!("SELECT {body} FROM 'plant/+/metrics'")
        } else {
            body
        }
    })
}

/// A random, mostly well-formed expression.
fn expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        prop::sample::select(vec![
            "a",
            "b",
            "c",
            "a.b",
            "a.b.c",
            "a[0]",
            "a[1].b",
            "temp",
            "topic()",
            "topic(2)",
            "clientid()",
            "timestamp()",
            "NULL",
            "TRUE",
            "'x'",
            "'2024-01-01T00:00:00Z'",
            "0",
            "1",
            "-1",
            "2000000000",
            "0.1",
            "1e300",
            "*",
        ])
        .prop_map(str::to_owned),
        any::<i32>().prop_map(|n| n.to_string()),
        "[a-z ]{0,8}".prop_map(|s| format!("'{s}'")),
    ];
    leaf.prop_recursive(5, 48, 4, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop::sample::select(vec![
                    "+", "-", "*", "/", "%", "=", "<>", "<", ">", "AND", "OR", "||"
                ]),
                inner.clone()
            )
                .prop_map(|(l, op, r)| format!("({l} {op} {r})")),
            (
                prop::sample::select(FUNCTIONS.to_vec()),
                prop::collection::vec(inner.clone(), 0..4)
            )
                .prop_map(|(f, args)| format!("{f}({})", args.join(", "))),
            (
                inner.clone(),
                prop::sample::select(vec!["Int", "String", "Decimal", "Boolean"])
            )
                .prop_map(|(e, t)| format!("cast({e} AS {t})")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(c, t, e)| format!("CASE WHEN {c} THEN {t} ELSE {e} END")),
            inner.clone().prop_map(|e| format!("NOT {e}")),
            prop::collection::vec(inner, 0..3).prop_map(|v| format!("[{}]", v.join(", "))),
        ]
    })
}

/// A rule built from generated expressions.
fn rule_sql() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(expr(), 1..4),
        prop::option::of(expr()),
        prop::option::of(expr()),
    )
        .prop_map(|(cols, cond, var)| {
            let set = var.map(|v| format!("SET @v = {v} ")).unwrap_or_default();
            let cols: Vec<String> = cols
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c} AS c{i}"))
                .collect();
            let cond = cond.map(|c| format!(" WHERE {c}")).unwrap_or_default();
            format!(
                "{set}SELECT {} FROM 'plant/+/metrics'{cond}",
                cols.join(", ")
            )
        })
}

/// A JSON value of a payload: nested objects and arrays of every JSON type.
fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec!["a", "b", "c", "temp", "x"]).prop_map(str::to_owned),
                inner,
                0..5
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Payloads: JSON documents, mostly objects, and some random bytes.
fn payloads() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(
        prop_oneof![
            4 => json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            1 => prop::collection::vec(any::<u8>(), 0..40),
        ],
        1..6,
    )
}

#[test]
fn dialect_token_soup() {
    let engine = Engine::new();
    fuzz("dialect_token_soup", token_soup(), |sql| {
        compile_and_run(&engine, sql, &[], &[br#"{"a": 1, "temp": 90}"#.to_vec()])
    });
}

#[test]
fn dialect_generated_rules() {
    let engine = Engine::new();
    fuzz(
        "dialect_generated_rules",
        (rule_sql(), payloads()),
        |(sql, payloads)| compile_and_run(&engine, sql, &[], payloads),
    );
}

#[test]
fn payload_decoder() {
    let engine = Engine::new();
    let rules = [
        "SELECT * FROM 't'",
        "SELECT a, b.c AS bc, temp * 2 AS t FROM 't' WHERE temp > 1",
        "SELECT a[1] AS first, get(b, 'c') AS g, encode(*, 'base64') AS raw FROM 't'",
        "SELECT VALUE a FROM 't'",
        "SELECT (SELECT x FROM a) AS xs FROM 't'",
        "SELECT *, topic() AS t FROM 't'",
    ];
    let compiled: Vec<Rule> = rules
        .iter()
        .map(|sql| Rule::compile(&engine, sql, &[]).unwrap())
        .collect();
    fuzz("payload_decoder", payloads(), |payloads| {
        let msgs: Vec<Message> = payloads
            .iter()
            .map(|p| Message::new("t", p.clone()))
            .collect();
        for (sql, rule) in rules.iter().zip(&compiled) {
            let out = rule.process(&msgs);
            let seen = out.outputs.len() + out.failures.len() + out.filtered_out;
            if seen != msgs.len() {
                return Err(format!(
                    "{sql}: {} messages, {seen} accounted for",
                    msgs.len()
                ));
            }
        }
        Ok(())
    });
}

#[test]
fn templates() {
    let engine = Engine::new();
    let template = prop::collection::vec(
        prop_oneof![
            expr().prop_map(|e| format!("${{{e}}}")),
            Just("${".to_owned()),
            Just("}".to_owned()),
            Just("$".to_owned()),
            "[a-z/]{0,6}",
        ],
        0..5,
    )
    .prop_map(|parts| parts.concat());
    fuzz("templates", (template, payloads()), |(source, payloads)| {
        let mut exprs = TemplateExprs::default();
        if Template::parse(source, &mut exprs).is_err() {
            return Ok(());
        }
        let templates = exprs.as_slice().to_vec();
        compile_and_run(
            &engine,
            "SELECT a FROM 'plant/+/metrics'",
            &templates,
            payloads,
        )
    });
}
