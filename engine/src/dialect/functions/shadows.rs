//! `get_thing_shadow(thing[, shadow], roleArn)`: a device shadow's document, read when
//! the rule runs.
//!
//! AWS's forms are `(thing, roleArn)` and `(thing, shadow, roleArn)`; weir takes
//! `(thing)` too. Of two arguments, a second that is a string literal starting with
//! `arn:` is the role (accepted and ignored, so that AWS's SQL runs unchanged); any other
//! second argument names the shadow. The result is the shadow's get document (`state`
//! with its `delta`, `metadata`, `version`, `timestamp`) as JSON text, so that
//! `get_thing_shadow(...).state.reported.temp` reads a member; Undefined when the shadow
//! does not exist.
//!
//! The engine knows no store: the program that runs it hands it a [`ShadowReader`]
//! ([`crate::Engine::read_shadows_with`]). A batch asks it once for every distinct
//! (thing, shadow) its rows name, and reads what is committed then: the function is
//! volatile, never folded into a constant when the rule is planned.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{Array, AsArray, StringBuilder};
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};
use datafusion::sql::sqlparser::ast::{Expr, Value};

use super::args::{Call, string};
use super::udf::name_and_signature;
use crate::dialect::CallError;
use crate::dialect::ast::call;
use crate::json_text::json_text_field;

/// The kernel `get_thing_shadow` becomes: `(thing, shadow or NULL)`.
const GET_THING_SHADOW: &str = "__weir_get_thing_shadow";

/// Reads shadows for rules: the program's store, behind the engine.
pub trait ShadowReader: Send + Sync {
    /// The get document, as JSON text, of each `(thing, shadow)` asked (`None` for a
    /// thing's classic shadow), in order: `None` where there is no such shadow. Called
    /// on the thread that evaluates a batch, once per batch with every shadow it names.
    fn read(
        &self,
        wanted: &[(&str, Option<&str>)],
    ) -> std::result::Result<Vec<Option<String>>, String>;
}

/// Where an engine's reader goes once the program has one.
pub(crate) type ShadowSlot = Arc<OnceLock<Arc<dyn ShadowReader>>>;

/// The kernel, reading through `slot`.
pub(crate) fn udf(slot: ShadowSlot) -> ScalarUDF {
    ScalarUDF::from(GetThingShadow {
        signature: Signature::exact(vec![DataType::Utf8, DataType::Utf8], Volatility::Volatile),
        slot,
    })
}

/// The rewrite of `get_thing_shadow`, if `c` calls it.
pub(super) fn rewrite(c: &Call) -> Option<Result<Expr, CallError>> {
    if c.name != "get_thing_shadow" {
        return None;
    }
    let null = || string(Expr::value(Value::Null));
    let shadow = match c.args {
        [_] => null(),
        [_, second] if is_role(second) => null(),
        [_, second] | [_, second, _] => string(second.clone()),
        _ => return Some(Err(CallError::ShadowArity(c.args.len()))),
    };
    Some(Ok(call(GET_THING_SHADOW, vec![string(c.arg(0)), shadow])))
}

/// Whether an argument is a role's ARN, as a string literal.
fn is_role(e: &Expr) -> bool {
    matches!(e, Expr::Value(v) if matches!(&v.value, Value::SingleQuotedString(s) if s.starts_with("arn:")))
}

#[derive(Debug)]
struct GetThingShadow {
    signature: Signature,
    slot: ShadowSlot,
}

// Two kernels are the same when they read through the same slot.
impl PartialEq for GetThingShadow {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.slot, &other.slot)
    }
}

impl Eq for GetThingShadow {}

impl std::hash::Hash for GetThingShadow {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.slot), state);
    }
}

impl std::fmt::Debug for dyn ShadowReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShadowReader")
    }
}

impl ScalarUDFImpl for GetThingShadow {
    name_and_signature!(GET_THING_SHADOW);

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn return_field_from_args(&self, _args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(json_text_field("json")))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let things = args.args[0].to_array(n)?;
        let shadows = args.args[1].to_array(n)?;
        let (things, shadows) = (things.as_string::<i32>(), shadows.as_string::<i32>());
        // Each distinct shadow the batch names, once, in the order first named.
        let mut index: HashMap<(&str, Option<&str>), usize> = HashMap::new();
        let mut wanted = Vec::new();
        let rows: Vec<Option<usize>> = (0..n)
            .map(|i| {
                if things.is_null(i) {
                    return None;
                }
                let key = (
                    things.value(i),
                    (!shadows.is_null(i)).then(|| shadows.value(i)),
                );
                Some(*index.entry(key).or_insert_with(|| {
                    wanted.push(key);
                    wanted.len() - 1
                }))
            })
            .collect();
        let docs = match self.slot.get() {
            Some(reader) if !wanted.is_empty() => reader.read(&wanted).map_err(|e| {
                DataFusionError::Execution(format!(
                    "get_thing_shadow() cannot read the shadow store: {e}"
                ))
            })?,
            _ => vec![None; wanted.len()],
        };
        let mut out = StringBuilder::with_capacity(n, 0);
        for row in rows {
            match row.and_then(|i| docs.get(i)?.as_deref()) {
                Some(doc) => out.append_value(doc),
                None => out.append_null(),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::{Value, json};

    use crate::{Engine, Message, Rule};

    /// A shadow a read asked for: its thing, and its name for a named one.
    type Wanted = (String, Option<String>);

    /// Two shadows, and every read asked of it.
    struct Fake(Mutex<Vec<Vec<Wanted>>>);

    impl super::ShadowReader for Fake {
        fn read(&self, wanted: &[(&str, Option<&str>)]) -> Result<Vec<Option<String>>, String> {
            self.0.lock().unwrap().push(
                wanted
                    .iter()
                    .map(|(t, s)| (t.to_string(), s.map(str::to_owned)))
                    .collect(),
            );
            Ok(wanted
                .iter()
                .map(|w| match *w {
                    ("a", None) => Some(r#"{"state":{"reported":{"t":1}},"version":3}"#.to_owned()),
                    ("b", Some("cfg")) => {
                        Some(r#"{"state":{"desired":{"on":true}},"version":7}"#.to_owned())
                    }
                    _ => None,
                })
                .collect())
        }
    }

    #[test]
    fn a_batch_reads_each_shadow_it_names_once_and_a_missing_one_is_undefined() {
        let engine = Engine::new();
        let fake = std::sync::Arc::new(Fake(Mutex::new(Vec::new())));
        engine.read_shadows_with(fake.clone());
        let rule = Rule::compile(
            &engine,
            "SELECT get_thing_shadow(topic(2), 'arn:aws:iam::123456789012:role/r').state.reported.t AS t, \
             get_thing_shadow(topic(2), 'cfg', 'arn:aws:iam::123456789012:role/r').version AS v, n \
             FROM 'dev/+'",
            &[],
        )
        .unwrap();
        let msgs: Vec<Message> = [("a", 1), ("b", 2), ("a", 3), ("c", 4)]
            .iter()
            .map(|(d, n)| Message::new(format!("dev/{d}"), format!(r#"{{"n": {n}}}"#)))
            .collect();
        let out = rule.process(&msgs);
        assert_eq!(out.failures, []);
        let got: Vec<Value> = out
            .outputs
            .iter()
            .map(|o| serde_json::from_slice(&o.payload).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                json!({"t": 1, "n": 1}),
                json!({"v": 7, "n": 2}),
                json!({"t": 1, "n": 3}),
                json!({"n": 4}),
            ]
        );
        // One read per call in the rule and batch, each shadow named once.
        let reads = fake.0.lock().unwrap().clone();
        let classic: Vec<Wanted> = ["a", "b", "c"]
            .iter()
            .map(|t| (t.to_string(), None))
            .collect();
        assert!(reads.contains(&classic), "{reads:?}");
        assert_eq!(reads.len(), 2, "{reads:?}");
    }
}
