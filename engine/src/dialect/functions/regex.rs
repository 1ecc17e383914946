//! Regular expressions: `regexp_matches`, `regexp_replace` and `regexp_substr`, with the
//! Java syntax AWS uses (look-around and back-references included, through fancy-regex),
//! a literal pattern compiled once and kept for the rules that use it.
//!
//! Every argument is converted to a String first (see `types`), as for the other string
//! functions. A pattern that does not compile (or would take more than 1 MiB compiled), or
//! a match that needs more backtracking than fancy-regex allows, gives Undefined, as AWS
//! does for an invalid pattern.
//! `regexp_replace` replaces every match; `$1`, `${name}` name the groups and `$$` is a
//! dollar. Before it builds a row it counts what the row's matches will make, against the
//! evaluation's memory budget.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanBuilder, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::sql::sqlparser::ast::Expr;

use super::args::{Call, string};
use super::bounded::over_budget;
use super::udf::arg_arrays;
use crate::dialect::CallError;
use crate::dialect::ast::call;
use crate::memory;

const MATCHES: &str = "__weir_regexp_matches";
const REPLACE: &str = "__weir_regexp_replace";
const SUBSTR: &str = "__weir_regexp_substr";

/// The family's kernels.
pub(super) fn udfs() -> Vec<ScalarUDF> {
    [(MATCHES, 2), (REPLACE, 3), (SUBSTR, 2)]
        .into_iter()
        .map(|(name, arity)| {
            ScalarUDF::from(Regexp {
                name,
                signature: Signature::uniform(arity, vec![DataType::Utf8], Volatility::Immutable),
            })
        })
        .collect()
}

/// The rewrite of a regular-expression function, if `c` calls one.
pub(super) fn rewrite(c: &Call) -> Option<Result<Expr, CallError>> {
    let (name, arity) = match c.name {
        "regexp_matches" => (MATCHES, 2),
        "regexp_replace" => (REPLACE, 3),
        "regexp_substr" => (SUBSTR, 2),
        _ => return None,
    };
    Some(
        c.arity(arity)
            .map(|()| call(name, c.args.iter().cloned().map(string).collect())),
    )
}

/// Compiled literal patterns (the usual case: `regexp_matches(s, 'a+')`), shared by every
/// rule, so that a rule's pattern is compiled once, not once per batch. `None` for one that
/// does not compile. Emptied when it holds [`KEPT`]; patterns that vary by message are
/// compiled once per batch and not kept.
static LITERALS: Mutex<Option<HashMap<String, Option<Arc<fancy_regex::Regex>>>>> = Mutex::new(None);

/// The most literal patterns kept compiled.
const KEPT: usize = 256;

/// The most memory one compiled pattern may take (regex's own default is 10 MiB): with
/// [`KEPT`], what the kept patterns can hold is bounded.
const PATTERN_BYTES: usize = 1 << 20;

fn compile(pattern: &str) -> Option<Arc<fancy_regex::Regex>> {
    fancy_regex::RegexBuilder::new(pattern)
        .delegate_size_limit(PATTERN_BYTES)
        .build()
        .ok()
        .map(Arc::new)
}

fn literal(pattern: &str) -> Option<Arc<fancy_regex::Regex>> {
    let mut cache = LITERALS.lock().unwrap_or_else(|p| p.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(re) = cache.get(pattern) {
        return re.clone();
    }
    if cache.len() >= KEPT {
        cache.clear();
    }
    let re = compile(pattern);
    cache.insert(pattern.to_owned(), re.clone());
    re
}

/// The compiled pattern of each row: a literal's from [`LITERALS`], looked up once per
/// batch; patterns that vary by row compiled once each for this batch.
struct Patterns {
    literal: Option<Option<Arc<fancy_regex::Regex>>>,
    by_row: HashMap<String, Option<Arc<fancy_regex::Regex>>>,
}

impl Patterns {
    fn new(arg: &ColumnarValue) -> Self {
        let literal = match arg {
            ColumnarValue::Scalar(v) => Some(v.try_as_str().flatten().and_then(literal)),
            ColumnarValue::Array(_) => None,
        };
        Self {
            literal,
            by_row: HashMap::new(),
        }
    }

    fn get(&mut self, pattern: &str) -> Option<Arc<fancy_regex::Regex>> {
        if let Some(re) = &self.literal {
            return re.clone();
        }
        self.by_row
            .entry(pattern.to_owned())
            .or_insert_with(|| compile(pattern))
            .clone()
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Regexp {
    name: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for Regexp {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(if self.name == MATCHES {
            DataType::Boolean
        } else {
            DataType::Utf8
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let mut patterns = Patterns::new(&args.args[1]);
        let arrays = arg_arrays(&args)?;
        let texts: Vec<_> = arrays.iter().map(|a| a.as_string::<i32>()).collect();
        let n = args.number_rows;
        let value = |a: usize, i: usize| texts[a].is_valid(i).then(|| texts[a].value(i));
        // The row's text and compiled pattern; None where either is Undefined or the
        // pattern does not compile.
        let mut row = |i: usize| Some((value(0, i)?, patterns.get(value(1, i)?)?));
        let out: ArrayRef = match self.name {
            MATCHES => {
                let mut b = BooleanBuilder::with_capacity(n);
                for i in 0..n {
                    b.append_option(row(i).and_then(|(s, re)| re.is_match(s).ok()));
                }
                Arc::new(b.finish())
            }
            SUBSTR => {
                let mut b = StringBuilder::new();
                for i in 0..n {
                    let m = row(i).and_then(|(s, re)| Some(re.find(s).ok()??.as_str().to_owned()));
                    b.append_option(m);
                }
                Arc::new(b.finish())
            }
            _ => {
                let mut b = StringBuilder::new();
                for i in 0..n {
                    let (Some((s, re)), Some(to)) = (row(i), value(2, i)) else {
                        b.append_null();
                        continue;
                    };
                    b.append_option(replace_all(&re, s, to)?);
                    memory::check().map_err(over_budget)?;
                }
                Arc::new(b.finish())
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// Every match of `re` in `s` replaced by `to`, or None (Undefined) when matching fails.
/// What the row will build is counted against the memory budget first: the text, plus per
/// match the replacement and the groups it names (each at most the match's length, and the
/// matches at most the text). The matches are counted only when that bound, taken with
/// every position a match, does not fit.
fn replace_all(re: &fancy_regex::Regex, s: &str, to: &str) -> Result<Option<String>> {
    let refs = to.matches('$').count();
    let size = |matches: usize, matched: usize| {
        s.len()
            .saturating_add(matches.saturating_mul(to.len()))
            .saturating_add(refs.saturating_mul(matched))
    };
    let bound = size(s.len() + 1, s.len());
    if memory::available().is_some_and(|free| bound > free) {
        let (mut matches, mut matched) = (0usize, 0usize);
        for m in re.find_iter(s) {
            let Ok(m) = m else { return Ok(None) };
            matches += 1;
            matched += m.as_str().len();
        }
        memory::reserve(size(matches, matched)).map_err(over_budget)?;
    }
    Ok(re.try_replacen(s, 0, to).ok().map(|c| c.into_owned()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_pattern_is_held_to_its_compiled_size() {
        assert!(super::compile("(?<=a)b\\d+").is_some());
        // Over 1 MiB compiled, within regex's own 10 MiB: refused here (Undefined).
        let big = "[a-z]{20000}";
        assert!(fancy_regex::Regex::new(big).is_ok());
        assert!(super::compile(big).is_none());
    }
}
