//! weir's own scalar functions, as DataFusion UDFs with vectorised bodies.
//!
//! The message-context functions of the dialect (`topic(n)` and friends) are rewritten by
//! [`super`] into calls of these over the batch's metadata columns.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// `topic(n)`: the n-th level (1-based) of the topic, or NULL past the last level.
pub const TOPIC_LEVEL: &str = "__weir_topic_level";

/// Every function weir adds to DataFusion's registry.
pub fn all() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(TopicLevel::new()),
        ScalarUDF::from(super::time::ParseTime::new()),
        ScalarUDF::from(super::time::TimeToEpoch::new()),
        ScalarUDF::from(super::hashes::Hash::sha1()),
        ScalarUDF::from(super::hashes::Hash::crc32()),
        ScalarUDF::from(super::hashes::Hash::md2()),
        ScalarUDF::from(super::collections::EnrichArray::new()),
        ScalarUDF::from(super::json_values::Mark::new()),
        ScalarUDF::from(super::json_values::Concat::new()),
    ]
}

/// A UDF's arguments as arrays of the batch's length (literals repeated).
pub(super) fn arg_arrays(args: &ScalarFunctionArgs) -> Result<Vec<ArrayRef>> {
    args.args
        .iter()
        .map(|a| a.to_array(args.number_rows))
        .collect()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TopicLevel {
    signature: Signature,
}

impl TopicLevel {
    fn new() -> Self {
        Self {
            signature: Signature::exact(
                vec![DataType::Utf8, DataType::Int64],
                Volatility::Immutable,
            ),
        }
    }
}

fn level(topic: &str, n: i64) -> Option<&str> {
    if n < 1 {
        return None;
    }
    topic.split('/').nth((n - 1) as usize)
}

impl ScalarUDFImpl for TopicLevel {
    fn name(&self) -> &str {
        TOPIC_LEVEL
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [topics, n] = args.args.as_slice() else {
            return exec_err!("topic(n) takes one argument");
        };
        // The level is almost always a literal: take the fast path.
        if let ColumnarValue::Scalar(ScalarValue::Int64(n)) = n {
            let n = n.unwrap_or(0);
            return Ok(match topics {
                ColumnarValue::Scalar(ScalarValue::Utf8(t)) => ColumnarValue::Scalar(
                    ScalarValue::Utf8(t.as_deref().and_then(|t| level(t, n)).map(str::to_owned)),
                ),
                ColumnarValue::Array(arr) => {
                    let arr = arr.as_string::<i32>();
                    let mut out =
                        StringBuilder::with_capacity(arr.len(), arr.value_data().len() / 2);
                    for t in arr.iter() {
                        out.append_option(t.and_then(|t| level(t, n)));
                    }
                    ColumnarValue::Array(Arc::new(out.finish()) as ArrayRef)
                }
                other => return exec_err!("topic(n): unexpected topic value {other:?}"),
            });
        }
        let len = args.number_rows;
        let topics = topics.to_array(len)?;
        let ns = n.to_array(len)?;
        let topics = topics.as_string::<i32>();
        let ns = ns.as_primitive::<Int64Type>();
        let mut out = StringBuilder::with_capacity(len, 0);
        for i in 0..len {
            if topics.is_null(i) || ns.is_null(i) {
                out.append_null();
            } else {
                out.append_option(level(topics.value(i), ns.value(i)));
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_one_based() {
        assert_eq!(level("a/b/c", 1), Some("a"));
        assert_eq!(level("a/b/c", 3), Some("c"));
        assert_eq!(level("a/b/c", 4), None);
        assert_eq!(level("a/b/c", 0), None);
        assert_eq!(level("/x", 1), Some(""));
    }
}
