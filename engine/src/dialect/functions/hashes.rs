//! Hashes: `md5`, `sha1`, `sha224`, `sha256`, `sha384`, `sha512`, `md2` (hex strings)
//! and `crc32` (the checksum as an integer). Non-string arguments are hashed as their
//! string form, as AWS does. The SHA-2 family and MD5 are DataFusion's functions, hex
//! encoded; `sha1`, `md2` and `crc32`, which DataFusion lacks, are UDFs here.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Builder, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast::Expr;
use sha1::Digest;

use super::args::{Call, string, text};
use crate::dialect::CallError;
use crate::dialect::ast::call;

/// The family's kernels.
pub(super) fn udfs() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(Hash::sha1()),
        ScalarUDF::from(Hash::crc32()),
        ScalarUDF::from(Hash::md2()),
    ]
}

/// The rewrite of a hash function, if `c` calls one.
pub(super) fn rewrite(c: &Call) -> Option<Result<Expr, CallError>> {
    let out = match c.name {
        // AWS returns hex strings where DataFusion returns bytes.
        "sha224" | "sha256" | "sha384" | "sha512" => c.arity(1).map(|()| {
            call(
                "encode",
                vec![call(c.name, vec![string(c.arg(0))]), text("hex")],
            )
        }),
        "md5" => c.arity(1).map(|()| call("md5", vec![string(c.arg(0))])),
        "sha1" | "crc32" | "md2" => c
            .arity(1)
            .map(|()| call(&format!("__weir_{}", c.name), vec![string(c.arg(0))])),
        _ => return None,
    };
    Some(out)
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Hash {
    name: &'static str,
    signature: Signature,
}

impl Hash {
    fn sha1() -> Self {
        Self::new("__weir_sha1")
    }

    fn crc32() -> Self {
        Self::new("__weir_crc32")
    }

    fn md2() -> Self {
        Self::new("__weir_md2")
    }

    fn new(name: &'static str) -> Self {
        Self {
            name,
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

impl ScalarUDFImpl for Hash {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(if self.name == "__weir_crc32" {
            DataType::Int64
        } else {
            DataType::Utf8
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [input] = args.args.as_slice() else {
            return exec_err!("{}() takes one argument", self.name);
        };
        let input = input.to_array(args.number_rows)?;
        let strings = input.as_string::<i32>();
        let out: ArrayRef = if self.name == "__weir_crc32" {
            let mut b = Int64Builder::with_capacity(strings.len());
            for s in strings.iter() {
                b.append_option(s.map(|s| i64::from(crc32fast::hash(s.as_bytes()))));
            }
            Arc::new(b.finish())
        } else {
            let digest = |s: &str| {
                if self.name == "__weir_md2" {
                    hex(&md2::Md2::digest(s.as_bytes()))
                } else {
                    hex(&sha1::Sha1::digest(s.as_bytes()))
                }
            };
            let mut b = StringBuilder::with_capacity(strings.len(), strings.len() * 40);
            for s in strings.iter() {
                b.append_option(s.map(digest));
            }
            Arc::new(b.finish())
        };
        Ok(ColumnarValue::Array(out))
    }
}
