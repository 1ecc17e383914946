//! AWS IoT SQL functions that map onto DataFusion expressions: the dialect rewrites a call
//! into the DataFusion functions and operators with the AWS semantics (argument
//! conversions, 0-based positions), so DataFusion's vectorised kernels do the work.
//!
//! Functions that need their own kernel are UDFs in [`super::functions`].

use datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken;
use datafusion::sql::sqlparser::ast::{
    self, BinaryOperator, CaseWhen, CastKind, DataType, Expr, Value,
};

use super::{call, json_values, meta};

/// `CAST(e AS VARCHAR)`: AWS string functions convert their arguments to strings.
fn string(e: Expr) -> Expr {
    cast(e, DataType::Varchar(None))
}

/// `CAST(e AS BIGINT)`: AWS bit functions convert their arguments to Int.
fn int(e: Expr) -> Expr {
    cast(e, DataType::BigInt(None))
}

fn cast(e: Expr, data_type: DataType) -> Expr {
    Expr::Cast {
        kind: CastKind::Cast,
        expr: Box::new(e),
        data_type,
        array: false,
        format: None,
    }
}

fn binary(left: Expr, op: BinaryOperator, right: Expr) -> Expr {
    Expr::Nested(Box::new(Expr::BinaryOp {
        left: Box::new(left),
        op,
        right: Box::new(right),
    }))
}

/// `CASE WHEN x IS NULL THEN then ELSE otherwise END`.
fn if_undefined(x: Expr, then: Expr, otherwise: Expr) -> Expr {
    Expr::Case {
        case_token: AttachedToken::empty(),
        end_token: AttachedToken::empty(),
        operand: None,
        conditions: vec![CaseWhen {
            condition: Expr::IsNull(Box::new(x)),
            result: then,
        }],
        else_result: Some(Box::new(otherwise)),
    }
}

/// `rpad(e, ceil(len / 4) * 4, '=')`.
fn pad_base64(e: Expr) -> Expr {
    let n = |v: &str| Expr::value(Value::Number(v.into(), false));
    let len = call("character_length", vec![e.clone()]);
    let padded = binary(
        binary(
            binary(len, BinaryOperator::Plus, n("3")),
            BinaryOperator::Divide,
            n("4"),
        ),
        BinaryOperator::Multiply,
        n("4"),
    );
    call(
        "rpad",
        vec![
            e,
            padded,
            Expr::value(Value::SingleQuotedString("=".into())),
        ],
    )
}

/// The rewrite of an AWS function call, if `name` is one of them: `Some(Ok(expr))`, or
/// `Some(Err(message))` when the arguments do not fit.
pub(super) fn rewrite(name: &str, args: &[Expr]) -> Option<Result<Expr, String>> {
    let arity = |n: usize| -> Result<(), String> {
        if args.len() == n {
            Ok(())
        } else {
            Err(format!(
                "{name}() takes {n} argument(s), got {}",
                args.len()
            ))
        }
    };
    let a = |i: usize| args[i].clone();
    let out = match name {
        // Math.
        "mod" | "remainder" => arity(2).map(|()| binary(a(0), BinaryOperator::Modulo, a(1))),
        "bitand" => arity(2).map(|()| binary(int(a(0)), BinaryOperator::BitwiseAnd, int(a(1)))),
        "bitor" => arity(2).map(|()| binary(int(a(0)), BinaryOperator::BitwiseOr, int(a(1)))),
        "bitxor" => arity(2).map(|()| binary(int(a(0)), BinaryOperator::BitwiseXor, int(a(1)))),
        // Strings.
        "startswith" => arity(2).map(|()| call("starts_with", vec![string(a(0)), string(a(1))])),
        "endswith" => arity(2).map(|()| call("ends_with", vec![string(a(0)), string(a(1))])),
        "indexof" => arity(2).map(|()| {
            let pos = call("strpos", vec![string(a(0)), string(a(1))]);
            binary(
                pos,
                BinaryOperator::Minus,
                Expr::value(Value::Number("1".into(), false)),
            )
        }),
        "length" => arity(1).map(|()| call("character_length", vec![string(a(0))])),
        "numbytes" => arity(1).map(|()| call("octet_length", vec![string(a(0))])),
        "sign" => arity(1).map(|()| call("signum", vec![a(0)])),
        // An undefined first argument gives the second, as a NaN does.
        "nanvl" => arity(2).map(|()| if_undefined(a(0), a(1), call("nanvl", vec![a(0), a(1)]))),
        // substring(s, start[, end]): 0-based, `end` exclusive, positions floored and
        // clamped to the string, non-strings converted.
        "substring" => {
            if !(2..=3).contains(&args.len()) {
                Err(format!("substring() takes 2 or 3 arguments, got {}", args.len()))
            } else {
                let s = string(a(0));
                let n = |v: &str| Expr::value(Value::Number(v.into(), false));
                let pos = |e: Expr| int(call("floor", vec![e]));
                let start = call("greatest", vec![pos(a(1)), n("0")]);
                let from = binary(start.clone(), BinaryOperator::Plus, n("1"));
                Ok(if args.len() == 2 {
                    call("substr", vec![s, from])
                } else {
                    let end = call("least", vec![pos(a(2)), call("character_length", vec![s.clone()])]);
                    let len = call("greatest", vec![binary(end, BinaryOperator::Minus, start), n("0")]);
                    call("substr", vec![s, from, len])
                })
            }
        }
        // Strings.
        "regexp_matches" => arity(2).map(|()| call("regexp_like", vec![string(a(0)), a(1)])),
        "regexp_substr" => arity(2).map(|()| {
            // The first match: element 1 of regexp_match's array (NULL when none).
            let m = call("regexp_match", vec![string(a(0)), a(1)]);
            call(
                "array_element",
                vec![m, Expr::value(Value::Number("1".into(), false))],
            )
        }),
        // Conversions and hashes: AWS returns hex strings where DataFusion returns bytes.
        // A decoded JSON document is that document (`80` is a number), other text a string.
        "decode" => arity(2).map(|()| {
            call(json_values::MARK, vec![string(call("decode", vec![string(a(0)), a(1)]))])
        }),
        "encode" => arity(2).map(|()| {
            // `encode(*, ...)` encodes the payload's bytes as received.
            let is_payload = matches!(&args[0], Expr::Identifier(i) if i.value == meta::PAYLOAD);
            let e = call("encode", vec![if is_payload { a(0) } else { string(a(0)) }, a(1)]);
            // DataFusion's base64 has no padding; AWS's (standard base64) has.
            let is_base64 = matches!(&args[1], Expr::Value(v)
                if matches!(&v.value, Value::SingleQuotedString(s) if s.eq_ignore_ascii_case("base64")));
            if is_base64 { pad_base64(e) } else { e }
        }),
        // concat() is Undefined, concat(x) is x; with an array among the values, an array.
        "concat" => Ok(match args.len() {
            0 => Expr::value(Value::Null),
            1 => a(0),
            _ => call(json_values::CONCAT, args.to_vec()),
        }),
        "sha224" | "sha256" | "sha384" | "sha512" => arity(1).map(|()| {
            call(
                "encode",
                vec![
                    call(name, vec![string(a(0))]),
                    Expr::value(Value::SingleQuotedString("hex".into())),
                ],
            )
        }),
        "md5" => arity(1).map(|()| call("md5", vec![string(a(0))])),
        // weir's UDFs (dialect/hashes.rs), given strings as AWS converts.
        "sha1" | "crc32" | "md2" => arity(1).map(|()| call(&format!("__weir_{name}"), vec![string(a(0))])),
        "bitnot" => arity(1).map(|()| {
            // Two's complement: ~x = -x - 1.
            let x = int(a(0));
            binary(
                Expr::UnaryOp { op: ast::UnaryOperator::Minus, expr: Box::new(x) },
                BinaryOperator::Minus,
                Expr::value(Value::Number("1".into(), false)),
            )
        }),
        "transform" => arity(3).and_then(|()| match &args[0] {
            Expr::Value(v) if matches!(&v.value, Value::SingleQuotedString(m) if m == "enrichArray") => {
                Ok(call(super::collections::ENRICH, vec![a(1), a(2)]))
            }
            _ => Err("transform() supports the mode 'enrichArray'".to_owned()),
        }),
        "get_or_default" => arity(2).map(|()| if_undefined(a(0), a(1), a(0))),
        "newuuid" => arity(0).map(|()| call("uuid", vec![])),
        // Collections.
        "get" => arity(2).and_then(|()| match &args[1] {
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(key) => Ok(call(
                    "get_field",
                    vec![a(0), Expr::value(Value::SingleQuotedString(key.clone()))],
                )),
                // AWS indexes arrays from 0, DataFusion from 1.
                Value::Number(n, _) => n
                    .parse::<i64>()
                    .map(|i| {
                        call(
                            "array_element",
                            vec![a(0), Expr::value(Value::Number((i + 1).to_string(), false))],
                        )
                    })
                    .map_err(|_| format!("get(): index {n} is not an integer")),
                _ => Err("get() takes a string key or an integer index".to_owned()),
            },
            _ => {
                Err("get() with a computed key is not supported yet; use a literal key".to_owned())
            }
        }),
        _ => return None,
    };
    Some(out)
}

/// AWS IoT functions that call other AWS services: refused with this reason.
pub(super) fn unsupported(name: &str) -> Option<&'static str> {
    match name {
        "aws_lambda"
        | "get_dynamodb"
        | "get_secret"
        | "get_registry_data"
        | "machinelearning_predict" => Some("calls an AWS service, which weir does not do"),
        "get_thing_shadow" => Some("needs device shadows, which weir does not have yet"),
        "accountid" => Some("names the AWS account that owns the rule, and weir has none"),
        _ => None,
    }
}

/// AWS type names in `CAST(x AS <type>)`: Int, Decimal, Bool/Boolean, String.
pub(super) fn cast_type(t: &DataType) -> Option<DataType> {
    match t {
        DataType::Int(_) | DataType::Integer(_) => Some(DataType::BigInt(None)),
        DataType::Decimal(_) => Some(DataType::Double(
            datafusion::sql::sqlparser::ast::ExactNumberInfo::None,
        )),
        DataType::String(_) => Some(DataType::Varchar(None)),
        _ => None,
    }
}
