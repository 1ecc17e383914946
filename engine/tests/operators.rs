//! weir's operators against a small model of the AWS IoT SQL reference's operator tables:
//! every operator over every pair of operand kinds (Int, Decimal, numeric and other
//! Strings, Boolean, Array, JSON null, Undefined), in both orders.

use serde_json::{Value, json};
use weir_engine::{Engine, Message, Rule};

/// An operand: a JSON value, or None for Undefined (the field is absent).
type Operand = Option<Value>;

fn operands() -> Vec<(&'static str, Operand)> {
    vec![
        ("int", Some(json!(7))),
        ("int2", Some(json!(2))),
        ("decimal", Some(json!(2.5))),
        ("numeric string", Some(json!("4"))),
        ("decimal string", Some(json!("1.5"))),
        ("text", Some(json!("abc"))),
        ("spaced number", Some(json!(" 5"))),
        ("exponent string", Some(json!("1e2"))),
        ("boolean", Some(json!(true))),
        ("array", Some(json!([1, 2]))),
        ("null", Some(Value::Null)),
        ("undefined", None),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum Num {
    Int(i64),
    Dec(f64),
}

impl Num {
    fn f(&self) -> f64 {
        match self {
            Num::Int(i) => *i as f64,
            Num::Dec(d) => *d,
        }
    }
}

/// A number, as AWS reads one: Int and Decimal as they are, a String that holds a number
/// as a Decimal (`strings`), nothing else.
fn number(v: &Value, strings: bool) -> Option<Num> {
    match v {
        Value::Number(n) if n.is_i64() => Some(Num::Int(n.as_i64()?)),
        Value::Number(n) => Some(Num::Dec(n.as_f64()?)),
        Value::String(s) if strings && aws_number(s) => s.parse::<f64>().ok().map(Num::Dec),
        _ => None,
    }
}

/// Whether a String holds a number as AWS writes one: `-?\d+(\.\d+)?([eE]-?\d+)?`.
fn aws_number(s: &str) -> bool {
    let (int, rest) = s.strip_prefix('-').unwrap_or(s).split_at(
        s.strip_prefix('-')
            .unwrap_or(s)
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s.strip_prefix('-').unwrap_or(s).len()),
    );
    let digits = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit());
    if !digits(int) {
        return false;
    }
    let (fraction, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let fraction_ok = fraction.is_empty() || fraction.strip_prefix('.').is_some_and(digits);
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix('-').unwrap_or(e)));
    fraction_ok && exponent_ok
}

/// AWS's conversion to String: numbers and Booleans written out, arrays as JSON text.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Number(n) if n.is_i64() => "int",
        Value::Number(_) => "decimal",
        Value::String(_) => "string",
        Value::Bool(_) => "boolean",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::Null => "null",
    }
}

/// The reference's result of `a op b`: None for Undefined.
fn model(op: &str, a: &Value, b: &Value) -> Option<Value> {
    let arith = |f: fn(f64, f64) -> f64, i: fn(i64, i64) -> Option<i64>| -> Option<Value> {
        match (number(a, true)?, number(b, true)?) {
            (Num::Int(x), Num::Int(y)) => i(x, y).map(Value::from),
            (x, y) => Some(json!(f(x.f(), y.f()))),
        }
    };
    match op {
        // Null converts to no String ("To string": Null is Undefined).
        "+" if a.is_null() || b.is_null() => None,
        "+" if a.is_string() || b.is_string() => Some(json!(text(a) + &text(b))),
        "+" => match (number(a, false)?, number(b, false)?) {
            (Num::Int(x), Num::Int(y)) => Some(json!(x + y)),
            (x, y) => Some(json!(x.f() + y.f())),
        },
        "-" => arith(|x, y| x - y, |x, y| Some(x - y)),
        "*" => arith(|x, y| x * y, |x, y| Some(x * y)),
        "/" => arith(|x, y| x / y, |x, y| (y != 0).then(|| x / y)),
        "%" => arith(|x, y| x % y, |x, y| (y != 0).then(|| x % y)),
        "<" | "<=" | ">" | ">=" => {
            let (x, y) = (number(a, true)?.f(), number(b, true)?.f());
            Some(json!(match op {
                "<" => x < y,
                "<=" => x <= y,
                ">" => x > y,
                _ => x >= y,
            }))
        }
        // Null = Null; Null and any other value are of mismatched types.
        "=" | "<>" => {
            let equal = match (number(a, false), number(b, false)) {
                (Some(x), Some(y)) => x.f() == y.f(),
                _ if kind(a) != kind(b) => false,
                _ => a == b,
            };
            Some(json!(if op == "=" { equal } else { !equal }))
        }
        _ => unreachable!("{op}"),
    }
}

fn same(got: Option<&Value>, want: &Option<Value>) -> bool {
    match (got, want) {
        (None, None) => true,
        (Some(g), Some(w)) => match (g.as_f64(), w.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() < 1e-9,
            _ => g == w,
        },
        _ => false,
    }
}

#[test]
fn operators_follow_the_reference_tables() {
    let engine = Engine::new();
    let ops = ["+", "-", "*", "/", "%", "<", "<=", ">", ">=", "=", "<>"];
    let mut wrong = Vec::new();
    let mut checked = 0;
    for op in ops {
        let sql = format!("SELECT a {op} b AS r FROM 't'");
        let rule = Rule::compile(&engine, &sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}"));
        for (an, a) in operands() {
            for (bn, b) in operands() {
                let mut payload = serde_json::Map::new();
                if let Some(a) = &a {
                    payload.insert("a".into(), a.clone());
                }
                if let Some(b) = &b {
                    payload.insert("b".into(), b.clone());
                }
                let msg = Message::new("t", Value::Object(payload).to_string().into_bytes());
                let out = rule.process(&[msg]);
                let got: Option<Value> = match (out.outputs.first(), out.failures.first()) {
                    (Some(o), _) => serde_json::from_slice::<Value>(&o.payload)
                        .unwrap()
                        .get("r")
                        .cloned(),
                    (None, Some(f)) => Some(json!(format!("failed: {}", f.message))),
                    (None, None) => None,
                };
                let want = match (&a, &b) {
                    (Some(a), Some(b)) => model(op, a, b),
                    _ => None,
                };
                checked += 1;
                if !same(got.as_ref(), &want) {
                    wrong.push(format!("{an} {op} {bn}: weir {got:?}, AWS {want:?}"));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {checked} differ:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
