//! Undefined and null: `isNull(x)`, `isUndefined(x)` (also `x IS [NOT] UNDEFINED`) and
//! `get_or_default(x, default)`.
//!
//! A field missing from the payload and a field that is JSON `null` are both NULL in a
//! batch column; a rule that asks which one it is gets a boolean column per field path
//! telling JSON `null` apart ([`crate::meta::json_null`]).

use datafusion::sql::sqlparser::ast::{self, Expr, Ident};

use super::args::{Call, if_undefined};
use crate::dialect::ast::field_path;
use crate::meta::{self, MetaNeeds};

/// The rewrite of a null check, if `c` calls one.
pub(super) fn rewrite(c: &Call, needs: &mut MetaNeeds) -> Option<Result<Expr, String>> {
    let out = match c.name {
        "isnull" | "isundefined" => c.arity_as_written(1).map(|()| {
            let arg = &c.args[0];
            let path = field_path(arg);
            let is_json_null =
                |path: &str| Expr::Identifier(Ident::with_quote('`', meta::json_null(path)));
            let literal_null = matches!(arg, Expr::Value(v) if v.value == ast::Value::Null);
            let undefined = Expr::IsNull(Box::new(arg.clone()));
            match (c.name, path) {
                ("isnull", Some(p)) => {
                    needs.json_null.insert(p.clone());
                    is_json_null(&p)
                }
                ("isnull", None) => Expr::value(ast::Value::Boolean(literal_null)),
                (_, Some(p)) => {
                    needs.json_null.insert(p.clone());
                    Expr::Nested(Box::new(Expr::BinaryOp {
                        left: Box::new(undefined),
                        op: ast::BinaryOperator::And,
                        right: Box::new(Expr::UnaryOp {
                            op: ast::UnaryOperator::Not,
                            expr: Box::new(is_json_null(&p)),
                        }),
                    }))
                }
                (_, None) if literal_null => Expr::value(ast::Value::Boolean(false)),
                (_, None) => undefined,
            }
        }),
        "get_or_default" => c
            .arity(2)
            .map(|()| if_undefined(c.arg(0), c.arg(1), c.arg(0))),
        _ => return None,
    };
    Some(out)
}
