//! Conversions: `CAST(x AS <type>)` with AWS's type names (Int, Decimal, Bool/Boolean,
//! String), and the ones DataFusion knows under those names.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType as ArrowType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast::{DataType, ExactNumberInfo};

use super::udf::name_and_signature;

/// `__weir_not(x)`: AWS's `NOT`: of a Boolean, or of the Strings "true" and "false" (any
/// case); Undefined for anything else. DataFusion's planner refuses `NOT` over a String
/// before the types are known.
pub(crate) const NOT: &str = "__weir_not";

/// The family's kernels.
pub(super) fn udfs() -> Vec<ScalarUDF> {
    vec![ScalarUDF::from(Not {
        signature: Signature::any(1, Volatility::Immutable),
    })]
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
