//! Numbers: `mod`, `remainder`, `bitand`, `bitor`, `bitxor`, `bitnot`, `sign` and `nanvl`.
//! Each is a rewrite into DataFusion's operators and functions; the bit functions convert
//! their arguments to Int, as AWS does.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, StringBuilder};
use datafusion::arrow::compute::kernels::zip::zip;
use datafusion::arrow::compute::{cast, is_not_null};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr};

use super::args::{Call, binary, held, number, whole};
use super::udf::{arg_arrays, name_and_signature};
use crate::dialect::CallError;
use crate::dialect::ast::call;
use crate::json_text::{json_text_field, json_text_of};

/// `__weir_nanvl(x, fallback)`: AWS's `nanvl`.
const NANVL: &str = "__weir_nanvl";

/// The family's kernels.
pub(super) fn udfs() -> Vec<ScalarUDF> {
    vec![ScalarUDF::from(Nanvl {
        signature: Signature::any(2, Volatility::Immutable),
    })]
}

/// The rewrite of a math function, if `c` calls one.
pub(super) fn rewrite(c: &Call) -> Option<Result<Expr, CallError>> {
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
        "nanvl" => c.arity(2).map(|()| call(NANVL, vec![a(0), a(1)])),
        // trunc(x, places): places rounded down and held to 0..=34.
        "trunc" if c.args.len() == 2 => {
            let places = held(whole(a(1)), number("0"), number("34"));
            Ok(call("trunc", vec![a(0), places]))
        }
        _ => return None,
    };
    Some(out)
}

/// `nanvl(x, fallback)`: `x`, or `fallback` where `x` is Undefined, null or a NaN. Of two
/// values of one type the result has that type, of two numbers it is a Decimal; otherwise
/// its JSON type is known per message and it is JSON text (see [`crate::json_text`]).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Nanvl {
    signature: Signature,
}

/// The type `nanvl` gives for its arguments' types, or `None` for JSON text.
fn nanvl_type(x: &DataType, fallback: &DataType) -> Option<DataType> {
    if x == fallback || fallback == &DataType::Null {
        Some(x.clone())
    } else if x == &DataType::Null {
        Some(fallback.clone())
    } else if x.is_numeric() && fallback.is_numeric() {
        Some(DataType::Float64)
    } else {
        None
    }
}

impl ScalarUDFImpl for Nanvl {
    name_and_signature!(NANVL);

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(nanvl_type(&arg_types[0], &arg_types[1]).unwrap_or(DataType::Utf8))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let [x, fallback] = args.arg_fields else {
            unreachable!("the signature takes two arguments")
        };
        Ok(match nanvl_type(x.data_type(), fallback.data_type()) {
            Some(t) => Arc::new(Field::new(NANVL, t, true)),
            None => Arc::new(json_text_field(NANVL)),
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = arg_arrays(&args)?;
        let (x, fallback) = (&arrays[0], &arrays[1]);
        // Where x is kept: defined, not null, not a NaN.
        let keep: BooleanArray = match x.as_primitive_opt::<Float64Type>() {
            Some(d) => d
                .iter()
                .map(|v| Some(v.is_some_and(|v| !v.is_nan())))
                .collect(),
            None => is_not_null(x)?,
        };
        let out: ArrayRef = match nanvl_type(x.data_type(), fallback.data_type()) {
            Some(t) => zip(&keep, &cast(x, &t)?, &cast(fallback, &t)?)?,
            None => {
                let (xs, fs) = (
                    super::values::to_json(x)?,
                    super::values::to_json(fallback)?,
                );
                let mut out = StringBuilder::with_capacity(x.len(), x.len() * 8);
                for (i, keep) in keep.values().iter().enumerate() {
                    match if keep { &xs[i] } else { &fs[i] } {
                        None => out.append_null(),
                        Some(v) => out.append_value(json_text_of(v)),
                    }
                }
                Arc::new(out.finish())
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}
