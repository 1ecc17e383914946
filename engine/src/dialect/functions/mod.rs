//! Every SQL function a rule can call, in one place: one file per family, each with the
//! rewrites and the kernels (DataFusion UDFs) of its functions.
//!
//! | family | functions |
//! |---|---|
//! | [`context`] | `topic()`, `topic(n)`, `clientid()`, `thingName()`, `principal()`, `sourceip()`, `timestamp()`, `traceid()`, `newuuid()`, `get_mqtt_property()`, `get_user_properties()` |
//! | [`nulls`] | `isNull()`, `isUndefined()`, `get_or_default()`, `=`/`<>` with JSON `null` |
//! | [`math`] | `mod`, `remainder`, `bitand`, `bitor`, `bitxor`, `bitnot`, `sign`, `nanvl` |
//! | [`strings`] | `startswith`, `endswith`, `indexof`, `length`, `numbytes`, `substring`, `lpad`, `rpad` |
//! | [`regex`] | `regexp_matches`, `regexp_replace`, `regexp_substr` (Java syntax) |
//! | [`encoding`] | `encode`, `decode` |
//! | [`hashes`] | `md2`, `md5`, `sha1`, `sha224`, `sha256`, `sha384`, `sha512`, `crc32` |
//! | [`collections`] | `get` (computed keys in `collections/get.rs`), `concat`, `transform` |
//! | [`time`] | `parse_time`, `time_to_epoch` |
//! | [`shadows`] | `get_thing_shadow` (read through the program's [`shadows::ShadowReader`]) |
//! | [`conversions`] | `CAST(x AS Int \| Decimal \| Boolean \| String)`, AWS's `NOT` (`__weir_not`) |
//!
//! A call is resolved by [`resolve`]: functions that call AWS services are refused with
//! the reason ([`unsupported`]); an AWS function becomes the expression its family
//! rewrites it into (DataFusion functions and operators with AWS's argument conversions,
//! or a call of one of the family's UDFs); any other DataFusion scalar function is kept
//! as it is (a weir extension of the dialect); aggregates, window functions and unknown
//! names are refused.
//!
//! What the families share, each a leaf they import: `args.rs` (the call being rewritten
//! and builders of the expressions it becomes), `udf.rs` (what every kernel has the same),
//! [`values`] (AWS's values and their conversions: a String read as a number, any value
//! as an Int (`__weir_whole`) or as its JSON text, `+` of Strings; the operators of
//! [`crate::dialect::types`] use them too) and [`bounded`] (the meter every call goes
//! through).

mod args;
pub(crate) mod bounded;
pub(super) mod collections;
pub(super) mod context;
pub(super) mod conversions;
pub(super) mod encoding;
pub(super) mod hashes;
pub(super) mod math;
pub(super) mod nulls;
pub(super) mod regex;
pub mod shadows;
pub(super) mod strings;
pub(super) mod time;
mod udf;
pub(crate) mod values;

use datafusion::execution::SessionState;
use datafusion::logical_expr::ScalarUDF;
use datafusion::sql::sqlparser::ast::{self, Expr};

pub(crate) use conversions::cast_type;

use crate::dialect::CallError;
use crate::dialect::ast::function_args;
use crate::meta::MetaNeeds;

/// Every UDF weir adds to DataFusion's registry.
pub fn udfs() -> Vec<ScalarUDF> {
    [
        context::udfs(),
        encoding::udfs(),
        hashes::udfs(),
        collections::udfs(),
        time::udfs(),
        conversions::udfs(),
        math::udfs(),
        regex::udfs(),
        bounded::udfs(),
        values::udfs(),
    ]
    .concat()
}

/// What the call `f` becomes: `Ok(Some(expr))` to replace it with, `Ok(None)` to keep it
/// (DataFusion plans it as it is), or why it is refused. The metadata columns it reads go
/// to `needs`.
pub(super) fn resolve(
    state: &SessionState,
    f: &ast::Function,
    needs: &mut MetaNeeds,
) -> Result<Option<Expr>, CallError> {
    let written = f.name.to_string();
    let name = written.to_ascii_lowercase();
    if let Some(why) = unsupported(&name) {
        return Err(CallError::Unsupported { name: written, why });
    }
    let args = function_args(f)?;
    let c = args::Call {
        name: &name,
        written: &written,
        args: &args,
    };
    let rewritten = context::rewrite(&c, needs)
        .or_else(|| nulls::rewrite(&c, needs))
        .or_else(|| math::rewrite(&c))
        .or_else(|| strings::rewrite(&c))
        .or_else(|| regex::rewrite(&c))
        .or_else(|| encoding::rewrite(&c))
        .or_else(|| hashes::rewrite(&c))
        .or_else(|| collections::rewrite(&c))
        .or_else(|| shadows::rewrite(&c));
    if let Some(r) = rewritten {
        return r.map(Some);
    }
    // Both forms of a nested SELECT, and the metered identity of its lambdas: the calls
    // inside are checked one by one.
    if name == crate::dialect::nested::SELECT_FROM
        || name == bounded::MATERIALIZE
        || name == collections::MEMBER
        || name == conversions::NOT
    {
        return Ok(None);
    }
    if name.starts_with("__weir") {
        return Err(CallError::Unknown(written));
    }
    if state.scalar_functions().contains_key(&name)
        || state.higher_order_functions().contains_key(&name)
    {
        if f.over.is_some() || f.filter.is_some() {
            return Err(CallError::WindowClause);
        }
        return Ok(None);
    }
    if state.aggregate_functions().contains_key(&name)
        || state.window_functions().contains_key(&name)
    {
        return Err(CallError::Aggregate(written));
    }
    Err(CallError::Unknown(written))
}

/// AWS IoT functions that call other AWS services: refused with this reason.
pub(super) fn unsupported(name: &str) -> Option<&'static str> {
    match name {
        "aws_lambda"
        | "get_dynamodb"
        | "get_secret"
        | "get_registry_data"
        | "machinelearning_predict" => Some("calls an AWS service, which weir does not do"),
        "accountid" => Some("names the AWS account that owns the rule, and weir has none"),
        _ => None,
    }
}
