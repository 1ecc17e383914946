//! Values whose JSON type is known only per message: `decode()` of a JSON document,
//! `concat()` of arrays that mix element types, an array in a payload whose elements mix
//! JSON types.
//!
//! Arrow columns have one type, so such a value travels as a string (`Utf8`) whose field
//! carries the metadata [`JSON_TEXT`]. Operators see the string (so `decode(x) > 50`
//! converts `"80"` as AWS converts a string), and the output encoder ([`Encoders`]) writes
//! the text as JSON where it is a JSON document, and as a JSON string where it is not:
//! `80` comes out as the number 80, `hello` as `"hello"`, `[1,"a"]` as an array.
//! A field that is always of one type never takes this path.

use std::io::Write;
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, AsArray, Float64Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::writer::{
    Encoder, EncoderFactory, EncoderOptions, LineDelimited, NullableEncoder, WriterBuilder,
    make_encoder,
};
use datafusion::arrow::record_batch::RecordBatch;

/// Field metadata key marking a string column as JSON text.
pub const JSON_TEXT: &str = "weir.json_text";

/// A nullable string field named `name`, marked as JSON text.
pub fn json_text_field(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
        .with_metadata([(JSON_TEXT.to_owned(), "true".to_owned())].into())
}

/// Whether a field is marked as JSON text.
pub fn is_json_text(f: &Field) -> bool {
    f.metadata().contains_key(JSON_TEXT)
}

/// A value as JSON text: a String as itself unless it reads as JSON (then quoted, so that
/// it stays a String), anything else as its JSON.
pub fn json_text_of(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s)
            if serde_json::from_str::<serde::de::IgnoredAny>(s).is_err() =>
        {
            s.clone()
        }
        other => other.to_string(),
    }
}

/// Writes a batch as JSON lines, one object per row, the way rules write their outputs:
/// null (undefined) values are left out, and JSON text columns are written as the JSON
/// they hold. With `whole_decimals_as_ints` (AWS IoT SQL 2016-03-23), a Decimal that is a
/// whole number is written as an Int: `10.0` as `10`.
pub fn write_lines(
    batch: &RecordBatch,
    whole_decimals_as_ints: bool,
) -> Result<Vec<u8>, ArrowError> {
    let mut writer = WriterBuilder::new()
        .with_explicit_nulls(false)
        .with_encoder_factory(Arc::new(Encoders {
            whole_decimals_as_ints,
        }))
        .build::<_, LineDelimited>(Vec::new());
    writer.write(batch)?;
    writer.finish()?;
    Ok(writer.into_inner())
}

/// The output encoders: JSON text columns as JSON, whole Decimals perhaps as Ints,
/// everything else as arrow-json does.
#[derive(Debug)]
struct Encoders {
    whole_decimals_as_ints: bool,
}

/// The encoders' options without [`Encoders`]: arrow-json's own encoders.
static PLAIN: LazyLock<EncoderOptions> = LazyLock::new(EncoderOptions::default);

/// `v` as an Int, where it is a whole number that an `i64` holds exactly (|v| < 2^53):
/// how AWS IoT SQL 2016-03-23 writes such a Decimal.
pub fn whole_number(v: f64) -> Option<i64> {
    (v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0).then_some(v as i64)
}

/// Decimals, with whole numbers written as Ints and the rest as arrow-json writes them.
struct WholeAsInt<'a> {
    values: &'a Float64Array,
    plain: NullableEncoder<'a>,
}

impl Encoder for WholeAsInt<'_> {
    fn encode(&mut self, idx: usize, out: &mut Vec<u8>) {
        if let Some(i) = whole_number(self.values.value(idx)) {
            write!(out, "{i}").expect("writing to a Vec cannot fail");
        } else {
            self.plain.encode(idx, out);
        }
    }
}

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
    ) -> Result<Option<NullableEncoder<'a>>, ArrowError> {
        if self.whole_decimals_as_ints && array.data_type() == &DataType::Float64 {
            let values = array.as_primitive::<Float64Type>();
            return Ok(Some(NullableEncoder::new(
                Box::new(WholeAsInt {
                    values,
                    plain: make_encoder(field, array, &PLAIN)?,
                }),
                values.nulls().cloned(),
            )));
        }
        if !is_json_text(field) || array.data_type() != &DataType::Utf8 {
            return Ok(None);
        }
        let strings = array.as_string::<i32>();
        Ok(Some(NullableEncoder::new(
            Box::new(JsonTextEncoder(strings)),
            strings.nulls().cloned(),
        )))
    }
}

/// Whether two JSON values say the same, numbers compared as numbers (`10` is `10.0`, and
/// floats within a relative 1e-9, the last digits a printing may change): how a rule's
/// output is checked against an expected one, by the golden tests and by a rule's own.
pub fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()),
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_the_same_by_value() {
        use serde_json::json;
        assert!(same_json(
            &json!([{"a": 90, "b": [1.5]}]),
            &json!([{"b": [1.5], "a": 90.0}])
        ));
        assert!(!same_json(&json!({"a": 1}), &json!({"a": 1, "b": null})));
        assert!(!same_json(&json!(["1"]), &json!([1])));
    }
    use datafusion::arrow::array::{ArrayRef, StringArray};
    use datafusion::arrow::datatypes::Schema;

    fn encode(texts: &[Option<&str>]) -> String {
        let schema = Arc::new(Schema::new(vec![json_text_field("v")]));
        let array: ArrayRef = Arc::new(StringArray::from(texts.to_vec()));
        let batch = RecordBatch::try_new(schema, vec![array]).unwrap();
        String::from_utf8(write_lines(&batch, true).unwrap()).unwrap()
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
