//! The message and its context: `topic()`, `topic(n)`, `clientid()`, `thingName()`,
//! `principal()`, `sourceip()`, `timestamp()`, `traceid()`, `newuuid()`,
//! `get_mqtt_property(name)` and `get_user_properties([key])`.
//!
//! Each becomes a reference to a metadata column (see [`crate::meta`]) that the rule adds
//! to its batches, recorded in the rule's [`MetaNeeds`]; `topic(n)` is a UDF over the
//! topic column.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast::{Expr, Ident};

use super::args::Call;
use super::udf::name_and_signature;
use crate::dialect::CallError;
use crate::dialect::ast::{call, string_literal};
use crate::meta::{self, MetaNeeds};

/// `topic(n)`: the n-th level (1-based) of the topic, or NULL past the last level.
pub(crate) const TOPIC_LEVEL: &str = "__weir_topic_level";

/// The family's kernels.
pub(super) fn udfs() -> Vec<ScalarUDF> {
    vec![ScalarUDF::from(TopicLevel::new())]
}

fn column(name: &str) -> Expr {
    Expr::Identifier(Ident::new(name))
}

fn quoted_column(name: String) -> Expr {
    Expr::Identifier(Ident::with_quote('`', name))
}

/// The functions without arguments that are one metadata column each: the column, and
/// the flag saying the rule reads it.
fn plain_column<'a>(name: &str, needs: &'a mut MetaNeeds) -> Option<(&'static str, &'a mut bool)> {
    Some(match name {
        "clientid" | "thingname" => (meta::CLIENT_ID, &mut needs.client_id),
        "principal" => (meta::PRINCIPAL, &mut needs.principal),
        "sourceip" => (meta::SOURCE_IP, &mut needs.source_ip),
        "timestamp" => (meta::TIMESTAMP, &mut needs.timestamp),
        "traceid" => (meta::TRACE_ID, &mut needs.trace_id),
        _ => return None,
    })
}

/// The rewrite of a context function, if `c` calls one.
pub(super) fn rewrite(c: &Call, needs: &mut MetaNeeds) -> Option<Result<Expr, CallError>> {
    if let Some((name, read)) = plain_column(c.name, needs) {
        return Some(c.arity_as_written(0).map(|()| {
            *read = true;
            column(name)
        }));
    }
    let out = match c.name {
        "topic" if c.args.is_empty() => {
            needs.topic = true;
            Ok(column(meta::TOPIC))
        }
        "topic" => c.arity_as_written(1).map(|()| {
            needs.topic = true;
            call(TOPIC_LEVEL, vec![column(meta::TOPIC), c.arg(0)])
        }),
        "newuuid" => c.arity(0).map(|()| call("uuid", vec![])),
        "get_mqtt_property" => c.arity_as_written(1).and_then(|()| {
            let known = crate::MqttProperties::NAMES;
            match string_literal(&c.args[0]) {
                Some(p) if known.contains(&p) => {
                    needs.mqtt.insert(p.to_owned());
                    Ok(quoted_column(meta::mqtt_property(p)))
                }
                _ => Err(CallError::MqttPropertyName),
            }
        }),
        "get_user_properties" => {
            let key = match c.args {
                [] => None,
                [k] if let Some(k) = string_literal(k) => Some(k.to_owned()),
                _ => {
                    return Some(Err(CallError::UserPropertyKey));
                }
            };
            let column = meta::user_properties(key.as_deref());
            needs.user_properties.insert(key);
            Ok(quoted_column(column))
        }
        _ => return None,
    };
    Some(out)
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
    name_and_signature!(TOPIC_LEVEL);

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
