//! DataFusion functions whose output a count argument sizes (`repeat('x', 2000000000)`,
//! `array_repeat(0, 1e9)`, `range(1e10)`), wrapped so that they refuse to build a value
//! larger than [`MAX_TEXT_BYTES`] or [`MAX_LIST_LEN`] instead of allocating it. The check
//! runs on the arguments, before the wrapped function allocates anything; a refusal is an
//! evaluation error, which fails the batch to the rule's error action (or the rule's
//! submission, when DataFusion folds a constant call while planning).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use datafusion::arrow::compute::{cast, kernels::length::length};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::execution::FunctionRegistry;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};

use crate::dialect::limits::{MAX_LIST_LEN, MAX_TEXT_BYTES};

/// How a function's arguments bound the size of what it builds, per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bound {
    /// `repeat(text, n)`: `len(text) * n` bytes.
    Repeat,
    /// `lpad(text, n [, fill])`, `rpad`: `n` characters, `n` at least 0.
    Pad,
    /// `array_repeat(element, n)`: `n` elements (times the element's own length when it
    /// is a list or text).
    ArrayRepeat,
    /// `array_resize(list, n [, value])`: `n` elements.
    Resize,
    /// `range([start,] stop [, step])`, `generate_series`: `(stop - start) / step`.
    Series,
}

/// The functions wrapped, with how their arguments bound them.
const BOUNDED: &[(&str, Bound)] = &[
    ("repeat", Bound::Repeat),
    ("lpad", Bound::Pad),
    ("rpad", Bound::Pad),
    ("array_repeat", Bound::ArrayRepeat),
    ("array_resize", Bound::Resize),
    ("range", Bound::Series),
    ("generate_series", Bound::Series),
];

/// Replaces each function of [`BOUNDED`] in `state`'s registry with its bounded wrapper.
pub fn install(state: &mut SessionState) {
    for (name, bound) in BOUNDED {
        let Some(inner) = state.scalar_functions().get(*name).cloned() else {
            continue; // not in this build's features
        };
        let wrapped = ScalarUDF::new_from_impl(Bounded {
            inner,
            bound: *bound,
        });
        state
            .register_udf(Arc::new(wrapped))
            .expect("a wrapper replaces the function it wraps");
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    bound: Bound,
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        check(self.name(), self.bound, &args.args, args.number_rows)?;
        self.inner.invoke_with_args(args)
    }
}

/// Refuses arguments that would build a value over the limits, naming the function, the
/// size it would build and the limit.
fn check(name: &str, bound: Bound, args: &[ColumnarValue], rows: usize) -> Result<()> {
    let too_big = |size: i128, limit: usize, unit: &str| -> Result<()> {
        if size > limit as i128 {
            return exec_err!(
                "{name}() would build a value of {size} {unit}; at most {limit} are allowed"
            );
        }
        Ok(())
    };
    let arg = |i: usize| -> Result<Option<ArrayRef>> {
        args.get(i).map(|a| a.to_array(rows.max(1))).transpose()
    };
    match bound {
        Bound::Repeat => {
            let (Some(text), Some(n)) = (arg(0)?, arg(1)?) else {
                return Ok(());
            };
            let (lens, n) = (text_lengths(&text)?, ints(&n)?);
            for i in 0..lens.len().min(n.len()) {
                if lens.is_valid(i) && n.is_valid(i) {
                    let size = i128::from(lens.value(i)) * i128::from(n.value(i).max(0));
                    too_big(size, MAX_TEXT_BYTES, "bytes")?;
                }
            }
        }
        Bound::Pad => {
            if let Some(n) = arg(1)? {
                max_int(&n, |v| {
                    // DataFusion's pads panic on a negative length (found by fuzzing).
                    if v < 0 {
                        return exec_err!("{name}() takes a length of at least 0, got {v}");
                    }
                    too_big(v, MAX_TEXT_BYTES, "characters")
                })?;
            }
        }
        Bound::ArrayRepeat => {
            let (Some(element), Some(n)) = (arg(0)?, arg(1)?) else {
                return Ok(());
            };
            let n = ints(&n)?;
            let per: Option<(Int64Array, usize, &str)> = match element.data_type() {
                DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..) => {
                    Some((list_lengths(&element)?, MAX_LIST_LEN, "elements"))
                }
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                    Some((text_lengths(&element)?, MAX_TEXT_BYTES, "bytes"))
                }
                _ => None,
            };
            for i in 0..n.len() {
                if !n.is_valid(i) {
                    continue;
                }
                let count = i128::from(n.value(i).max(0));
                too_big(count, MAX_LIST_LEN, "elements")?;
                if let Some((lens, limit, unit)) = &per
                    && lens.is_valid(i)
                {
                    too_big(count * i128::from(lens.value(i)), *limit, unit)?;
                }
            }
        }
        Bound::Resize => {
            if let Some(n) = arg(1)? {
                max_int(&n, |v| too_big(v, MAX_LIST_LEN, "elements"))?;
            }
        }
        Bound::Series => {
            let inclusive = name == "generate_series";
            let cols: Vec<ArrayRef> = (0..args.len()).filter_map(|i| arg(i).ok()?).collect();
            if cols.iter().any(|c| !c.data_type().is_integer()) {
                return exec_err!(
                    "{name}() takes integers only; dates and timestamps are not supported"
                );
            }
            let cols = cols.iter().map(ints).collect::<Result<Vec<_>>>()?;
            let (start, stop, step) = match cols.as_slice() {
                [stop] => (None, stop, None),
                [start, stop] => (Some(start), stop, None),
                [start, stop, step] => (Some(start), stop, Some(step)),
                _ => return Ok(()),
            };
            for i in 0..stop.len() {
                let get = |a: Option<&Int64Array>, default: i64| match a {
                    None => Some(default),
                    Some(a) => a.is_valid(i).then(|| a.value(i)),
                };
                let (Some(a), Some(b), Some(s)) = (get(start, 0), get(Some(stop), 0), get(step, 1))
                else {
                    continue;
                };
                if s == 0 {
                    continue; // the function says what is wrong with that
                }
                let span = (i128::from(b) - i128::from(a)) / i128::from(s);
                too_big(span + i128::from(inclusive), MAX_LIST_LEN, "elements")?;
            }
        }
    }
    Ok(())
}

/// The byte length of each text value.
fn text_lengths(a: &ArrayRef) -> Result<Int64Array> {
    match a.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ints(&length(a)?),
        _ => Ok(Int64Array::from(vec![0; a.len()])),
    }
}

/// The number of elements of each list value.
fn list_lengths(a: &ArrayRef) -> Result<Int64Array> {
    Ok(match a.data_type() {
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            (0..l.len())
                .map(|i| l.is_valid(i).then(|| i64::from(l.value_length(i))))
                .collect()
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            (0..l.len())
                .map(|i| l.is_valid(i).then(|| l.value_length(i)))
                .collect()
        }
        DataType::FixedSizeList(_, n) => Int64Array::from(vec![i64::from(*n); a.len()]),
        _ => Int64Array::from(vec![0; a.len()]),
    })
}

/// Integer (or numeric) values as `i64`; what does not convert is null.
fn ints(a: &ArrayRef) -> Result<Int64Array> {
    let c = cast(a, &DataType::Int64).map_err(DataFusionError::from)?;
    Ok(c.as_primitive::<Int64Type>().clone())
}

/// Calls `f` with each non-null value of `a` as an integer.
fn max_int(a: &ArrayRef, f: impl Fn(i128) -> Result<()>) -> Result<()> {
    let v = ints(a)?;
    v.iter().flatten().try_for_each(|x| f(i128::from(x)))
}
