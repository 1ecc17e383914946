//! The rule's unit tests: outputs, failures, templates, and the fast decoding path
//! checked against the general one.

use super::*;

/// The walkthrough rule, as shipped.
const SEED: &str = include_str!("../../../queries/high_temperature.sql");

fn json(b: &Bytes) -> Value {
    serde_json::from_slice(b).unwrap()
}

fn msg(payload: &str) -> Message {
    Message::new(
        "enterprise/facilities/plant-01/metrics",
        payload.as_bytes().to_vec(),
    )
    .with_client_id("dev-7")
}

#[test]
fn seed_rule_transforms_and_filters() {
    let rule = Rule::compile(&Engine::new(), SEED, &[]).unwrap();
    let msgs = [
        msg(
            r#"{"currentAmbientTemperature": 90.5, "geoCoordinates": {"latitude": 52.1, "longitude": 4.3}}"#,
        ),
        msg(
            r#"{"currentAmbientTemperature": 20.0, "geoCoordinates": {"latitude": 1, "longitude": 2}}"#,
        ),
        msg(r#"{"currentAmbientTemperature": 100}"#),
    ];
    let out = rule.process(&msgs);
    assert_eq!(out.failures, []);
    assert_eq!(out.filtered_out, 1);
    assert_eq!(out.outputs.len(), 2);
    let first = json(&out.outputs[0].payload);
    assert_eq!(first["deviceIdentifier"], "dev-7");
    assert_eq!(first["celsiusReading"], 90.5);
    assert!((first["fahrenheitReading"].as_f64().unwrap() - 194.9).abs() < 1e-9);
    assert_eq!(first["lat"], 52.1);
    assert_eq!(first["lon"], 4.3);
    // Missing fields are undefined and left out.
    let third = json(&out.outputs[1].payload);
    assert_eq!(out.outputs[1].index, 2);
    assert_eq!(third.as_object().unwrap().len(), 3, "{third}");
    // Batched with 90.5, the integer 100 stays an integer (AWS's Int), and the whole
    // Decimal 212.0 is written as an Int, as 2016-03-23 does.
    assert_eq!(
        out.outputs[1].payload.slice(..).as_ref(),
        &br#"{"deviceIdentifier":"dev-7","celsiusReading":100,"fahrenheitReading":212}"#[..]
    );
    assert_eq!(third["celsiusReading"], 100);
}

#[test]
fn bad_messages_fail_alone() {
    let rule = Rule::compile(&Engine::new(), SEED, &[]).unwrap();
    let msgs = [
        msg(r#"{"currentAmbientTemperature": 90}"#),
        msg("not json"),
        msg(r#"{"currentAmbientTemperature": 91, "geoCoordinates": "north"}"#),
        msg("[1]"),
        // A string that is not a number makes the comparison undefined: filtered out.
        msg(r#"{"currentAmbientTemperature": "hot"}"#),
        msg(r#"{"currentAmbientTemperature": 92}"#),
    ];
    let out = rule.process(&msgs);
    let passed: Vec<usize> = out.outputs.iter().map(|o| o.index).collect();
    assert_eq!(passed, [0, 5]);
    let failed: Vec<(usize, &str)> = out
        .failures
        .iter()
        .map(|f| (f.index, f.reason.as_str()))
        .collect();
    assert_eq!(
        failed,
        [
            (1, "invalid_json"),
            (2, "type_mismatch"),
            (3, "not_an_object"),
        ]
    );
}

#[test]
fn star_keeps_the_payload_and_appends_columns() {
    let e = Engine::new();
    let rule = Rule::compile(&e, "SELECT * FROM 'a/b'", &[]).unwrap();
    let out = rule.process(&[Message::new("a/b", &b" {\"x\": [1, {\"y\": 2}]} "[..])]);
    assert_eq!(
        json(&out.outputs[0].payload),
        serde_json::json!({"x": [1, {"y": 2}]})
    );
    let rule = Rule::compile(&e, "SELECT *, 15 AS speed FROM 'a/b' WHERE t > 1", &[]).unwrap();
    let out = rule.process(&[
        Message::new("a/b", &br#"{"color": "red", "t": 50}"#[..]),
        Message::new("a/b", &br#"{"t": 0}"#[..]),
    ]);
    assert_eq!(out.outputs.len(), 1);
    assert_eq!(
        json(&out.outputs[0].payload),
        serde_json::json!({"color": "red", "t": 50, "speed": 15})
    );
}

#[test]
fn nested_objects_come_out_nested() {
    let rule = Rule::compile(&Engine::new(), "SELECT g, g.a.b AS deep FROM '#'", &[]).unwrap();
    let out = rule.process(&[Message::new(
        "x",
        &br#"{"g": {"a": {"b": 1}, "c": "s"}}"#[..],
    )]);
    assert_eq!(
        json(&out.outputs[0].payload),
        serde_json::json!({"g": {"a": {"b": 1}, "c": "s"}, "deep": 1})
    );
}

#[test]
fn templates_are_evaluated_per_message() {
    let exprs = vec![
        "topic(3)".to_owned(),
        "clientid()".to_owned(),
        "v * 2".to_owned(),
    ];
    let rule = Rule::compile(&Engine::new(), "SELECT v FROM 'a/+/+'", &exprs).unwrap();
    let out = rule.process(&[
        Message::new("a/b/c", &br#"{"v": 2}"#[..]).with_client_id("me"),
        Message::new("a/b/d", &br#"{}"#[..]),
    ]);
    assert_eq!(
        out.outputs[0].params,
        [Some("c".into()), Some("me".into()), Some("4".into())]
    );
    assert_eq!(out.outputs[1].params, [Some("d".into()), None, None]);
}

#[test]
fn templates_write_whole_decimals_as_the_sql_version_says() {
    let exprs = vec!["v * 2".to_owned(), "v + 0.25".to_owned()];
    let params = |version| {
        let rule = Rule::compile_for(&Engine::new(), version, "SELECT v FROM 'a'", &exprs).unwrap();
        rule.process(&[Message::new("a", &br#"{"v": 2.5}"#[..])])
            .outputs[0]
            .params
            .clone()
    };
    assert_eq!(
        params(SqlVersion::V2016_03_23),
        [Some("5".into()), Some("2.75".into())]
    );
    assert_eq!(
        params(SqlVersion::V2015_10_08),
        [Some("5.0".into()), Some("2.75".into())]
    );
}

#[test]
fn templates_may_use_set_variables() {
    let exprs = vec!["@level".to_owned(), "@geo.lat".to_owned()];
    let rule = Rule::compile(
        &Engine::new(),
        "SET @level = CASE WHEN t > 50 THEN 'high' ELSE 'low' END, @geo = g SELECT t FROM 'a'",
        &exprs,
    )
    .unwrap();
    let out = rule.process(&[Message::new("a", &br#"{"t": 60, "g": {"lat": 1.5}}"#[..])]);
    assert_eq!(
        out.outputs[0].params,
        [Some("high".into()), Some("1.5".into())]
    );
    let err = Rule::compile(&Engine::new(), "SELECT t FROM 'a'", &exprs).unwrap_err();
    assert!(err.message.contains("unknown variable @level"), "{err}");
}

#[test]
fn trace_ids_name_the_message_across_rules() {
    let e = Engine::new();
    let a = Rule::compile(&e, "SELECT traceid() AS t FROM 'a'", &[]).unwrap();
    let b = Rule::compile(&e, "SELECT v FROM 'a'", &["traceid()".to_owned()]).unwrap();
    let msgs = [
        Message::new("a", &br#"{"v": 1}"#[..]),
        Message::new("a", &br#"{"v": 2}"#[..]),
    ];
    let (out_a, out_b) = (a.process(&msgs), b.process(&msgs));
    let ids: Vec<String> = out_a
        .outputs
        .iter()
        .map(|o| json(&o.payload)["t"].as_str().unwrap().to_owned())
        .collect();
    assert_ne!(ids[0], ids[1]);
    assert_eq!(ids[0].len(), 36);
    assert_eq!(&ids[0][14..15], "4", "{}", ids[0]);
    assert_eq!(out_b.outputs[0].params[0].as_deref(), Some(ids[0].as_str()));
    assert_eq!(out_b.outputs[1].params[0].as_deref(), Some(ids[1].as_str()));
}

#[test]
fn evaluation_errors_fail_the_message() {
    let rule = Rule::compile(&Engine::new(), "SELECT 10 / d AS q FROM 'a'", &[]).unwrap();
    let out = rule.process(&[
        Message::new("a", &br#"{"d": 2}"#[..]),
        Message::new("a", &br#"{"d": 0}"#[..]),
    ]);
    assert_eq!(out.outputs.len(), 1);
    assert_eq!(json(&out.outputs[0].payload), serde_json::json!({"q": 5}));
    assert_eq!(out.failures[0].index, 1);
    assert_eq!(out.failures[0].reason, FailureReason::Evaluation);
    assert!(
        out.failures[0].message.contains("Divide by zero"),
        "{:?}",
        out.failures
    );
}

#[test]
fn compile_errors() {
    let e = Engine::new();
    let err = Rule::compile(&e, "SELECT a FROM 'x' WHERE 1 + 1", &[]).unwrap_err();
    assert!(err.message.contains("WHERE must be a condition"), "{err}");
    let err = Rule::compile(&e, "SELECT a FROM 'x'", &["nosuch(1)".to_owned()]).unwrap_err();
    assert!(err.message.contains("template expression"), "{err}");
}

#[test]
fn scalar_batches_take_the_fast_path_and_others_do_not() {
    let rule = Rule::compile(&Engine::new(), SEED, &[]).unwrap();
    let shape = rule.shape.as_ref().expect("the seed rule has a fast path");
    let fast = |payloads: &[&str]| {
        shape
            .decode(payloads.iter().map(|p| p.as_bytes()))
            .is_some()
    };
    assert!(fast(&[
        r#"{"currentAmbientTemperature": 90.5, "geoCoordinates": {"latitude": 52.1}, "x": [1]}"#,
        r#"{"currentAmbientTemperature": null, "geoCoordinates": null}"#,
        r#"{"other": {"deep": [1, {"a": "b"}]}}"#,
    ]));
    // An Int after a Decimal, a string after a number, an object where a scalar is
    // read, a scalar where an object is read into, a duplicate key, bad JSON.
    assert!(!fast(&[
        r#"{"currentAmbientTemperature": 90.5}"#,
        r#"{"currentAmbientTemperature": 90}"#
    ]));
    assert!(!fast(&[
        r#"{"currentAmbientTemperature": 90.5}"#,
        r#"{"currentAmbientTemperature": "hot"}"#
    ]));
    assert!(!fast(&[r#"{"currentAmbientTemperature": {"c": 1}}"#]));
    assert!(!fast(&[r#"{"geoCoordinates": 5}"#]));
    assert!(!fast(&[
        r#"{"currentAmbientTemperature": 1, "currentAmbientTemperature": 2}"#
    ]));
    assert!(!fast(&[r#"{"currentAmbientTemperature": 1"#]));
    assert!(!fast(&["[1]"]));
    // A rule that reads the whole payload never does.
    let star = Rule::compile(&Engine::new(), "SELECT * FROM 't'", &[]).unwrap();
    assert!(star.shape.is_none());
}

mod fast_path {
    use super::*;
    use proptest::prelude::*;

    fn scalar() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            (-5i64..5).prop_map(|i| i.to_string()),
            (-50i64..50).prop_map(|i| format!("{}.5", i)),
            Just("\"a\"".to_owned()),
            Just("\"b\\\"c\"".to_owned()),
            Just("18446744073709551615".to_owned()),
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => scalar(),
            1 => prop::collection::vec(scalar(), 0..3).prop_map(|v| format!("[{}]", v.join(","))),
            2 => prop::collection::vec((prop_oneof![Just("x"), Just("y"), Just("z")], scalar()), 0..3)
                .prop_map(|kv| {
                    let members: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", members.join(","))
                }),
        ]
    }

    fn payload() -> impl Strategy<Value = String> {
        prop_oneof![
            20 => prop::collection::vec((prop_oneof![Just("a"), Just("b"), Just("g"), Just("o")], value()), 0..5)
                .prop_map(|kv| {
                    let members: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", members.join(","))
                }),
            1 => Just("not json".to_owned()),
            1 => Just("[1]".to_owned()),
        ]
    }

    /// Batches that agree on their types, so that most of them take the fast path.
    fn uniform() -> impl Strategy<Value = Vec<String>> {
        (scalar(), scalar(), 1usize..6).prop_map(|(a, x, n)| {
            (0..n)
                .map(|i| match i % 3 {
                    0 => format!(r#"{{"a": {a}, "g": {{"x": {x}, "y": 1}}, "o": [1]}}"#),
                    1 => format!(r#"{{"b": "s{i}", "g": null}}"#),
                    _ => format!(r#"{{"a": null, "g": {{"x": {x}}}}}"#),
                })
                .collect()
        })
    }

    const RULES: [&str; 6] = [
        "SELECT a, b, g.x AS x FROM 't'",
        "SELECT a + 1 AS n, g.x AS x, g.y AS y FROM 't' WHERE g.x <> 0 OR a > 0",
        "SELECT isUndefined(a) AS u, isNull(g.x) AS n, g.x FROM 't'",
        "SELECT VALUE g.x FROM 't' WHERE NOT isUndefined(g.x)",
        "SELECT g, a FROM 't'",
        "SELECT *, a AS aa FROM 't'",
    ];

    fn check(payloads: &[String]) -> Result<(), TestCaseError> {
        let msgs: Vec<Message> = payloads
            .iter()
            .map(|p| Message::new("t", p.as_bytes().to_vec()))
            .collect();
        for sql in RULES {
            let rule = Rule::compile(&Engine::new(), sql, &[]).unwrap();
            prop_assert_eq!(rule.process(&msgs), rule.process_general(&msgs), "{}", sql);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn agrees_with_the_general_path(payloads in prop::collection::vec(payload(), 1..6)) {
            check(&payloads)?;
        }

        #[test]
        fn agrees_on_uniform_batches(payloads in uniform()) {
            check(&payloads)?;
        }
    }
}

/// What once exhausted a thread's stack or the memory is refused with a message saying
/// why: a sum of 100,000 terms, one of 20,000 (deep, under the text limit), parentheses
/// nested 100,000 deep, a variable doubled 30 times. What is within the limits compiles.
#[test]
fn rules_that_would_exhaust_the_stack_or_the_memory_are_refused() {
    let e = Engine::new();
    let sum = |n: usize| format!("SELECT {} AS x FROM 't'", vec!["1"; n].join("+"));
    let err = Rule::compile(&e, &sum(100_000), &[]).unwrap_err();
    assert!(err.message.contains("bytes; at most 65536"), "{err}");
    let err = Rule::compile(&e, &sum(20_000), &[]).unwrap_err();
    assert!(err.message.contains("levels deep; at most 128"), "{err}");
    assert!(Rule::compile(&e, &sum(100), &[]).is_ok());
    let parens = format!(
        "SELECT {}1{} AS x FROM 't'",
        "(".repeat(30_000),
        ")".repeat(30_000)
    );
    let err = Rule::compile(&e, &parens, &[]).unwrap_err();
    assert!(err.message.contains("nests too deeply"), "{err}");
    let mut set = "SET @v0 = a".to_owned();
    for i in 1..=30 {
        set.push_str(&format!(", @v{i} = @v{} + @v{}", i - 1, i - 1));
    }
    let err = Rule::compile(&e, &format!("{set} SELECT @v30 AS x FROM 't'"), &[]).unwrap_err();
    assert!(
        err.message
            .contains("parts once its variables are substituted"),
        "{err}"
    );
    // A template expression is held to the same limits.
    let deep = vec!["1"; 200].join("+");
    let err = Rule::compile(&e, "SELECT a FROM 't'", &[deep]).unwrap_err();
    assert!(err.message.contains("levels deep"), "{err}");
}

/// Functions whose output a count argument sizes refuse, per message, to build a value
/// over the limits, before allocating it: the message fails, naming the function and the
/// limit, and the others of the batch are unaffected. Before, one message to
/// `repeat('x', 2000000000)` took 2 GiB.
#[test]
fn functions_sized_by_a_count_are_bounded() {
    let e = Engine::new();
    let cases = [
        (
            "repeat(s, n)",
            "repeat() would build a value of 2000000000 bytes; at most 1048576",
        ),
        (
            "lpad(s, n, ' ')",
            "lpad() would build a value of 2000000000 characters",
        ),
        (
            "rpad(s, n, 'y')",
            "rpad() would build a value of 2000000000 characters",
        ),
        (
            "array_repeat(s, n)",
            "array_repeat() would build a value of 2000000000 elements",
        ),
        (
            "array_resize(make_array(1), n)",
            "array_resize() would build a value of 2000000000 elements; at most 100000",
        ),
        (
            "range(n)",
            "range() would build a value of 2000000000 elements",
        ),
        (
            "generate_series(1, n)",
            "generate_series() would build a value of 2000000000 elements",
        ),
        (
            "array_repeat(array_repeat(1, 1000), n / 1000000)",
            "would build a value of 2000000 elements",
        ),
        (
            "array_repeat(repeat(s, 1000), n / 1000000)",
            "would build a value of 2000000 bytes",
        ),
        // A fill value that is itself a list counts its elements too.
        (
            "array_resize(make_array(make_array(1)), n / 20000, range(0, 100000))",
            "would build a value of 10000000000 elements",
        ),
        // A negative length made DataFusion's pads panic (found by fuzzing).
        (
            "lpad(s, 3 - n, ' ')",
            "lpad() takes a length of at least 0, got -1999999997",
        ),
        (
            "rpad(s, -n / 1000000000, ' ')",
            "rpad() takes a length of at least 0, got -2",
        ),
    ];
    for (expr, needle) in cases {
        let sql = format!("SELECT {expr} AS v FROM 't'");
        let rule = Rule::compile(&e, &sql, &[]).unwrap_or_else(|err| panic!("{sql}: {err}"));
        let out = rule.process(&[
            Message::new("t", &br#"{"s": "x", "n": 2000000000}"#[..]),
            Message::new("t", &br#"{"s": "x", "n": 3}"#[..]),
        ]);
        assert_eq!(out.outputs.len(), 1, "{sql}: {:?}", out.failures);
        assert_eq!(out.failures.len(), 1, "{sql}");
        assert_eq!(out.failures[0].index, 0);
        assert_eq!(out.failures[0].reason, FailureReason::Evaluation);
        assert!(
            out.failures[0].message.contains(needle),
            "{sql}: {:?}",
            out.failures
        );
    }
    // Within the limits they work as DataFusion's.
    let rule = Rule::compile(
        &e,
        "SELECT repeat('ab', 3) AS r, lpad('7', 3, '0') AS p, range(3) AS g FROM 't'",
        &[],
    )
    .unwrap();
    let out = rule.process(&[Message::new("t", &b"{}"[..])]);
    assert_eq!(
        json(&out.outputs[0].payload),
        serde_json::json!({"r": "ababab", "p": "007", "g": [0, 1, 2]})
    );
    // A constant call over the limits is refused when the rule is compiled, or fails every
    // message; it never allocates.
    match Rule::compile(&e, "SELECT repeat('x', 2000000000) AS v FROM 't'", &[]) {
        Err(err) => assert!(err.message.contains("at most 1048576"), "{err}"),
        Ok(rule) => {
            let out = rule.process(&[Message::new("t", &b"{}"[..])]);
            assert!(
                out.failures[0].message.contains("at most 1048576"),
                "{:?}",
                out.failures
            );
        }
    }
}

#[test]
fn a_rule_over_its_memory_budget_is_stopped_before_it_allocates_the_excess() {
    let e = Engine::new();
    let big = "y".repeat(100_000);
    // 64 messages of 100 KB: 6.4 MB of input.
    let msgs: Vec<Message> = (0..64)
        .map(|i| {
            let payload = serde_json::json!({"i": i, "s": big}).to_string();
            Message::new("t", payload.into_bytes())
        })
        .collect();
    let budget = 16usize << 20;
    let copies = |sep: &str| vec!["s"; 100].join(sep);
    // Each needs 10 MB or more per message, 640 MB or more for the batch.
    let over = [
        format!("concat({})", copies(", ")),
        copies(" + "),
        "replace(s, 'y', repeat('z', 100))".to_owned(),
        "regexp_replace(s, 'y', repeat('z', 100))".to_owned(),
    ];
    for expr in over {
        let rule = Rule::compile(&e, &format!("SELECT {expr} AS out FROM 't'"), &[])
            .unwrap_or_else(|err| panic!("{expr}: {err}"));
        let scope = memory::Scope::enter(budget);
        let out = rule.process(&msgs);
        let peak = memory::peak();
        drop(scope);
        assert!(out.outputs.is_empty(), "{expr}");
        assert_eq!(out.failures.len(), 64, "{expr}: {:?}", out.failures.first());
        assert!(
            out.failures
                .iter()
                .all(|f| f.reason == FailureReason::MemoryBudget),
            "{expr}: {:?}",
            out.failures.first()
        );
        assert!(
            out.failures[0]
                .message
                .contains("its memory budget is 16.0 MiB"),
            "{:?}",
            out.failures[0]
        );
        // Stopped near the budget, far below what the batch would have taken.
        assert!(peak < 3 * budget, "{expr}: held {peak} bytes");
    }
    // Each of these fits one message at a time, but not the whole batch of 8 (8 MB of
    // output and as much again while it is built): every message gets its output, in order.
    let msgs = &msgs[..8];
    let fits = [
        "lpad(s, 1000000, ' ')",
        "repeat('x', 1000000)",
        "concat(s, s, s, s, s, s, s, s, s, s)",
        "array_repeat(s, 10)",
        // Its estimate (every position a match) is far above what it builds (no match):
        // counted, it fits.
        "regexp_replace(s, 'q', repeat('z', 100))",
    ];
    for expr in fits {
        let rule = Rule::compile(&e, &format!("SELECT i, {expr} AS out FROM 't'"), &[])
            .unwrap_or_else(|err| panic!("{expr}: {err}"));
        let scope = memory::Scope::enter(budget);
        let out = rule.process(msgs);
        let peak = memory::peak();
        drop(scope);
        assert_eq!(out.failures, [], "{expr}");
        let order: Vec<i64> = out
            .outputs
            .iter()
            .map(|o| json(&o.payload)["i"].as_i64().unwrap())
            .collect();
        assert_eq!(order, (0..8).collect::<Vec<_>>(), "{expr}");
        assert!(peak < 3 * budget, "{expr}: held {peak} bytes");
    }
    // Outside a scope nothing is limited (the rule test endpoint and the pipeline enter one).
    let rule = Rule::compile(
        &e,
        "SELECT concat(s, s, s, s, s, s, s, s, s, s) AS out FROM 't'",
        &[],
    )
    .unwrap();
    assert_eq!(rule.process(msgs).outputs.len(), 8);
}

#[test]
fn what_a_batch_keeps_and_what_it_repeats_counts_against_its_budget() {
    let e = Engine::new();
    let big = "y".repeat(100_000);
    let msgs: Vec<Message> = (0..64)
        .map(|i| {
            let payload = serde_json::json!({"i": i, "s": big, "a": vec![0; 10_000]});
            Message::new("t", payload.to_string().into_bytes())
        })
        .collect();
    let budget = 16usize << 20;
    let run = |sql: &str, msgs: &[Message]| {
        let rule = Rule::compile(&e, sql, &[]).unwrap_or_else(|err| panic!("{sql}: {err}"));
        let scope = memory::Scope::enter(budget);
        let out = rule.process(msgs);
        let peak = memory::peak();
        drop(scope);
        assert!(peak < 3 * budget, "{sql}: held {peak} bytes");
        out
    };
    let all_over = |sql: &str| {
        let out = run(sql, &msgs);
        assert!(out.outputs.is_empty(), "{sql}");
        assert_eq!(out.failures.len(), 64, "{sql}");
        assert!(
            out.failures
                .iter()
                .all(|f| f.reason == FailureReason::MemoryBudget),
            "{sql}: {:?}",
            out.failures.first()
        );
    };
    // The same column 200 times: no copy until the JSON, which would take 20 MB a message.
    let columns: Vec<String> = (0..200).map(|i| format!("s AS c{i}")).collect();
    all_over(&format!("SELECT {} FROM 't'", columns.join(", ")));
    // A value computed once and repeated for each of 10,000 elements: 1 GB a message.
    all_over("SELECT (SELECT repeat('x', 100000) AS r FROM a) AS x FROM 't'");
    // The delimiter repeated between 100,000 elements: 100 GB a message.
    all_over("SELECT array_to_string(range(0, 100000), repeat('x', 1000000)) AS j FROM 't'");
    // Each message's 1 MB output fits, but not all 64 together: those past the budget
    // fail, the others pass.
    let out = run("SELECT i, repeat(s, 10) AS r FROM 't'", &msgs);
    assert_eq!(out.outputs.len() + out.failures.len(), 64);
    assert!(
        (4..16).contains(&out.outputs.len()),
        "{} outputs",
        out.outputs.len()
    );
    assert!(
        out.failures
            .iter()
            .all(|f| f.reason == FailureReason::MemoryBudget)
    );
    // A replacement whose bound (every position a match) is 200 MB, with one actual match:
    // counted, not refused.
    let one = [Message::new(
        "t",
        serde_json::json!({"s": format!("{big}z")})
            .to_string()
            .into_bytes(),
    )];
    let out = run(
        "SELECT regexp_replace(s, 'z', repeat('q', 2000)) AS r FROM 't'",
        &one,
    );
    assert_eq!(out.failures, []);
    assert_eq!(
        json(&out.outputs[0].payload)["r"].as_str().unwrap().len(),
        102_000
    );
}

#[test]
fn constant_expressions_and_array_literals_are_metered() {
    let e = Engine::new();
    // Each variable doubles the last: 2^10 MB if computed. Planning computes nothing;
    // evaluating does, within the budget.
    let mut sql = "SET @v0 = repeat('x', 1000000)".to_owned();
    for i in 1..=10 {
        sql += &format!(", @v{i} = concat(@v{p}, @v{p})", p = i - 1);
    }
    let one = [Message::new("t", &b"{}"[..])];
    for last in ["concat(@v10, 'y')", "[@v10, @v10]", "@v10 + @v10"] {
        let text = format!("{sql} SELECT {last} AS big FROM 't'");
        let rule = Rule::compile(&e, &text, &[]).unwrap_or_else(|err| panic!("{last}: {err}"));
        let scope = memory::Scope::enter(16 << 20);
        let out = rule.process(&one);
        let peak = memory::peak();
        drop(scope);
        assert_eq!(out.failures.len(), 1, "{last}");
        assert_eq!(
            out.failures[0].reason,
            FailureReason::MemoryBudget,
            "{last}"
        );
        assert!(peak < 48 << 20, "{last}: held {peak} bytes");
    }
    // An array literal of fields (DataFusion's planner makes it a call of its own
    // make_array, not the registry's) is metered too.
    let fields = vec!["s"; 100].join(", ");
    let rule = Rule::compile(&e, &format!("SELECT [{fields}] AS a FROM 't'"), &[]).unwrap();
    let big = "y".repeat(100_000);
    let msgs: Vec<Message> = (0..64)
        .map(|_| Message::new("t", serde_json::json!({"s": big}).to_string().into_bytes()))
        .collect();
    let scope = memory::Scope::enter(16 << 20);
    let out = rule.process(&msgs);
    let peak = memory::peak();
    drop(scope);
    assert_eq!(out.failures.len(), 64);
    assert_eq!(out.failures[0].reason, FailureReason::MemoryBudget);
    assert!(peak < 48 << 20, "held {peak} bytes");
    // `||` is not AWS IoT SQL.
    let err = Rule::compile(&e, "SELECT s || s AS t FROM 't'", &[])
        .map(|_| ())
        .unwrap_err();
    assert!(err.message.contains("`||` operator"), "{err}");
}

#[test]
fn a_batch_run_again_a_message_at_a_time_counts_each_message_once() {
    // Found by fuzzing: the filtered messages of a batch that then failed were counted
    // again when the batch ran a message at a time.
    let rule = Rule::compile(
        &Engine::new(),
        "SELECT 10 / x AS r FROM 't' WHERE keep",
        &[],
    )
    .unwrap();
    let out = rule.process(&[
        Message::new("t", &br#"{"keep": true, "x": 0}"#[..]),
        Message::new("t", &br#"{"keep": false, "x": 1}"#[..]),
        Message::new("t", &br#"{"keep": true, "x": 2}"#[..]),
    ]);
    assert_eq!(out.failures.len(), 1, "{:?}", out.failures);
    assert_eq!(out.failures[0].index, 0);
    assert_eq!(out.filtered_out, 1);
    assert_eq!(out.outputs.len(), 1);
    assert_eq!(json(&out.outputs[0].payload), serde_json::json!({"r": 5}));
}
