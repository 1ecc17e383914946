//! What every family of functions needs: the call being rewritten, the conversions AWS
//! applies to arguments, expression builders, and the arguments of a UDF as arrays.

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast as cast_array;
use datafusion::arrow::datatypes::{DataType as ArrowType, Float64Type};
use datafusion::common::Result;
use datafusion::logical_expr::ScalarFunctionArgs;

use super::conversions::is_aws_number;
use datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken;
use datafusion::sql::sqlparser::ast::{BinaryOperator, CaseWhen, CastKind, DataType, Expr, Value};

/// A call of a function in a rule, its arguments already rewritten.
pub(super) struct Call<'a> {
    /// The name, lower case.
    pub name: &'a str,
    /// The name as the rule wrote it.
    pub written: &'a str,
    pub args: &'a [Expr],
}

impl Call<'_> {
    /// Refuses a call with another number of arguments than `n`.
    pub fn arity(&self, n: usize) -> Result<(), String> {
        self.arity_named(self.name, n)
    }

    /// [`Self::arity`], naming the function as the rule wrote it.
    pub fn arity_as_written(&self, n: usize) -> Result<(), String> {
        self.arity_named(self.written, n)
    }

    fn arity_named(&self, name: &str, n: usize) -> Result<(), String> {
        match self.args.len() {
            got if got == n => Ok(()),
            got => Err(format!("{name}() takes {n} argument(s), got {got}")),
        }
    }

    /// The `i`-th argument.
    pub fn arg(&self, i: usize) -> Expr {
        self.args[i].clone()
    }
}

/// `CAST(e AS VARCHAR)`: AWS string functions convert their arguments to strings.
pub(super) fn string(e: Expr) -> Expr {
    cast(e, DataType::Varchar(None))
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

/// `(left op right)`.
pub(super) fn binary(left: Expr, op: BinaryOperator, right: Expr) -> Expr {
    Expr::Nested(Box::new(Expr::BinaryOp {
        left: Box::new(left),
        op,
        right: Box::new(right),
    }))
}

/// A number literal.
pub(super) fn number(v: &str) -> Expr {
    Expr::value(Value::Number(v.into(), false))
}

/// A string literal.
pub(super) fn text(v: &str) -> Expr {
    Expr::value(Value::SingleQuotedString(v.into()))
}

/// `CASE WHEN condition THEN then END`: Undefined where the condition does not hold.
pub(super) fn only_if(condition: Expr, then: Expr) -> Expr {
    case(condition, then, None)
}

/// `CASE WHEN x IS NULL THEN then ELSE otherwise END`.
pub(super) fn if_undefined(x: Expr, then: Expr, otherwise: Expr) -> Expr {
    when(Expr::IsNull(Box::new(x)), then, otherwise)
}

/// `CASE WHEN condition THEN then ELSE otherwise END`.
pub(super) fn when(condition: Expr, then: Expr, otherwise: Expr) -> Expr {
    case(condition, then, Some(otherwise))
}

fn case(condition: Expr, then: Expr, otherwise: Option<Expr>) -> Expr {
    Expr::Case {
        case_token: AttachedToken::empty(),
        end_token: AttachedToken::empty(),
        operand: None,
        conditions: vec![CaseWhen {
            condition,
            result: then,
        }],
        else_result: otherwise.map(Box::new),
    }
}

/// `x` held to `low..=high`, an Undefined `x` staying Undefined (where `greatest()` and
/// `least()` would pass over it).
pub(super) fn held(x: Expr, low: Expr, high: Expr) -> Expr {
    let low_held = when(binary(x.clone(), BinaryOperator::Lt, low.clone()), low, x);
    when(
        binary(low_held.clone(), BinaryOperator::Gt, high.clone()),
        high,
        low_held,
    )
}

/// `x` converted to an Int as AWS converts one: a number or a String holding one, rounded
/// down; anything else Undefined (see [`Whole`]).
pub(super) fn whole(x: Expr) -> Expr {
    crate::dialect::ast::call(super::conversions::WHOLE, vec![x])
}

/// The name and the signature of one of weir's UDFs, whose struct keeps its signature in
/// a `signature` field: the part of every `ScalarUDFImpl` here that is the same.
macro_rules! name_and_signature {
    ($name:expr) => {
        fn name(&self) -> &str {
            $name
        }

        fn signature(&self) -> &datafusion::logical_expr::Signature {
            &self.signature
        }
    };
}
pub(super) use name_and_signature;

/// A UDF's arguments as arrays of the batch's length (literals repeated).
pub(super) fn arg_arrays(args: &ScalarFunctionArgs) -> Result<Vec<ArrayRef>> {
    args.args
        .iter()
        .map(|a| a.to_array(args.number_rows))
        .collect()
}

/// An argument AWS converts to an Int, row by row: a number or a numeric String, rounded
/// down; anything else (a Boolean, an Array, a String that is no number) is Undefined.
pub(super) enum Whole {
    Numbers(ArrayRef),
    Texts(ArrayRef),
    None,
}

impl Whole {
    pub(super) fn new(key: &ArrayRef) -> Result<Self> {
        Ok(if key.data_type().is_numeric() {
            Whole::Numbers(cast_array(key, &ArrowType::Float64)?)
        } else if crate::dialect::types::is_string(key.data_type()) {
            Whole::Texts(cast_array(key, &ArrowType::Utf8)?)
        } else {
            Whole::None
        })
    }

    /// The value at row `i`, if it converts.
    pub(super) fn at(&self, i: usize) -> Option<i64> {
        let v = match self {
            Whole::Numbers(a) => a
                .is_valid(i)
                .then(|| a.as_primitive::<Float64Type>().value(i))?,
            Whole::Texts(a) => {
                let t = a.as_string::<i32>();
                let t = t
                    .is_valid(i)
                    .then(|| t.value(i))
                    .filter(|t| is_aws_number(t))?;
                t.parse::<f64>().ok()?
            }
            Whole::None => return None,
        };
        // Finite; one beyond i64 saturates (`as` does), which is outside every value anyway.
        v.is_finite().then(|| v.floor() as i64)
    }
}
