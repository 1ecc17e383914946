//! Strings: `startswith`, `endswith`, `indexof`, `length`, `numbytes`, `substring`,
//! `regexp_matches` and `regexp_substr`. Each is a rewrite into DataFusion's string
//! functions that converts its arguments to strings and shifts positions to AWS's 0-based
//! ones.

use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr};

use super::args::{Call, binary, int, number, string};
use crate::dialect::ast::call;

/// The rewrite of a string function, if `c` calls one.
pub(super) fn rewrite(c: &Call) -> Option<Result<Expr, String>> {
    let a = |i: usize| c.arg(i);
    let out = match c.name {
        "startswith" => c
            .arity(2)
            .map(|()| call("starts_with", vec![string(a(0)), string(a(1))])),
        "endswith" => c
            .arity(2)
            .map(|()| call("ends_with", vec![string(a(0)), string(a(1))])),
        "indexof" => c.arity(2).map(|()| {
            let pos = call("strpos", vec![string(a(0)), string(a(1))]);
            binary(pos, BinaryOperator::Minus, number("1"))
        }),
        "length" => c
            .arity(1)
            .map(|()| call("character_length", vec![string(a(0))])),
        "numbytes" => c
            .arity(1)
            .map(|()| call("octet_length", vec![string(a(0))])),
        // substring(s, start[, end]): 0-based, `end` exclusive, positions floored and
        // clamped to the string, non-strings converted.
        "substring" => {
            if !(2..=3).contains(&c.args.len()) {
                Err(format!(
                    "substring() takes 2 or 3 arguments, got {}",
                    c.args.len()
                ))
            } else {
                let s = string(a(0));
                let pos = |e: Expr| int(call("floor", vec![e]));
                let start = call("greatest", vec![pos(a(1)), number("0")]);
                let from = binary(start.clone(), BinaryOperator::Plus, number("1"));
                Ok(if c.args.len() == 2 {
                    call("substr", vec![s, from])
                } else {
                    let end = call(
                        "least",
                        vec![pos(a(2)), call("character_length", vec![s.clone()])],
                    );
                    let len = call(
                        "greatest",
                        vec![binary(end, BinaryOperator::Minus, start), number("0")],
                    );
                    call("substr", vec![s, from, len])
                })
            }
        }
        "regexp_matches" => c
            .arity(2)
            .map(|()| call("regexp_like", vec![string(a(0)), a(1)])),
        "regexp_substr" => c.arity(2).map(|()| {
            // The first match: element 1 of regexp_match's array (NULL when none).
            let m = call("regexp_match", vec![string(a(0)), a(1)]);
            call("array_element", vec![m, number("1")])
        }),
        _ => return None,
    };
    Some(out)
}
