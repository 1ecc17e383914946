//! Numbers: `mod`, `remainder`, `bitand`, `bitor`, `bitxor`, `bitnot`, `sign` and `nanvl`.
//! Each is a rewrite into DataFusion's operators and functions; the bit functions convert
//! their arguments to Int, as AWS does.

use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr};

use super::args::{Call, binary, if_undefined, int, number};
use crate::dialect::ast::call;

/// `x` as the bit functions take it: a number or a String holding one, rounded down to an
/// Int; anything else (a Boolean, an Array) Undefined.
fn whole(x: Expr) -> Expr {
    int(call("floor", vec![x]))
}

/// The rewrite of a math function, if `c` calls one.
pub(super) fn rewrite(c: &Call) -> Option<Result<Expr, String>> {
    let a = |i: usize| c.arg(i);
    let out = match c.name {
        "mod" | "remainder" => c
            .arity(2)
            .map(|()| binary(a(0), BinaryOperator::Modulo, a(1))),
        "bitand" => c
            .arity(2)
            .map(|()| binary(whole(a(0)), BinaryOperator::BitwiseAnd, whole(a(1)))),
        "bitor" => c
            .arity(2)
            .map(|()| binary(whole(a(0)), BinaryOperator::BitwiseOr, whole(a(1)))),
        "bitxor" => c
            .arity(2)
            .map(|()| binary(whole(a(0)), BinaryOperator::BitwiseXor, whole(a(1)))),
        // Two's complement: ~x = -1 - x.
        "bitnot" => c
            .arity(1)
            .map(|()| binary(number("-1"), BinaryOperator::Minus, whole(a(0)))),
        "sign" => c.arity(1).map(|()| call("signum", vec![a(0)])),
        // An undefined first argument gives the second, as a NaN does.
        "nanvl" => c
            .arity(2)
            .map(|()| if_undefined(a(0), a(1), call("nanvl", vec![a(0), a(1)]))),
        _ => return None,
    };
    Some(out)
}
