//! AWS's values and the conversions between them that the operators ([`crate::dialect::types`])
//! and the function families share: which Arrow types are Strings and nested values, what
//! text is a number as AWS writes one, a String read as a Decimal (`__weir_number`), any
//! value as an Int (`__weir_whole`, [`Whole`]), as JSON ([`to_json`]) and as its JSON
//! text (`__weir_json_text`), and `+` of two Strings (`__weir_text_plus`).
//!
//! A leaf: it imports no family and not the operators, only the meter every call goes
//! through ([`super::bounded`]) and what every kernel has the same ([`super::udf`]).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::compute::cast as cast_array;
use datafusion::arrow::datatypes::{DataType as ArrowType, Field, Float64Type};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::bounded::metered_call;
use super::udf::{arg_arrays, name_and_signature};
use crate::json_text;

type JsonValue = serde_json::Value;

/// Whether a type is one of Arrow's string types.
pub(crate) fn is_string(t: &ArrowType) -> bool {
    matches!(
        t,
        ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Utf8View
    )
}

/// Whether a type is an Array or an Object (a list, struct or map).
pub(crate) fn is_nested(t: &ArrowType) -> bool {
    matches!(
        t,
        ArrowType::List(_)
            | ArrowType::LargeList(_)
            | ArrowType::FixedSizeList(..)
            | ArrowType::Struct(_)
            | ArrowType::Map(..)
    )
}

/// `__weir_number(s)`: a String read as a Decimal the way AWS reads one: the whole text
/// must be `-?digits(.digits)?(e-?digits)?` (`"5"`, `"-1.2"`, `"5E-12"`); anything else
/// (`" 5"`, `"+5"`, `".5"`, `"NaN"`) is Undefined.
pub(crate) fn number(e: Expr) -> Expr {
    let kernel = Number {
        signature: Signature::uniform(1, vec![ArrowType::Utf8], Volatility::Immutable),
    };
    metered_call(kernel, vec![e])
}

/// Whether `s` is a number as AWS writes one (see [`number`]).
pub(crate) fn is_aws_number(s: &str) -> bool {
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
        use datafusion::arrow::array::Float64Array;
        let a = args.args[0].to_array(args.number_rows)?;
        let out: Float64Array = a
            .as_string::<i32>()
            .iter()
            .map(|t| t.filter(|t| is_aws_number(t)).and_then(|t| t.parse().ok()))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// `__weir_whole(x)`: `x` converted to an Int as AWS converts an index: a number or a
/// String holding one, rounded down (saturating at the ends of Int64); Undefined for
/// anything else.
pub(crate) const WHOLE: &str = "__weir_whole";

/// The kernels the dialect calls by name (the others it plans directly, metered).
pub(super) fn udfs() -> Vec<ScalarUDF> {
    vec![ScalarUDF::from(ToWhole {
        signature: Signature::any(1, Volatility::Immutable),
    })]
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
        let values = Whole::new(&args.args[0].to_array(n)?)?;
        let out: datafusion::arrow::array::Int64Array = (0..n).map(|i| values.at(i)).collect();
        Ok(ColumnarValue::Array(Arc::new(out)))
    }
}

/// An argument AWS converts to an Int, row by row: a number or a numeric String, rounded
/// down; anything else (a Boolean, an Array, a String that is no number) is Undefined.
pub(crate) enum Whole {
    Numbers(ArrayRef),
    Texts(ArrayRef),
    None,
}

impl Whole {
    pub(crate) fn new(key: &ArrayRef) -> Result<Self> {
        Ok(if key.data_type().is_numeric() {
            Whole::Numbers(cast_array(key, &ArrowType::Float64)?)
        } else if is_string(key.data_type()) {
            Whole::Texts(cast_array(key, &ArrowType::Utf8)?)
        } else {
            Whole::None
        })
    }

    /// The value at row `i`, if it converts.
    pub(crate) fn at(&self, i: usize) -> Option<i64> {
        let v = match self {
            Whole::Numbers(a) => a
                .is_valid(i)
                .then(|| a.as_primitive::<Float64Type>().value(i))?,
            Whole::Texts(a) => {
                let t = a.as_string::<i32>();
                let t = t
                    .is_valid(i)
                    .then(|| t.value(i))
                    .filter(|t| is_aws_number(t))?;
                t.parse::<f64>().ok()?
            }
            Whole::None => return None,
        };
        // Finite; one beyond i64 saturates (`as` does), which is outside every value anyway.
        v.is_finite().then(|| v.floor() as i64)
    }
}

/// The JSON form of every value of `array` (`None` where it is null).
pub(crate) fn to_json(array: &ArrayRef) -> Result<Vec<Option<JsonValue>>> {
    let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![Field::new(
        "v",
        array.data_type().clone(),
        true,
    )]));
    let batch = RecordBatch::try_new(schema, vec![array.clone()])?;
    // An object may hold JSON text (a mixed array): written as the JSON it is.
    let text = json_text::write_lines(&batch, false)?;
    text.split(|b| *b == b'\n')
        .take(array.len())
        .map(|line| {
            let mut row: serde_json::Map<String, JsonValue> = serde_json::from_slice(line)
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            Ok(row.remove("v"))
        })
        .collect()
}

/// `__weir_json_text(x)`: an Array or Object as the String AWS makes of it, its JSON text
/// (`lower(['HELLO'])` is `'["hello"]'`).
const JSON_TEXT: &str = "__weir_json_text";

/// The call `__weir_json_text(e)`, metered like every function.
pub(crate) fn json_text(e: Expr) -> Expr {
    let kernel = JsonText {
        signature: Signature::any(1, Volatility::Immutable),
    };
    metered_call(kernel, vec![e])
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
        let values = to_json(&array)?;
        let mut out = StringBuilder::new();
        for v in values {
            match v {
                None | Some(JsonValue::Null) => out.append_null(),
                Some(JsonValue::String(s)) => out.append_value(s),
                Some(v) => out.append_value(v.to_string()),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `a + b` of two strings, AWS's concatenation (Undefined when either is): a call of
/// [`TextPlus`], metered like every function, rather than DataFusion's `||` operator,
/// which no memory check can reach.
pub(crate) fn plus(l: Expr, r: Expr) -> Expr {
    metered_call(TextPlus::new(), vec![l, r])
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TextPlus {
    signature: Signature,
}

impl TextPlus {
    fn new() -> Self {
        Self {
            signature: Signature::uniform(2, vec![ArrowType::Utf8], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for TextPlus {
    name_and_signature!("__weir_text_plus");

    fn return_type(&self, _arg_types: &[ArrowType]) -> Result<ArrowType> {
        Ok(ArrowType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use datafusion::arrow::compute::kernels::concat_elements::concat_elements_utf8;
        use datafusion::common::ScalarValue;
        if let [ColumnarValue::Scalar(l), ColumnarValue::Scalar(r)] = args.args.as_slice() {
            let text = |v: &ScalarValue| match v {
                ScalarValue::Utf8(s) => s.clone(),
                _ => None,
            };
            let joined = text(l).zip(text(r)).map(|(l, r)| l + &r);
            return Ok(ColumnarValue::Scalar(ScalarValue::Utf8(joined)));
        }
        let arrays = arg_arrays(&args)?;
        let (l, r) = (arrays[0].as_string::<i32>(), arrays[1].as_string::<i32>());
        Ok(ColumnarValue::Array(Arc::new(concat_elements_utf8(l, r)?)))
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
