//! Numbers: `mod`, `remainder`, `bitand`, `bitor`, `bitxor`, `bitnot`, `sign` and `nanvl`.
//! Each is a rewrite into DataFusion's operators and functions; the bit functions convert
//! their arguments to Int, as AWS does.

use datafusion::sql::sqlparser::ast::{self, BinaryOperator, Expr};

use super::args::{Call, binary, if_undefined, int, number};
use crate::dialect::ast::call;

/// The rewrite of a math function, if `c` calls one.
pub(super) fn rewrite(c: &Call) -> Option<Result<Expr, String>> {
    let a = |i: usize| c.arg(i);
    let out = match c.name {
        "mod" | "remainder" => c
            .arity(2)
            .map(|()| binary(a(0), BinaryOperator::Modulo, a(1))),
        "bitand" => c
            .arity(2)
            .map(|()| binary(int(a(0)), BinaryOperator::BitwiseAnd, int(a(1)))),
        "bitor" => c
            .arity(2)
            .map(|()| binary(int(a(0)), BinaryOperator::BitwiseOr, int(a(1)))),
        "bitxor" => c
            .arity(2)
            .map(|()| binary(int(a(0)), BinaryOperator::BitwiseXor, int(a(1)))),
        "bitnot" => c.arity(1).map(|()| {
            // Two's complement: ~x = -x - 1.
            let x = int(a(0));
            binary(
                Expr::UnaryOp {
                    op: ast::UnaryOperator::Minus,
                    expr: Box::new(x),
                },
                BinaryOperator::Minus,
                number("1"),
            )
        }),
        "sign" => c.arity(1).map(|()| call("signum", vec![a(0)])),
        // An undefined first argument gives the second, as a NaN does.
        "nanvl" => c
            .arity(2)
            .map(|()| if_undefined(a(0), a(1), call("nanvl", vec![a(0), a(1)]))),
        _ => return None,
    };
    Some(out)
}
