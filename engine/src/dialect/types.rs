//! AWS IoT SQL's rules for operators on mixed types, applied to DataFusion logical
//! expressions once the batch schema (and so every operand's type) is known.
//!
//! DataFusion coerces like SQL: comparing a string with a number casts the string, and
//! fails on one that is not a number. AWS IoT SQL instead says:
//!
//! * `=` and `<>` between a string and a number: different types are never equal
//!   (`50 <> '50'` is true); an undefined operand keeps the result undefined.
//! * `<`, `<=`, `>`, `>=` and arithmetic between a string and a number: the string is
//!   converted to a number if it is one, else the result is undefined (so a `WHERE` over
//!   it is false rather than an error).
//! * `+` on two strings concatenates them (a metered function, see
//!   [`crate::dialect::functions::bounded`]).
//! * `AND`, `OR`, `NOT` accept the strings "true" and "false" (any case); so does `=`
//!   against a boolean (the dialect writes `NOT x` as `x = false`).
//! * A function given an argument of a type it does not take (`floor([1, 2])`) is
//!   Undefined, not an error; a wrong number of arguments is still refused.
//!
//! Each rule becomes ordinary DataFusion expressions (`TRY_CAST`, `CASE`, function calls), so
//! evaluation stays vectorised.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::type_coercion::functions::fields_with_udf;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, Operator, lit, try_cast, when};

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_number(t: &DataType) -> bool {
    t.is_numeric()
}

/// `left op right` with the string operands converted to `to` (NULL where they do not
/// convert: Undefined).
fn strings_as(
    to: DataType,
    left: (Expr, &DataType),
    op: Operator,
    right: (Expr, &DataType),
) -> Expr {
    let convert = |(x, t): (Expr, &DataType)| {
        if is_string(t) {
            try_cast(x, to.clone())
        } else {
            x
        }
    };
    Expr::BinaryExpr(BinaryExpr::new(
        Box::new(convert(left)),
        op,
        Box::new(convert(right)),
    ))
}

/// Applies AWS IoT SQL's mixed-type operator rules to `expr`.
pub fn aws_coercions(expr: Expr, schema: &DFSchema) -> Result<Expr> {
    expr.transform_up(|e| match &e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (lt, rt) = (left.get_type(schema)?, right.get_type(schema)?);
            let mixed = (is_string(&lt) && is_number(&rt)) || (is_number(&lt) && is_string(&rt));
            let (l, r) = (left.as_ref().clone(), right.as_ref().clone());
            let rewritten = match op {
                Operator::Eq | Operator::NotEq if mixed => {
                    let undefined = l.is_null().or(r.is_null());
                    when(undefined, lit(ScalarValue::Boolean(None)))
                        .otherwise(lit(*op == Operator::NotEq))?
                }
                Operator::Lt
                | Operator::LtEq
                | Operator::Gt
                | Operator::GtEq
                | Operator::Plus
                | Operator::Minus
                | Operator::Multiply
                | Operator::Divide
                | Operator::Modulo
                    if mixed =>
                {
                    strings_as(DataType::Float64, (l, &lt), *op, (r, &rt))
                }
                Operator::Plus if is_string(&lt) && is_string(&rt) => {
                    crate::dialect::functions::strings::plus(l, r)
                }
                Operator::Eq | Operator::NotEq
                    if (is_string(&lt) && rt == DataType::Boolean)
                        || (lt == DataType::Boolean && is_string(&rt)) =>
                {
                    strings_as(DataType::Boolean, (l, &lt), *op, (r, &rt))
                }
                Operator::And | Operator::Or if is_string(&lt) || is_string(&rt) => {
                    strings_as(DataType::Boolean, (l, &lt), *op, (r, &rt))
                }
                _ => return Ok(Transformed::no(e)),
            };
            Ok(Transformed::yes(rewritten))
        }
        Expr::Not(inner) if is_string(&inner.get_type(schema)?) => Ok(Transformed::yes(Expr::Not(
            Box::new(try_cast(inner.as_ref().clone(), DataType::Boolean)),
        ))),
        Expr::ScalarFunction(f) if wrong_argument_types(f, schema)? => {
            Ok(Transformed::yes(lit(ScalarValue::Null)))
        }
        Expr::ScalarFunction(f) => Ok(match crate::dialect::functions::bounded::meter_call(f) {
            Some(metered) => Transformed::yes(metered),
            None => Transformed::no(e),
        }),
        _ => Ok(Transformed::no(e)),
    })
    .map(|t| t.data)
}

/// Whether the function does not take its arguments' types although it takes that many
/// arguments (of some number or string type).
fn wrong_argument_types(f: &ScalarFunction, schema: &DFSchema) -> Result<bool> {
    let fields: Vec<FieldRef> = f
        .args
        .iter()
        .map(|a| a.to_field(schema).map(|(_, field)| field))
        .collect::<Result<_>>()?;
    if fields.is_empty() || fields_with_udf(&fields, f.func.as_ref()).is_ok() {
        return Ok(false);
    }
    let takes_that_many = [DataType::Float64, DataType::Int64, DataType::Utf8]
        .into_iter()
        .any(|t| {
            let plain: Vec<FieldRef> = fields
                .iter()
                .map(|_| Arc::new(Field::new("x", t.clone(), true)))
                .collect();
            fields_with_udf(&plain, f.func.as_ref()).is_ok()
        });
    Ok(takes_that_many)
}

/// A `WHERE` over a string field ("TRUE", "false") is a condition too.
pub fn as_condition(expr: Expr, schema: &DFSchema) -> Result<Expr> {
    Ok(if is_string(&expr.get_type(schema)?) {
        try_cast(expr, DataType::Boolean)
    } else {
        expr
    })
}
