//! AWS IoT SQL's rules for operators on mixed types, applied to DataFusion logical
//! expressions once the batch schema (and so every operand's type) is known.
//!
//! DataFusion coerces like SQL: comparing a string with a number casts the string, and
//! fails on one that is not a number. AWS IoT SQL instead says:
//!
//! * `=` and `<>` between a string and a number: different types are never equal
//!   (`50 <> '50'` is true); an undefined operand keeps the result undefined.
//! * `<`, `<=`, `>`, `>=` and arithmetic other than `+` between a string and a number: the string is
//!   converted to a number if it is one, else the result is undefined (so a `WHERE` over
//!   it is false rather than an error).
//! * `+` with a string on either side concatenates, the other operand converted to a
//!   string (`'5' + 3` is `'53'`; a metered function, see
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
use datafusion::logical_expr::expr::{Cast, ScalarFunction};
use datafusion::logical_expr::type_coercion::functions::fields_with_udf;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, Operator, lit, try_cast, when};

use super::functions::bounded::meter_call;
use super::functions::values::{is_nested, is_string, json_text, number, plus};

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
        if !is_string(t) {
            x
        } else if to == DataType::Float64 {
            number(x)
        } else {
            try_cast(x, to.clone())
        }
    };
    Expr::BinaryExpr(BinaryExpr::new(
        Box::new(convert(left)),
        op,
        Box::new(convert(right)),
    ))
}

/// The operand kinds AWS's operator tables tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    Text,
    Boolean,
    Nested,
    /// The type of a literal NULL or of a field no message of the batch has.
    Undefined,
    Other,
}

impl Kind {
    fn of(t: &DataType) -> Self {
        if is_number(t) {
            Kind::Number
        } else if is_string(t) {
            Kind::Text
        } else if is_nested(t) {
            Kind::Nested
        } else {
            match t {
                DataType::Boolean => Kind::Boolean,
                DataType::Null => Kind::Undefined,
                _ => Kind::Other,
            }
        }
    }
}

/// Applies AWS IoT SQL's mixed-type operator rules to `expr`.
pub fn aws_coercions(expr: Expr, schema: &DFSchema) -> Result<Expr> {
    expr.transform_up(|e| match &e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (lt, rt) = (left.get_type(schema)?, right.get_type(schema)?);
            let (l, r) = (left.as_ref().clone(), right.as_ref().clone());
            let (lk, rk) = (Kind::of(&lt), Kind::of(&rt));
            let numeric = |k: Kind| matches!(k, Kind::Number | Kind::Text);
            let undefined = || lit(ScalarValue::Null);
            let rewritten = match op {
                // `+` with a String on either side converts the other operand to a String
                // and concatenates (`'5' + 3` is `'53'`).
                Operator::Plus if lk == Kind::Text || rk == Kind::Text => {
                    plus(to_text(l, schema)?, to_text(r, schema)?)
                }
                // Arithmetic and order: on numbers, and on Strings read as numbers
                // (Undefined when one is not); on anything else Undefined. Strings are
                // never compared as text.
                Operator::Plus
                | Operator::Minus
                | Operator::Multiply
                | Operator::Divide
                | Operator::Modulo
                | Operator::Lt
                | Operator::LtEq
                | Operator::Gt
                | Operator::GtEq => {
                    // Kind::Undefined is not numeric: it is Undefined too.
                    if !(numeric(lk) && numeric(rk)) {
                        undefined()
                    } else if lk == Kind::Text || rk == Kind::Text {
                        strings_as(DataType::Float64, (l, &lt), *op, (r, &rt))
                    } else {
                        return Ok(Transformed::no(e));
                    }
                }
                // Different types are never equal; an Undefined operand keeps the result
                // Undefined.
                Operator::Eq | Operator::NotEq
                    if lk != rk && lk != Kind::Undefined && rk != Kind::Undefined =>
                {
                    let undefined = l.is_null().or(r.is_null());
                    when(undefined, lit(ScalarValue::Boolean(None)))
                        .otherwise(lit(*op == Operator::NotEq))?
                }
                Operator::And | Operator::Or if is_string(&lt) || is_string(&rt) => {
                    strings_as(DataType::Boolean, (l, &lt), *op, (r, &rt))
                }
                _ => return Ok(Transformed::no(e)),
            };
            Ok(Transformed::yes(rewritten))
        }
        Expr::Cast(Cast { expr, field }) => {
            let data_type = field.data_type();
            let from = expr.get_type(schema)?;
            let inner = expr.as_ref().clone();
            let rewritten = match data_type {
                DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => {
                    to_text(inner, schema)?
                }
                // AWS: a String is read as a Decimal, which is rounded down.
                DataType::Int64 if is_string(&from) => try_cast(number(inner), DataType::Int64),
                DataType::Int64 if matches!(from, DataType::Float64 | DataType::Float32) => {
                    try_cast(inner, DataType::Int64)
                }
                DataType::Int64 | DataType::Float64 | DataType::Boolean if is_nested(&from) => {
                    lit(ScalarValue::Null)
                }
                DataType::Float64 if is_string(&from) => number(inner),
                DataType::Boolean if is_string(&from) => try_cast(inner, DataType::Boolean),
                _ => return Ok(Transformed::no(e)),
            };
            Ok(Transformed::yes(rewritten))
        }
        Expr::ScalarFunction(f) => aws_call(f, schema).map(Transformed::yes),
        _ => Ok(Transformed::no(e)),
    })
    .map(|t| t.data)
}

/// A function call with AWS's argument conversions, Undefined for arguments of types the
/// function does not take, and metered.
fn aws_call(f: &ScalarFunction, schema: &DFSchema) -> Result<Expr> {
    let name = f.name();
    let mut f = f.clone();
    let convert = |f: &mut ScalarFunction, to: fn(Expr, &DFSchema) -> Result<Expr>| {
        f.args = std::mem::take(&mut f.args)
            .into_iter()
            .map(|a| to(a, schema))
            .collect::<Result<_>>()?;
        Ok::<_, datafusion::common::DataFusionError>(())
    };
    if TEXT.contains(&name) {
        // AWS converts the arguments of a string function to Strings, an Array or Object
        // to its JSON text.
        convert(&mut f, to_text)?;
    }
    let numeric = NUMERIC.contains(&name);
    if numeric {
        // An argument that is Undefined in every message (some kernels fail on its type).
        for a in &f.args {
            if a.get_type(schema)? == DataType::Null {
                return Ok(lit(ScalarValue::Null));
            }
        }
        // AWS converts a String argument of a numeric function to a Decimal.
        convert(&mut f, |a, schema| {
            Ok(if is_string(&a.get_type(schema)?) {
                number(a)
            } else {
                a
            })
        })?;
    }
    if wrong_argument_types(&f, schema)? {
        return Ok(lit(ScalarValue::Null));
    }
    if name == "array_element"
        && let Some(first) = f.args.first()
    {
        // get(x, i): an item of an Array, a character of a String, Undefined for anything
        // else.
        let t = first.get_type(schema)?;
        if is_string(&t) {
            return character_at(&f);
        }
        if !matches!(
            t,
            DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..)
        ) {
            return Ok(lit(ScalarValue::Null));
        }
    }
    if numeric {
        return aws_numeric_result(f, schema);
    }
    Ok(meter_call(&f).unwrap_or_else(|| Expr::ScalarFunction(f)))
}

/// AWS's string functions that are DataFusion's, by DataFusion's names (`trim` is
/// `btrim`); the others convert their arguments in their rewrites.
const TEXT: &[&str] = &["lower", "upper", "btrim", "ltrim", "rtrim", "replace"];

/// `e` as the String AWS converts it to: numbers and Booleans written out, an Array or
/// Object as its JSON text; Null and Undefined stay Undefined.
fn to_text(e: Expr, schema: &DFSchema) -> Result<Expr> {
    let t = e.get_type(schema)?;
    Ok(if is_string(&t) || t == DataType::Null {
        e
    } else if is_nested(&t) {
        json_text(e)
    } else {
        try_cast(e, DataType::Utf8)
    })
}

/// `get(s, i)` of a String (planned as `array_element(s, i + 1)`): its character at the
/// 0-based index `i`, Undefined outside the string.
fn character_at(f: &ScalarFunction) -> Result<Expr> {
    use datafusion::functions::unicode::{character_length, substr};
    let (s, i) = (f.args[0].clone(), f.args[1].clone());
    let length = Expr::ScalarFunction(ScalarFunction::new_udf(character_length(), vec![s.clone()]));
    let inside = i.clone().gt_eq(lit(1)).and(i.clone().lt_eq(length));
    let char = Expr::ScalarFunction(ScalarFunction::new_udf(substr(), vec![s, i, lit(1)]));
    when(inside, char).end()
}

/// AWS's numeric functions, by their DataFusion names (`sign` is `signum`): a String
/// argument is converted to a Decimal, and a result that is not a real number (`acos(2)`,
/// `sqrt(-1)`) is Undefined.
const NUMERIC: &[&str] = &[
    "abs", "acos", "asin", "atan", "atan2", "ceil", "cos", "cosh", "exp", "floor", "ln", "log",
    "power", "round", "signum", "sin", "sinh", "sqrt", "tan", "tanh", "trunc",
];

/// The numeric functions whose result AWS gives as an Int.
const TO_INT: &[&str] = &["ceil", "floor", "round", "signum"];

/// The call `f` of a numeric function, with AWS's result: an Int for [`TO_INT`], Undefined
/// for what is not a real number.
fn aws_numeric_result(f: ScalarFunction, schema: &DFSchema) -> Result<Expr> {
    let name = f.name().to_owned();
    let first = f.args.first().cloned();
    let call =
        |f: &ScalarFunction| meter_call(f).unwrap_or_else(|| Expr::ScalarFunction(f.clone()));
    let mut out = call(&f);
    if name == "sqrt"
        && let Some(x) = first
    {
        // DataFusion's sqrt fails on a negative number.
        out = when(x.lt(lit(0)), lit(ScalarValue::Null)).otherwise(out)?;
    }
    // `round(x, places)` is DataFusion's, not AWS's: it keeps its Decimal.
    let aws_round = name != "round" || f.args.len() == 1;
    if TO_INT.contains(&name.as_str()) && aws_round {
        if !matches!(out.get_type(schema)?, DataType::Int64) {
            out = try_cast(out, DataType::Int64);
        }
        return Ok(out);
    }
    // NaN, what AWS calls an imaginary result, is Undefined: only these make one from
    // numbers JSON can carry (`sqrt` is guarded above).
    if matches!(name.as_str(), "acos" | "asin" | "ln" | "log" | "power") {
        let nan = ScalarFunction::new_udf(datafusion::functions::math::isnan(), vec![out.clone()]);
        out = when(Expr::ScalarFunction(nan), lit(ScalarValue::Null)).otherwise(out)?;
    }
    Ok(out)
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
