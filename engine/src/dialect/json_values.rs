//! Values whose JSON type is known only per message: `decode()` of a JSON document and
//! `concat()` of arrays that mix element types.
//!
//! Arrow columns have one type, so such a value travels as a string (`Utf8`) whose field
//! carries the metadata [`JSON_TEXT`]. Operators see the string (so `decode(x) > 50`
//! converts `"80"` as AWS converts a string), and the output encoder ([`Encoders`]) writes
//! the text as JSON where it is a JSON document, and as a JSON string where it is not:
//! `80` comes out as the number 80, `hello` as `"hello"`, `[1,"a"]` as an array.
//! A field that is always of one type never takes this path.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::writer::{
    Encoder, EncoderFactory, EncoderOptions, LineDelimited, NullableEncoder, WriterBuilder,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use serde_json::Value;

/// Field metadata key marking a string column as JSON text.
pub const JSON_TEXT: &str = "weir.json_text";

/// `__weir_json(s)`: the string `s`, marked as JSON text.
pub(super) const MARK: &str = "__weir_json";

/// `__weir_concat(a, b, ...)`: AWS's `concat` of two or more values.
pub(super) const CONCAT: &str = "__weir_concat";

/// A nullable string field named `name`, marked as JSON text.
pub fn json_text_field(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
        .with_metadata([(JSON_TEXT.to_owned(), "true".to_owned())].into())
}

fn is_json_text(f: &Field) -> bool {
    f.metadata().contains_key(JSON_TEXT)
}

/// An array, or JSON text (which may hold one): `concat()` makes an array of it.
fn is_list_or_text(f: &Field) -> bool {
    is_list(f.data_type()) || is_json_text(f)
}

fn is_list(t: &DataType) -> bool {
    matches!(
        t,
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..)
    )
}

/// Marks a string as JSON text.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct Mark {
    signature: Signature,
}

impl Mark {
    pub(super) fn new() -> Self {
        Self {
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Mark {
    fn name(&self) -> &str {
        MARK
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn return_field_from_args(&self, _args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(json_text_field("json")))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(args.args[0].clone())
    }
}

/// AWS's `concat` of two or more values: when one of them is an array, the array of all
/// their elements (other values become one element each), as JSON text; otherwise the
/// concatenation of their string forms. Undefined values are left out.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(super) struct Concat {
    signature: Signature,
}

impl Concat {
    pub(super) fn new() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

/// The JSON form of every value of `array` (`None` where it is null).
fn to_json(array: &ArrayRef) -> Result<Vec<Option<Value>>> {
    let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![Field::new(
        "v",
        array.data_type().clone(),
        true,
    )]));
    let batch = RecordBatch::try_new(schema, vec![array.clone()])?;
    // An object may hold JSON text (a mixed array): written as the JSON it is.
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(false)
        .with_encoder_factory(Arc::new(Encoders))
        .build::<_, LineDelimited>(Vec::new());
    writer.write(&batch)?;
    writer.finish()?;
    let text = writer.into_inner();
    text.split(|b| *b == b'\n')
        .take(array.len())
        .map(|line| {
            let mut row: serde_json::Map<String, Value> = serde_json::from_slice(line)
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            Ok(row.remove("v"))
        })
        .collect()
}

impl ScalarUDFImpl for Concat {
    fn name(&self) -> &str {
        CONCAT
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

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
        let arrays = super::functions::arg_arrays(&args)?;
        let string_forms = |i: usize| -> Result<String> {
            let mut s = String::new();
            for a in &arrays {
                if !a.is_null(i) {
                    s.push_str(&array_value_to_string(a, i)?);
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
                            serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_owned()))
                        })
                    })
                    .collect())
            })
            .collect::<Result<Vec<_>>>()?;
        for i in 0..n {
            // Without an array among this message's values, the strings are concatenated.
            if !values.iter().any(|v| matches!(v[i], Some(Value::Array(_)))) {
                out.append_value(string_forms(i)?);
                continue;
            }
            let mut items = Vec::new();
            for vals in &values {
                match &vals[i] {
                    None => {}
                    Some(Value::Array(elements)) => items.extend(elements.iter().cloned()),
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

/// The output encoders: JSON text columns as JSON, everything else as arrow-json does.
#[derive(Debug)]
pub struct Encoders;

struct JsonTextEncoder<'a>(&'a datafusion::arrow::array::StringArray);

impl Encoder for JsonTextEncoder<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        let text = self.0.value(idx);
        if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            out.extend_from_slice(text.trim().as_bytes());
        } else {
            serde_json::to_writer(&mut *out, text).expect("writing to a Vec cannot fail");
        }
    }
}

impl EncoderFactory for Encoders {
    fn make_default_encoder<'a>(
        &self,
        field: &'a FieldRef,
        array: &'a dyn Array,
        _options: &'a EncoderOptions,
    ) -> std::result::Result<Option<NullableEncoder<'a>>, ArrowError> {
        if !field.metadata().contains_key(JSON_TEXT) || array.data_type() != &DataType::Utf8 {
            return Ok(None);
        }
        let strings = array.as_string::<i32>();
        Ok(Some(NullableEncoder::new(
            Box::new(JsonTextEncoder(strings)),
            strings.nulls().cloned(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(texts: &[Option<&str>]) -> String {
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            json_text_field("v"),
        ]));
        let array: ArrayRef = Arc::new(datafusion::arrow::array::StringArray::from(texts.to_vec()));
        let batch = RecordBatch::try_new(schema, vec![array]).unwrap();
        let mut w = WriterBuilder::new()
            .with_explicit_nulls(false)
            .with_encoder_factory(Arc::new(Encoders))
            .build::<_, LineDelimited>(Vec::new());
        w.write(&batch).unwrap();
        w.finish().unwrap();
        String::from_utf8(w.into_inner()).unwrap()
    }

    #[test]
    fn json_text_is_written_as_json_or_as_a_string() {
        assert_eq!(
            encode(&[
                Some("80"),
                Some("hello"),
                Some(r#"[1,"a"]"#),
                None,
                Some(" true ")
            ]),
            "{\"v\":80}\n{\"v\":\"hello\"}\n{\"v\":[1,\"a\"]}\n{}\n{\"v\":true}\n"
        );
    }
}
