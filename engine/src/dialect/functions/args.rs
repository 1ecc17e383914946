//! What every family of functions needs: the call being rewritten, the conversions AWS
//! applies to arguments, expression builders, and the arguments of a UDF as arrays.

use datafusion::arrow::array::ArrayRef;
use datafusion::common::Result;
use datafusion::logical_expr::ScalarFunctionArgs;
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

/// `CAST(e AS BIGINT)`: AWS bit functions convert their arguments to Int.
pub(super) fn int(e: Expr) -> Expr {
    cast(e, DataType::BigInt(None))
}

/// `CAST(e AS DOUBLE)`: a number, from a String if it holds one (Undefined if not).
pub(super) fn double(e: Expr) -> Expr {
    cast(
        e,
        DataType::Double(datafusion::sql::sqlparser::ast::ExactNumberInfo::None),
    )
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
    Expr::Case {
        case_token: AttachedToken::empty(),
        end_token: AttachedToken::empty(),
        operand: None,
        conditions: vec![CaseWhen {
            condition,
            result: then,
        }],
        else_result: None,
    }
}

/// `CASE WHEN x IS NULL THEN then ELSE otherwise END`.
pub(super) fn if_undefined(x: Expr, then: Expr, otherwise: Expr) -> Expr {
    Expr::Case {
        case_token: AttachedToken::empty(),
        end_token: AttachedToken::empty(),
        operand: None,
        conditions: vec![CaseWhen {
            condition: Expr::IsNull(Box::new(x)),
            result: then,
        }],
        else_result: Some(Box::new(otherwise)),
    }
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
