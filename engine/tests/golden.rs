//! The dialect's golden tests: every `engine/tests/golden/*.golden` file, each case a rule, its
//! input messages and the exact outputs expected (format: `engine/tests/golden/README.md`).
//!
//! A case marked `gap:` is a known difference from the AWS reference: the harness checks
//! that it still fails (so that a fix is noticed and the mark removed) and counts it apart.

use std::path::{Path, PathBuf};

use serde_json::Value;
use weir_engine::topic::{basic_ingest, matches};
use weir_engine::{Engine, Message, Rule, SqlVersion};

#[derive(Debug, Default)]
struct Case {
    file: PathBuf,
    line: usize,
    name: String,
    sql: String,
    /// The rule's AWS IoT SQL version; the default when absent.
    version: Option<SqlVersion>,
    topic: String,
    client_id: Option<String>,
    principal: Option<String>,
    source_ip: Option<String>,
    mqtt: Option<std::sync::Arc<weir_engine::MqttProperties>>,
    inputs: Vec<Vec<u8>>,
    outputs: Vec<Expected>,
    no_output: bool,
    fails: Vec<String>,
    rejects: Option<String>,
    gap: Option<String>,
}

#[derive(Debug)]
enum Expected {
    /// Compared as JSON values, numbers numerically.
    Json(Value),
    /// Compared byte for byte.
    Exact(String),
}

fn parse(path: &Path) -> Vec<Case> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut cases = Vec::new();
    let mut cur: Option<Case> = None;
    let mut in_sql = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if line.trim_start().starts_with('#') {
            continue;
        }
        if in_sql && (raw.starts_with(' ') || raw.starts_with('\t')) && !line.trim().is_empty() {
            let c = cur.as_mut().unwrap();
            c.sql.push('\n');
            c.sql.push_str(line.trim());
            continue;
        }
        in_sql = false;
        if line.trim().is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix("case ") {
            cases.extend(cur.take());
            cur = Some(Case {
                file: path.to_owned(),
                line: i + 1,
                name: name.trim().to_owned(),
                ..Default::default()
            });
            continue;
        }
        let c = cur.as_mut().unwrap_or_else(|| {
            panic!(
                "{}:{}: a field before the first 'case'",
                path.display(),
                i + 1
            )
        });
        let (key, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("{}:{}: expected 'key: value'", path.display(), i + 1));
        let value = value.trim();
        let json = |v: &str| -> Value {
            serde_json::from_str(v).unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1))
        };
        match key {
            "sql" => {
                c.sql = value.to_owned();
                in_sql = true;
            }
            "version" => {
                c.version =
                    Some(SqlVersion::parse(value).unwrap_or_else(|| {
                        panic!("{}:{}: unknown SQL version", path.display(), i + 1)
                    }))
            }
            "topic" => c.topic = value.to_owned(),
            "clientid" => c.client_id = Some(value.to_owned()),
            "principal" => c.principal = Some(value.to_owned()),
            "sourceip" => c.source_ip = Some(value.to_owned()),
            "mqtt" => {
                let p = weir_engine::MqttProperties::from_json(&json(value))
                    .unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1));
                c.mqtt = Some(std::sync::Arc::new(p));
            }
            "in" => c.inputs.push(serde_json::to_vec(&json(value)).unwrap()),
            "in-raw" => c.inputs.push(value.as_bytes().to_vec()),
            "out" if value == "none" => c.no_output = true,
            "out" => c.outputs.push(Expected::Json(json(value))),
            "exact" => c.outputs.push(Expected::Exact(value.to_owned())),
            "fails" => c.fails.push(value.to_owned()),
            "rejects" => c.rejects = Some(value.to_owned()),
            "gap" => c.gap = Some(value.to_owned()),
            other => panic!("{}:{}: unknown field '{other}'", path.display(), i + 1),
        }
    }
    cases.extend(cur);
    cases
}

use weir_engine::json_text::same_json as same;

/// Runs a case; `Err` says how it differs from what is expected.
fn run(engine: &std::sync::Arc<Engine>, c: &Case) -> Result<(), String> {
    let rule = match Rule::compile_for(engine, c.version.unwrap_or_default(), &c.sql, &[]) {
        Ok(r) => r,
        Err(e) => {
            return match &c.rejects {
                Some(want) if e.message.contains(want.as_str()) => Ok(()),
                _ => Err(format!("rule refused: {e}")),
            };
        }
    };
    if let Some(want) = &c.rejects {
        return Err(format!(
            "rule accepted, expected a refusal containing '{want}'"
        ));
    }
    // A Basic Ingest topic reaches the rule as the topic after the prefix.
    let topic = basic_ingest(&c.topic).map_or(c.topic.as_str(), |(_, t)| t);
    let msgs: Vec<Message> = c
        .inputs
        .iter()
        .map(|p| {
            let mut m = Message::new(topic.to_owned(), p.clone());
            m.client_id = c.client_id.clone();
            m.principal = c.principal.clone();
            m.source_ip = c.source_ip.clone();
            m.properties = c.mqtt.clone();
            m
        })
        .collect();
    let (outputs, failures) = if matches(rule.topic_filter(), topic) {
        let out = rule.process(&msgs);
        // The fast decoding path must agree with the general one on every case.
        let general = rule.process_general(&msgs);
        if out != general {
            return Err(format!(
                "the fast path gave {out:?}, the general path {general:?}"
            ));
        }
        (out.outputs, out.failures)
    } else {
        (Vec::new(), Vec::new())
    };
    let got: Vec<String> = outputs
        .iter()
        .map(|o| String::from_utf8_lossy(&o.payload).into_owned())
        .collect();
    let reasons: Vec<&str> = failures.iter().map(|f| f.reason.as_str()).collect();
    if reasons != c.fails.iter().map(String::as_str).collect::<Vec<_>>() {
        return Err(format!(
            "failures {reasons:?} ({failures:?}), expected {:?}",
            c.fails
        ));
    }
    if c.no_output && !got.is_empty() {
        return Err(format!("expected no output, got {got:?}"));
    }
    if got.len() != c.outputs.len() {
        return Err(format!(
            "expected {} output(s), got {got:?}",
            c.outputs.len()
        ));
    }
    for (g, want) in got.iter().zip(&c.outputs) {
        let ok = match want {
            Expected::Exact(w) => g == w,
            Expected::Json(w) => serde_json::from_str::<Value>(g).is_ok_and(|g| same(&g, w)),
        };
        if !ok {
            return Err(format!("got {g}, expected {want:?}"));
        }
    }
    Ok(())
}

#[test]
fn golden() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "golden"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden files in {}", dir.display());
    let engine = Engine::new();
    let (mut passed, mut gaps, mut problems) = (0, 0, Vec::new());
    for file in &files {
        for c in parse(file) {
            let at = format!("{}:{} case {}", c.file.display(), c.line, c.name);
            assert!(
                !c.sql.is_empty() && !c.topic.is_empty(),
                "{at}: needs sql and topic"
            );
            match (run(&engine, &c), &c.gap) {
                (Ok(()), None) => passed += 1,
                (Err(e), Some(_)) => {
                    gaps += 1;
                    println!("known gap {at}: {e}");
                }
                (Ok(()), Some(why)) => {
                    problems.push(format!("{at}: passes now; remove its 'gap: {why}'"))
                }
                (Err(e), None) => problems.push(format!("{at}: {e}\n    sql: {}", c.sql)),
            }
        }
    }
    println!(
        "golden: {passed} passed, {gaps} known gaps, {} failed",
        problems.len()
    );
    assert!(
        problems.is_empty(),
        "{} golden case(s) failed:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
