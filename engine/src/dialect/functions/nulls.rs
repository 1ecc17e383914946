//! Undefined and null: `isNull(x)`, `isUndefined(x)` (also `x IS [NOT] UNDEFINED`) and
//! `get_or_default(x, default)`.
//!
//! A field missing from the payload and a field that is JSON `null` are both NULL in a
//! batch column; a rule that asks which one it is gets a boolean column per field path
//! telling JSON `null` apart ([`crate::meta::json_null`]).

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{self, Expr, Ident, VisitMut, VisitorMut};

use super::args::{Call, if_undefined, when};
use crate::dialect::CallError;
use crate::dialect::ast::field_path;
use crate::meta::{self, MetaNeeds};

/// The rewrite of a null check, if `c` calls one.
pub(super) fn rewrite(c: &Call, needs: &mut MetaNeeds) -> Option<Result<Expr, CallError>> {
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

/// `=` and `<>` with a JSON `null` operand, as AWS's tables say: `null = null` is true,
/// `null` and a value of another type are not equal, and an Undefined operand makes the
/// result Undefined. Only an operand that is a payload field or the literal `NULL` can be
/// JSON `null` (a function's result is never null, it is Undefined). Runs on the
/// expression as written, outside nested SELECTs, whose fields are the elements'.
pub(crate) fn null_equality(expr: &mut Expr, needs: &mut MetaNeeds) {
    struct Equalities<'n> {
        needs: &'n mut MetaNeeds,
        nested: usize,
    }
    impl VisitorMut for Equalities<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, _: &mut ast::Query) -> ControlFlow<()> {
            self.nested += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &mut ast::Query) -> ControlFlow<()> {
            self.nested -= 1;
            ControlFlow::Continue(())
        }
        fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
            if self.nested == 0 {
                rewrite_equality(e, self.needs);
            }
            ControlFlow::Continue(())
        }
    }
    let _ = expr.visit(&mut Equalities { needs, nested: 0 });
}

fn rewrite_equality(e: &mut Expr, needs: &mut MetaNeeds) {
    let Expr::BinaryOp { left, op, right } = &*e else {
        return;
    };
    let equal = match op {
        ast::BinaryOperator::Eq => true,
        ast::BinaryOperator::NotEq => false,
        _ => return,
    };
    // Whether an operand is JSON null: a column for a field, true for `NULL`.
    let mut null_flag = |operand: &Expr| -> Option<Expr> {
        if matches!(operand, Expr::Value(v) if v.value == ast::Value::Null) {
            return Some(boolean(true));
        }
        let path = field_path(operand).filter(|p| !p.starts_with('@'))?;
        needs.json_null.insert(path.clone());
        Some(Expr::Identifier(Ident::with_quote(
            '`',
            meta::json_null(&path),
        )))
    };
    let (left_null, right_null) = (null_flag(left), null_flag(right));
    if left_null.is_none() && right_null.is_none() {
        return;
    }
    let no = || boolean(false);
    let (left_null, right_null) = (left_null.unwrap_or_else(no), right_null.unwrap_or_else(no));
    // One side null: Undefined if the other is missing, else a mismatch of types.
    let against = |other: &Expr| {
        if_undefined(
            other.clone(),
            Expr::value(ast::Value::Null),
            boolean(!equal),
        )
    };
    let both = Expr::BinaryOp {
        left: Box::new(left_null.clone()),
        op: ast::BinaryOperator::And,
        right: Box::new(right_null.clone()),
    };
    let result = when(
        both,
        boolean(equal),
        when(
            left_null,
            against(right),
            when(right_null, against(left), Expr::Nested(Box::new(e.clone()))),
        ),
    );
    *e = result;
}

fn boolean(b: bool) -> Expr {
    Expr::value(ast::Value::Boolean(b))
}
