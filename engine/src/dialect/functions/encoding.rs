//! Encodings: `encode(value, 'base64')` (also of the raw payload, `encode(*, 'base64')`)
//! and `decode(value, 'base64')`. A decoded JSON document is that document (`80` is a
//! number), other text a string: the result is JSON text (see [`crate::json_text`]).

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, StringBuilder};

use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr, Value};

use super::args::{Call, binary, number, string, text};
use super::udf::name_and_signature;
use crate::dialect::CallError;
use crate::dialect::ast::call;
use crate::json_text::json_text_field;
use crate::meta;

/// `__weir_json(s)`: the string `s`, marked as JSON text.
const MARK: &str = "__weir_json";

/// `__weir_decode_base64(s)`: AWS's `decode(s, 'base64')`.
const DECODE_BASE64: &str = "__weir_decode_base64";

/// The family's kernels.
pub(super) fn udfs() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(Mark::new()),
        ScalarUDF::from(DecodeBase64 {
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
        }),
    ]
}

/// The rewrite of an encoding function, if `c` calls one.
pub(super) fn rewrite(c: &Call) -> Option<Result<Expr, CallError>> {
    let a = |i: usize| c.arg(i);
    let out = match c.name {
        "decode" => c.arity(2).map(|()| {
            if is_base64(&c.args[1]) {
                call(DECODE_BASE64, vec![string(a(0))])
            } else {
                call(MARK, vec![string(call("decode", vec![string(a(0)), a(1)]))])
            }
        }),
        "encode" => c.arity(2).map(|()| {
            // `encode(*, ...)` encodes the payload's bytes as received.
            let is_payload = matches!(&c.args[0], Expr::Identifier(i) if i.value == meta::PAYLOAD);
            let e = call(
                "encode",
                vec![if is_payload { a(0) } else { string(a(0)) }, a(1)],
            );
            // DataFusion's base64 has no padding; AWS's (standard base64) has.
            if is_base64(&c.args[1]) {
                pad_base64(e)
            } else {
                e
            }
        }),
        _ => return None,
    };
    Some(out)
}

/// Whether a scheme argument is the literal `'base64'`.
fn is_base64(scheme: &Expr) -> bool {
    matches!(scheme, Expr::Value(v)
        if matches!(&v.value, Value::SingleQuotedString(s) if s.eq_ignore_ascii_case("base64")))
}

/// `rpad(e, ceil(len / 4) * 4, '=')`.
fn pad_base64(e: Expr) -> Expr {
    let len = call("character_length", vec![e.clone()]);
    let padded = binary(
        binary(
            binary(len, BinaryOperator::Plus, number("3")),
            BinaryOperator::Divide,
            number("4"),
        ),
        BinaryOperator::Multiply,
        number("4"),
    );
    call("rpad", vec![e, padded, text("=")])
}

/// Marks a string as JSON text.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Mark {
    signature: Signature,
}

impl Mark {
    fn new() -> Self {
        Self {
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for Mark {
    name_and_signature!(MARK);

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

/// `decode(s, 'base64')`: the text the base64 holds (padding optional, as Java's decoder
/// takes it; bytes that are not UTF-8 replaced), as JSON text, so that a JSON document is
/// that document. Text that is not base64 gives `null`, as the reference says.
#[derive(Debug, PartialEq, Eq, Hash)]
struct DecodeBase64 {
    signature: Signature,
}

impl ScalarUDFImpl for DecodeBase64 {
    name_and_signature!(DECODE_BASE64);

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn return_field_from_args(&self, _args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(json_text_field("json")))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        use base64::Engine as _;
        use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
        const BASE64: GeneralPurpose = GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
        );
        let n = args.number_rows;
        let texts = args.args[0].to_array(n)?;
        let mut out = StringBuilder::with_capacity(n, n * 16);
        for t in texts.as_string::<i32>() {
            match t {
                None => out.append_null(),
                Some(t) => match BASE64.decode(t) {
                    Ok(bytes) => out.append_value(String::from_utf8_lossy(&bytes)),
                    Err(_) => out.append_value("null"),
                },
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
