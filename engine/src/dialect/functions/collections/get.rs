//! `get(x, key)` as the reference's table says, for a key that is not a whole-number
//! literal: of an Array, the item at the key converted to an Int (a number or numeric
//! String rounded down); of a String, the character there; of an Object, the member the
//! key names (a String, not converted); Undefined for anything else, for a key that does
//! not convert and for an index outside the Array or String.
//!
//! With a literal key the result has the member's type; with a computed key an Object's
//! member may differ in type per message, so it is JSON text (see [`crate::json_text`]),
//! as is anything taken from JSON text.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder, UInt32Array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature,
};
use serde_json::Value as JsonValue;

use crate::dialect::functions::udf::name_and_signature;
use crate::dialect::functions::values::{Whole, is_string, to_json};
use crate::json_text::{is_json_text, json_text_field, json_text_of};

/// `__weir_get(x, key)`: AWS's `get`.
pub(crate) const GET: &str = "__weir_get";

#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct Get {
    pub(super) signature: Signature,
}

impl ScalarUDFImpl for Get {
    name_and_signature!(GET);

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        plan_err!("{GET}() has its type from its arguments")
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let x = &args.arg_fields[0];
        let undefined = || Arc::new(Field::new(GET, DataType::Null, true));
        Ok(match x.data_type() {
            DataType::Struct(fields) => match args.scalar_arguments.get(1).copied().flatten() {
                Some(ScalarValue::Utf8(Some(k))) => {
                    fields.find(k).map_or_else(undefined, |(_, f)| f.clone())
                }
                Some(_) => undefined(),
                None => Arc::new(json_text_field(GET)),
            },
            DataType::List(item) => Arc::new(item.as_ref().clone().with_name(GET)),
            t if is_string(t) && is_json_text(x) => Arc::new(json_text_field(GET)),
            t if is_string(t) => Arc::new(Field::new(GET, DataType::Utf8, true)),
            _ => undefined(),
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let x = args.args[0].to_array(n)?;
        let key = args.args[1].to_array(n)?;
        let index = Whole::new(&key)?;
        let out: ArrayRef = match x.data_type() {
            _ if args.return_field.data_type() == &DataType::Null => {
                datafusion::arrow::array::new_null_array(&DataType::Null, n)
            }
            DataType::Struct(_) if !is_json_text(&args.return_field) => {
                let ColumnarValue::Scalar(ScalarValue::Utf8(Some(k))) = &args.args[1] else {
                    unreachable!("a typed member comes from a literal key")
                };
                let s = x.as_struct();
                let c = s
                    .column_by_name(k)
                    .expect("the field was found at planning");
                // A child may hold values where its parent is null (Undefined).
                if s.null_count() > 0 {
                    datafusion::arrow::compute::nullif(c, &datafusion::arrow::compute::is_null(s)?)?
                } else {
                    c.clone()
                }
            }
            DataType::List(_) => {
                let list = x.as_list::<i32>();
                let offsets = list.value_offsets();
                let at: UInt32Array = (0..n)
                    .map(|i| {
                        let k = index.at(i)?;
                        let len = i64::from(offsets[i + 1] - offsets[i]);
                        (!list.is_null(i) && (0..len).contains(&k))
                            .then(|| u32::try_from(i64::from(offsets[i]) + k).ok())
                            .flatten()
                    })
                    .collect();
                take(list.values().as_ref(), &at, None)?
            }
            t if is_string(t) && !is_json_text(&args.return_field) => {
                let text = cast(&x, &DataType::Utf8)?;
                let text = text.as_string::<i32>();
                let mut out = StringBuilder::with_capacity(n, n);
                for i in 0..n {
                    match text
                        .is_valid(i)
                        .then(|| character(text.value(i), index.at(i)))
                    {
                        Some(Some(c)) => out.append_value(c),
                        _ => out.append_null(),
                    }
                }
                Arc::new(out.finish())
            }
            // An Object with a computed key, or JSON text: by each value's JSON type.
            _ => {
                let values = json_values(&x)?;
                let names = is_string(key.data_type())
                    .then(|| cast(&key, &DataType::Utf8))
                    .transpose()?;
                let name = |i: usize| {
                    let names = names.as_ref()?.as_string::<i32>();
                    names.is_valid(i).then(|| names.value(i))
                };
                let mut out = StringBuilder::with_capacity(n, n * 8);
                for (i, value) in values.iter().enumerate() {
                    let item = match value {
                        Some(JsonValue::Object(members)) => {
                            name(i).and_then(|k| members.get(k)).cloned()
                        }
                        Some(JsonValue::Array(items)) => index
                            .at(i)
                            .and_then(|k| usize::try_from(k).ok())
                            .and_then(|k| items.get(k))
                            .cloned(),
                        Some(JsonValue::String(s)) => {
                            character(s, index.at(i)).map(JsonValue::String)
                        }
                        _ => None,
                    };
                    match item {
                        Some(v) if !v.is_null() => out.append_value(json_text_of(&v)),
                        _ => out.append_null(),
                    }
                }
                Arc::new(out.finish())
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// The JSON value of every row of `x`: of JSON text, the document it holds (or the
/// String, where it holds none); of anything else, its JSON form.
fn json_values(x: &ArrayRef) -> Result<Vec<Option<JsonValue>>> {
    if !is_string(x.data_type()) {
        return to_json(x);
    }
    let text = cast(x, &DataType::Utf8)?;
    Ok(text
        .as_string::<i32>()
        .iter()
        .map(|t| {
            t.map(|t| serde_json::from_str(t).unwrap_or_else(|_| JsonValue::String(t.to_owned())))
        })
        .collect())
}

/// The character of `s` at `index`, if there is one.
fn character(s: &str, index: Option<i64>) -> Option<String> {
    let i = usize::try_from(index?).ok()?;
    s.chars().nth(i).map(String::from)
}
