//! Conversions: `CAST(x AS <type>)` with AWS's type names (Int, Decimal, Bool/Boolean,
//! String), and the ones DataFusion knows under those names.

use datafusion::sql::sqlparser::ast::{DataType, ExactNumberInfo};

/// The DataFusion type of an AWS type name in `CAST(x AS <type>)`, where they differ.
pub(crate) fn cast_type(t: &DataType) -> Option<DataType> {
    match t {
        DataType::Int(_) | DataType::Integer(_) => Some(DataType::BigInt(None)),
        DataType::Decimal(_) => Some(DataType::Double(ExactNumberInfo::None)),
        DataType::String(_) => Some(DataType::Varchar(None)),
        _ => None,
    }
}
