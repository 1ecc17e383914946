//! What every kernel of weir's functions (a DataFusion `ScalarUDFImpl`) has the same: its
//! name and signature, and its arguments as arrays.

use datafusion::arrow::array::ArrayRef;
use datafusion::common::Result;
use datafusion::logical_expr::ScalarFunctionArgs;

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
