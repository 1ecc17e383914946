//! Conversions: `CAST(x AS <type>)` with AWS's type names (Int, Decimal, Bool/Boolean,
//! String), and the ones DataFusion knows under those names.

use std::sync::Arc;

use datafusion::arrow::array::StringBuilder;
use datafusion::arrow::datatypes::DataType as ArrowType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast::{DataType, ExactNumberInfo};

use super::args::name_and_signature;

/// `__weir_json_text(x)`: an Array or Object as the String AWS makes of it, its JSON text
/// (`lower(['HELLO'])` is `'["hello"]'`).
const JSON_TEXT: &str = "__weir_json_text";

/// `__weir_not(x)`: AWS's `NOT`: of a Boolean, or of the Strings "true" and "false" (any
/// case); Undefined for anything else. DataFusion's planner refuses `NOT` over a String
/// before the types are known.
pub(crate) const NOT: &str = "__weir_not";

/// `__weir_number(s)`: a String read as a Decimal the way AWS reads one: the whole text
/// must be `-?digits(.digits)?(e-?digits)?` (`"5"`, `"-1.2"`, `"5E-12"`); anything else
/// (`" 5"`, `"+5"`, `".5"`, `"NaN"`) is Undefined.
pub(crate) fn number(e: datafusion::logical_expr::Expr) -> datafusion::logical_expr::Expr {
    let kernel = Number {
        signature: Signature::uniform(1, vec![ArrowType::Utf8], Volatility::Immutable),
    };
    super::bounded::metered_call(kernel, vec![e])
}

/// Whether `s` is a number as AWS writes one (see [`number`]).
pub(super) fn is_aws_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    if !digits(&mut i) {
        return false;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == b.len()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Number {
    signature: Signature,
}

impl ScalarUDFImpl for Number {
    name_and_signature!("__weir_number");

    fn return_type(&self, _arg_types: &[ArrowType]) -> Result<ArrowType> {
        Ok(ArrowType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::arrow::array::{AsArray, Float64Array};
        let a = args.args[0].to_array(args.number_rows)?;
        let out: Float64Array = a
            .as_string::<i32>()
            .iter()
            .map(|t| t.filter(|t| is_aws_number(t)).and_then(|t| t.parse().ok()))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_are_read_as_aws_writes_them() {
        for ok in ["0", "-1.2", "5E-12", "5e3", "12", "-0.5"] {
            assert!(super::is_aws_number(ok), "{ok}");
        }
        for bad in [
            "", " 5", "5 ", "+5", ".5", "5.", "1e+3", "0x10", "NaN", "inf", "-", "1e",
        ] {
            assert!(!super::is_aws_number(bad), "{bad}");
        }
    }
}

/// `__weir_whole(x)`: `x` converted to an Int as AWS converts an index: a number or a
/// String holding one, rounded down (saturating at the ends of Int64); Undefined for
/// anything else.
pub(crate) const WHOLE: &str = "__weir_whole";

/// The family's kernels.
pub(super) fn udfs() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(Not {
            signature: Signature::any(1, Volatility::Immutable),
        }),
        ScalarUDF::from(ToWhole {
            signature: Signature::any(1, Volatility::Immutable),
        }),
    ]
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ToWhole {
    signature: Signature,
}

impl ScalarUDFImpl for ToWhole {
    name_and_signature!(WHOLE);

    fn return_type(&self, _arg_types: &[ArrowType]) -> Result<ArrowType> {
        Ok(ArrowType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let values = super::args::Whole::new(&args.args[0].to_array(n)?)?;
        let out: datafusion::arrow::array::Int64Array = (0..n).map(|i| values.at(i)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Not {
    signature: Signature,
}

impl ScalarUDFImpl for Not {
    name_and_signature!(NOT);

    fn return_type(&self, _arg_types: &[ArrowType]) -> Result<ArrowType> {
        Ok(ArrowType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::arrow::array::{Array, AsArray, BooleanArray};
        let n = args.number_rows;
        let a = args.args[0].to_array(n)?;
        let out: BooleanArray = match a.data_type() {
            ArrowType::Boolean => datafusion::arrow::compute::not(a.as_boolean())?,
            ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Utf8View => {
                let text = datafusion::arrow::compute::cast(&a, &ArrowType::Utf8)?;
                text.as_string::<i32>()
                    .iter()
                    .map(|t| match t {
                        Some(t) if t.eq_ignore_ascii_case("true") => Some(false),
                        Some(t) if t.eq_ignore_ascii_case("false") => Some(true),
                        _ => None,
                    })
                    .collect()
            }
            _ => BooleanArray::new_null(a.len()),
        };
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// The call `__weir_json_text(e)`, metered like every function.
pub(crate) fn json_text(e: datafusion::logical_expr::Expr) -> datafusion::logical_expr::Expr {
    let kernel = JsonText {
        signature: Signature::any(1, Volatility::Immutable),
    };
    super::bounded::metered_call(kernel, vec![e])
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonText {
    signature: Signature,
}

impl ScalarUDFImpl for JsonText {
    name_and_signature!(JSON_TEXT);

    fn return_type(&self, _arg_types: &[ArrowType]) -> Result<ArrowType> {
        Ok(ArrowType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let array = args.args[0].to_array(args.number_rows)?;
        let values = super::collections::to_json(&array)?;
        let mut out = StringBuilder::new();
        for v in values {
            match v {
                None | Some(serde_json::Value::Null) => out.append_null(),
                Some(serde_json::Value::String(s)) => out.append_value(s),
                Some(v) => out.append_value(v.to_string()),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// The DataFusion type of an AWS type name in `CAST(x AS <type>)`, where they differ.
pub(crate) fn cast_type(t: &DataType) -> Option<DataType> {
    match t {
        DataType::Int(_) | DataType::Integer(_) => Some(DataType::BigInt(None)),
        DataType::Decimal(_) => Some(DataType::Double(ExactNumberInfo::None)),
        // AWS's names for a String that DataFusion does not know.
        DataType::String(_) | DataType::Nvarchar(_) => Some(DataType::Varchar(None)),
        DataType::Custom(name, _) if name.to_string().eq_ignore_ascii_case("ntext") => {
            Some(DataType::Varchar(None))
        }
        _ => None,
    }
}
