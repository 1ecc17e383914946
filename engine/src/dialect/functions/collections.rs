//! Collections: `get(object, 'key')`, `get(array, index)`, `concat(...)` (also of
//! arrays) and `transform('enrichArray', object, array)`.
//!
//! * `transform('enrichArray', object, array)`: every object of `array` gets the members
//!   of `object` added (the object's win on a clash). Vectorised: the object's columns are
//!   repeated per element with one `take` each, the list offsets are reused as they are.
//! * `concat` of values among which an array: the array of all their elements, as JSON
//!   text (the elements may mix types); of other values, their string forms joined.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, ListArray, StringBuilder, StructArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr, Value};

use super::args::{Call, binary, number, only_if, text};
use super::udf::{arg_arrays, name_and_signature};
use super::values::to_json;
use crate::dialect::CallError;
use crate::dialect::ast::call;
use crate::json_text::{is_json_text, json_text_field};

mod get;

type JsonValue = serde_json::Value;

const ENRICH: &str = "__weir_enrich_array";

/// `__weir_member(value, 'key')`: a member of what a function returned (`decode(x,
/// 'base64').temperature`): of an object, or of the JSON document a String holds.
pub(crate) const MEMBER: &str = "__weir_member";

/// `__weir_concat(a, b, ...)`: AWS's `concat` of two or more values.
const CONCAT: &str = "__weir_concat";

/// The family's kernels.
pub(super) fn udfs() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(EnrichArray::new()),
        ScalarUDF::from(Concat::new()),
        ScalarUDF::from(Member {
            signature: Signature::any(2, Volatility::Immutable),
        }),
        ScalarUDF::from(get::Get {
            signature: Signature::any(2, Volatility::Immutable),
        }),
    ]
}

/// The rewrite of a collection function, if `c` calls one.
pub(super) fn rewrite(c: &Call) -> Option<Result<Expr, CallError>> {
    let a = |i: usize| c.arg(i);
    let out = match c.name {
        // Any mode but 'enrichArray' is Undefined.
        "transform" => c.arity(3).map(|()| {
            let enrich = call(ENRICH, vec![a(1), a(2)]);
            match &c.args[0] {
                Expr::Value(v) if matches!(&v.value, Value::SingleQuotedString(m) if m == "enrichArray") => {
                    enrich
                }
                Expr::Value(_) => Expr::value(Value::Null),
                mode => only_if(
                    binary(mode.clone(), BinaryOperator::Eq, text("enrichArray")),
                    enrich,
                ),
            }
        }),
        // concat() is Undefined, concat(x) is x; with an array among the values, an array.
        "concat" => Ok(match c.args.len() {
            0 => Expr::value(Value::Null),
            1 => a(0),
            _ => call(CONCAT, c.args.to_vec()),
        }),
        "get" => c.arity(2).map(|()| match &c.args[1] {
            // A negative index is outside every array: Undefined.
            Expr::UnaryOp {
                op: datafusion::sql::sqlparser::ast::UnaryOperator::Minus,
                expr,
            } if matches!(expr.as_ref(), Expr::Value(v) if matches!(v.value, Value::Number(..))) => {
                Expr::value(Value::Null)
            }
            // A whole-number index: DataFusion's, which indexes arrays from 1.
            key => match literal_index(key) {
                Some(i) => call("array_element", vec![a(0), number(&(i + 1).to_string())]),
                None => call(get::GET, vec![a(0), a(1)]),
            },
        }),
        _ => return None,
    };
    Some(out)
}

/// A key that is a whole-number literal (below `i64::MAX`, so that one more is one too).
fn literal_index(key: &Expr) -> Option<i64> {
    match key {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse::<i64>().ok().filter(|i| *i < i64::MAX),
            _ => None,
        },
        _ => None,
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct EnrichArray {
    signature: Signature,
}

impl EnrichArray {
    fn new() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

/// The element fields of the result: the array's, then the object's (replacing clashes).
fn merged(element: &Fields, object: &Fields) -> Fields {
    let mut out: Vec<Arc<Field>> = element
        .iter()
        .filter(|f| object.find(f.name()).is_none())
        .cloned()
        .collect();
    out.extend(object.iter().cloned());
    Fields::from(out)
}

/// The object's and the array elements' fields, or `None` where the arguments are not an
/// object and an array of objects (the result is then Undefined).
fn shapes(arg_types: &[DataType]) -> Option<(Fields, Fields)> {
    match arg_types {
        [DataType::Struct(object), DataType::List(item)] => match item.data_type() {
            DataType::Struct(element) => Some((object.clone(), element.clone())),
            DataType::Null => Some((object.clone(), Fields::empty())),
            _ => None,
        },
        _ => None,
    }
}

impl ScalarUDFImpl for EnrichArray {
    name_and_signature!(ENRICH);

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(match shapes(arg_types) {
            Some((object, element)) => DataType::List(Arc::new(Field::new_list_field(
                DataType::Struct(merged(&element, &object)),
                true,
            ))),
            None => DataType::Null,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let [object, array] = args.args.as_slice() else {
            return exec_err!("transform() takes 3 arguments");
        };
        let (object, array) = (object.to_array(n)?, array.to_array(n)?);
        if matches!(args.return_field.data_type(), DataType::Null) {
            return Ok(ColumnarValue::Array(
                datafusion::arrow::array::new_null_array(args.return_field.data_type(), n),
            ));
        }
        let object = object.as_struct();
        let list = array.as_list::<i32>();
        let elements = list.values().as_struct_opt();
        // For every element, the row it belongs to.
        let offsets = list.value_offsets();
        let mut rows = Vec::with_capacity(list.values().len());
        for row in 0..list.len() {
            let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
            rows.extend(std::iter::repeat_n(row as u32, end - start));
        }
        let rows = UInt32Array::from(rows);
        let DataType::List(item) = args.return_field.data_type() else {
            return exec_err!("transform(): unexpected return type");
        };
        let DataType::Struct(fields) = item.data_type() else {
            return exec_err!("transform(): unexpected element type");
        };
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.len());
        for f in fields.iter() {
            let column = match object.column_by_name(f.name()) {
                Some(c) => take(c.as_ref(), &rows, None)?,
                None => match elements.and_then(|e| e.column_by_name(f.name())) {
                    Some(c) => c.clone(),
                    None => datafusion::arrow::array::new_null_array(f.data_type(), rows.len()),
                },
            };
            columns.push(column);
        }
        let values = StructArray::try_new(
            fields.clone(),
            columns,
            elements.and_then(|e| e.nulls().cloned()),
        )?;
        let out = ListArray::try_new(
            item.clone(),
            list.offsets().clone(),
            Arc::new(values),
            list.nulls().cloned(),
        )?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// An array, or JSON text (which may hold one): `concat()` makes an array of it.
fn is_list_or_text(f: &Field) -> bool {
    matches!(
        f.data_type(),
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..)
    ) || is_json_text(f)
}

/// AWS's `concat` of two or more values: when one of them is an array, the array of all
/// their elements (other values become one element each), as JSON text; otherwise the
/// concatenation of their string forms. Undefined values are left out.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Concat {
    signature: Signature,
}

impl Concat {
    fn new() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Concat {
    name_and_signature!(CONCAT);

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(if args.arg_fields.iter().any(|f| is_list_or_text(f)) {
            Arc::new(json_text_field("json"))
        } else {
            Arc::new(Field::new(CONCAT, DataType::Utf8, true))
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let arrays = arg_arrays(&args)?;
        // An Object's (or Array's) String form is its JSON text.
        let json_forms = arrays
            .iter()
            .map(|a| match a.data_type() {
                DataType::Struct(_) | DataType::Map(..) | DataType::List(_) => to_json(a).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>>>()?;
        let string_forms = |i: usize| -> Result<String> {
            let mut s = String::new();
            for (a, json) in arrays.iter().zip(&json_forms) {
                if a.is_null(i) {
                    continue;
                }
                match json {
                    Some(values) => {
                        if let Some(v) = &values[i] {
                            s.push_str(&v.to_string());
                        }
                    }
                    None => s.push_str(&array_value_to_string(a, i)?),
                }
            }
            Ok(s)
        };
        let mut out = StringBuilder::with_capacity(n, n * 16);
        if !args.arg_fields.iter().any(|f| is_list_or_text(f)) {
            for i in 0..n {
                out.append_value(string_forms(i)?);
            }
            return Ok(ColumnarValue::Array(Arc::new(out.finish())));
        }
        let values = arrays
            .iter()
            .zip(&args.arg_fields)
            .map(|(a, f)| {
                if !is_json_text(f) {
                    return to_json(a);
                }
                // JSON text: the document it holds, or the string itself.
                let texts = a.as_string::<i32>();
                Ok(texts
                    .iter()
                    .map(|t| {
                        t.map(|t| {
                            serde_json::from_str(t)
                                .unwrap_or_else(|_| JsonValue::String(t.to_owned()))
                        })
                    })
                    .collect())
            })
            .collect::<Result<Vec<_>>>()?;
        for i in 0..n {
            // Without an array among this message's values, the strings are concatenated.
            if !values
                .iter()
                .any(|v| matches!(v[i], Some(JsonValue::Array(_))))
            {
                out.append_value(string_forms(i)?);
                continue;
            }
            let mut items = Vec::new();
            for vals in &values {
                match &vals[i] {
                    None => {}
                    Some(JsonValue::Array(elements)) => items.extend(elements.iter().cloned()),
                    Some(v) => items.push(v.clone()),
                }
            }
            match serde_json::to_string(&items) {
                Ok(s) => out.append_value(s),
                Err(e) => return exec_err!("concat(): {e}"),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Member {
    signature: Signature,
}

impl Member {
    /// The member's name: the second argument, a string literal.
    fn key<'a>(args: &'a [Option<&'a datafusion::common::ScalarValue>]) -> Result<&'a str> {
        match args.get(1).copied().flatten() {
            Some(datafusion::common::ScalarValue::Utf8(Some(k))) => Ok(k),
            _ => plan_err!("{MEMBER}() takes a member name"),
        }
    }
}

impl ScalarUDFImpl for Member {
    name_and_signature!(MEMBER);

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        plan_err!("{MEMBER}() has its type from its arguments")
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let key = Self::key(args.scalar_arguments)?;
        Ok(match args.arg_fields[0].data_type() {
            DataType::Struct(fields) => match fields.iter().find(|f| f.name() == key) {
                Some(f) => f.clone(),
                None => Arc::new(Field::new(MEMBER, DataType::Null, true)),
            },
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                Arc::new(json_text_field(MEMBER))
            }
            _ => Arc::new(Field::new(MEMBER, DataType::Null, true)),
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let value = args.args[0].to_array(n)?;
        let key = match &args.args[1] {
            ColumnarValue::Scalar(datafusion::common::ScalarValue::Utf8(Some(k))) => k.clone(),
            _ => return exec_err!("{MEMBER}() takes a member name"),
        };
        match value.data_type() {
            DataType::Struct(_) => {
                let s = value.as_struct();
                Ok(ColumnarValue::Array(match s.column_by_name(&key) {
                    // A child may hold values where its parent is null (Undefined).
                    Some(c) if s.null_count() > 0 => {
                        let parent_null = datafusion::arrow::compute::is_null(s)?;
                        datafusion::arrow::compute::nullif(c, &parent_null)?
                    }
                    Some(c) => c.clone(),
                    None => datafusion::arrow::array::new_null_array(&DataType::Null, n),
                }))
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                let text = datafusion::arrow::compute::cast(&value, &DataType::Utf8)?;
                let mut out = StringBuilder::new();
                for t in text.as_string::<i32>() {
                    let member = t
                        .and_then(|t| serde_json::from_str::<JsonValue>(t).ok())
                        .and_then(|mut v| v.get_mut(&key).map(JsonValue::take));
                    match member {
                        Some(m) if !m.is_null() => out.append_value(m.to_string()),
                        _ => out.append_null(),
                    }
                }
                Ok(ColumnarValue::Array(Arc::new(out.finish())))
            }
            _ => Ok(ColumnarValue::Array(
                datafusion::arrow::array::new_null_array(&DataType::Null, n),
            )),
        }
    }
}
