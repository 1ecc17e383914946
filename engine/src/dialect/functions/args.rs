//! What every family of functions needs to rewrite a call: the call being rewritten, the
//! conversions AWS applies to arguments, and builders of the expressions it becomes.

use datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken;
use datafusion::sql::sqlparser::ast::{BinaryOperator, CaseWhen, CastKind, DataType, Expr, Value};

use super::values::WHOLE;
use crate::dialect::CallError;

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
    pub fn arity(&self, n: usize) -> Result<(), CallError> {
        self.arity_named(self.name, n)
    }

    /// [`Self::arity`], naming the function as the rule wrote it.
    pub fn arity_as_written(&self, n: usize) -> Result<(), CallError> {
        self.arity_named(self.written, n)
    }

    fn arity_named(&self, name: &str, n: usize) -> Result<(), CallError> {
        match self.args.len() {
            got if got == n => Ok(()),
            got => Err(CallError::Arity {
                name: name.to_owned(),
                expected: n,
                got,
            }),
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
/// down; anything else Undefined (see [`super::values::Whole`]).
pub(super) fn whole(x: Expr) -> Expr {
    crate::dialect::ast::call(WHOLE, vec![x])
}
