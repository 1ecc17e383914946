//! Strings: `startswith`, `endswith`, `indexof`, `length`, `numbytes`, `substring`,
//! `lpad`, `rpad` and `chr`. Each is a rewrite into DataFusion's string
//! functions that converts its arguments to strings and shifts positions to AWS's 0-based
//! ones.

use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr};

use super::args::{Call, binary, held, number, only_if, string, text, whole};
use crate::dialect::CallError;
use crate::dialect::ast::call;

/// The rewrite of a string function, if `c` calls one.
pub(super) fn rewrite(c: &Call) -> Option<Result<Expr, CallError>> {
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
                Err(CallError::SubstringArity(c.args.len()))
            } else {
                let s = string(a(0));
                // An index rounded down and held to 0..2^31 before it becomes an Int
                // (`substring(false, -2.411E247)` is "false").
                let big = || number("2147483647");
                let start = held(whole(a(1)), number("0"), big());
                let from = binary(start.clone(), BinaryOperator::Plus, number("1"));
                Ok(if c.args.len() == 2 {
                    call("substr", vec![s, from])
                } else {
                    let length = call("character_length", vec![s.clone()]);
                    let end = held(whole(a(2)), number("0"), length);
                    let len = held(
                        binary(end, BinaryOperator::Minus, start),
                        number("0"),
                        big(),
                    );
                    call("substr", vec![s, from, len])
                })
            }
        }
        // chr(n): the ASCII character n (a Decimal or a String holding a number rounded
        // down), Undefined outside ASCII.
        "chr" => c.arity(1).map(|()| {
            let n = whole(a(0));
            let ascii = binary(
                binary(n.clone(), BinaryOperator::GtEq, number("0")),
                BinaryOperator::And,
                binary(n.clone(), BinaryOperator::LtEq, number("127")),
            );
            only_if(ascii, call("chr", vec![n]))
        }),
        // AWS's pads add `n` spaces (0 to 1000), whatever the text's length; with a fill
        // argument they are DataFusion's.
        "lpad" | "rpad" if c.args.len() == 2 => {
            // The count is AWS's Int (a Boolean, Array or Object gives Undefined), held to
            // 0..=1000.
            let n = held(whole(a(1)), number("0"), number("1000"));
            let spaces = call("repeat", vec![text(" "), n]);
            let s = string(a(0));
            Ok(if c.name == "lpad" {
                binary(spaces, BinaryOperator::StringConcat, s)
            } else {
                binary(s, BinaryOperator::StringConcat, spaces)
            })
        }
        _ => return None,
    };
    Some(out)
}
