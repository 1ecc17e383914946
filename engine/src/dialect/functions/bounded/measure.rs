//! How much a call would build, measured from its arguments before it runs: exactly for
//! the functions whose output a count argument sizes ([`Bound`]: `repeat`, `lpad`,
//! `array_repeat`, `range`, ...), which are refused over [`MAX_TEXT_BYTES`] or
//! [`MAX_LIST_LEN`], and `replace`; the size of the arguments for the others.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use datafusion::arrow::compute::{cast, kernels::length::length};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::logical_expr::ColumnarValue;

use crate::dialect::limits::{MAX_LIST_LEN, MAX_TEXT_BYTES};

/// How a function's arguments bound the size of what it builds, per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Bound {
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
    /// `replace(text, from, to)`: `len(text)` plus `len(to)` per occurrence of `from`.
    Replace,
    /// `array_to_string(list, delimiter [, null_text])`: the elements as text, with a
    /// delimiter (and the null text) per element.
    ArrayToString,
    /// `array_replace(list, from, to [, n])`, `array_replace_n`, `array_replace_all`: at
    /// most one `to` per element.
    ArrayReplace,
}

/// The functions whose arguments bound what they build, with how.
const BOUNDED: &[(&str, Bound)] = &[
    ("repeat", Bound::Repeat),
    ("lpad", Bound::Pad),
    ("rpad", Bound::Pad),
    ("array_repeat", Bound::ArrayRepeat),
    ("array_resize", Bound::Resize),
    ("range", Bound::Series),
    ("generate_series", Bound::Series),
    ("replace", Bound::Replace),
    ("array_to_string", Bound::ArrayToString),
    ("array_replace", Bound::ArrayReplace),
    ("array_replace_n", Bound::ArrayReplace),
    ("array_replace_all", Bound::ArrayReplace),
];

impl Bound {
    /// How the arguments of the function `name` bound what it builds, if they do.
    pub(super) fn of(name: &str) -> Option<Self> {
        BOUNDED.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
    }
}

/// What a call would build: in all, and for its largest row, in bytes.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Need {
    pub(super) total: u128,
    pub(super) row: u128,
}

impl Need {
    fn add(&mut self, row: u128) {
        self.total += row;
        self.row = self.row.max(row);
    }
}

/// One argument as an array: a column, or a literal as an array of one value.
struct Arg(ArrayRef);

impl Arg {
    /// The index of row `i` in the array (0 for a literal).
    fn at(&self, i: usize) -> usize {
        if self.0.len() == 1 { 0 } else { i }
    }
}

/// Refuses arguments that would build a value over the limits, naming the function, the
/// size it would build and the limit; otherwise says how much the call would build.
pub(super) fn measure(
    name: &str,
    bound: Option<Bound>,
    args: &[ColumnarValue],
    rows: usize,
    available: Option<usize>,
) -> Result<Need> {
    let Some(bound) = bound else {
        // A function that builds from its arguments: about as much as they hold, a literal
        // once per row.
        let mut need = Need::default();
        for a in args {
            let (total, row) = match a {
                ColumnarValue::Array(a) => {
                    let bytes = a.get_array_memory_size() as u128;
                    (bytes, bytes.div_ceil(rows.max(1) as u128))
                }
                ColumnarValue::Scalar(s) => {
                    (s.size() as u128 * rows.max(1) as u128, s.size() as u128)
                }
            };
            need.total += total;
            need.row += row;
        }
        return Ok(need);
    };
    let too_big = |size: i128, limit: usize, unit: &str| -> Result<()> {
        if size > limit as i128 {
            return exec_err!(
                "{name}() would build a value of {size} {unit}; at most {limit} are allowed"
            );
        }
        Ok(())
    };
    let arg = |i: usize| -> Result<Option<Arg>> {
        args.get(i)
            .map(|a| {
                Ok(Arg(match a {
                    ColumnarValue::Array(a) => a.clone(),
                    ColumnarValue::Scalar(s) => s.to_array_of_size(1)?,
                }))
            })
            .transpose()
    };
    let rows = if args.iter().any(|a| matches!(a, ColumnarValue::Array(_))) {
        rows
    } else {
        1
    };
    let mut need = Need::default();
    let bytes = |n: i128| n.max(0) as u128;
    match bound {
        Bound::Repeat => {
            let (Some(text), Some(n)) = (arg(0)?, arg(1)?) else {
                return Ok(need);
            };
            let (lens, counts) = (text_lengths(&text.0)?, ints(&n.0)?);
            for i in 0..rows {
                let (l, c) = (text.at(i), n.at(i));
                if lens.is_valid(l) && counts.is_valid(c) {
                    let size = i128::from(lens.value(l)) * i128::from(counts.value(c).max(0));
                    too_big(size, MAX_TEXT_BYTES, "bytes")?;
                    need.add(bytes(size));
                }
            }
        }
        Bound::Pad => {
            let Some(n) = arg(1)? else {
                return Ok(need);
            };
            let counts = ints(&n.0)?;
            for i in 0..rows {
                let c = n.at(i);
                if !counts.is_valid(c) {
                    continue;
                }
                let v = i128::from(counts.value(c));
                // DataFusion's pads panic on a negative length (found by fuzzing).
                if v < 0 {
                    return exec_err!("{name}() takes a length of at least 0, got {v}");
                }
                too_big(v, MAX_TEXT_BYTES, "characters")?;
                need.add(bytes(v) * 4); // up to 4 bytes per character
            }
        }
        Bound::ArrayRepeat => {
            let (Some(element), Some(n)) = (arg(0)?, arg(1)?) else {
                return Ok(need);
            };
            let counts = ints(&n.0)?;
            // Per element: its length, the limit, the unit, and the bytes per unit.
            let per: Option<(Int64Array, usize, &str, i128)> = match element.0.data_type() {
                DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(..) => {
                    Some((list_lengths(&element.0)?, MAX_LIST_LEN, "elements", 8))
                }
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                    Some((text_lengths(&element.0)?, MAX_TEXT_BYTES, "bytes", 1))
                }
                _ => None,
            };
            // Structs, maps, binary: what one element holds, on average.
            let each = if per.is_none() {
                row_bytes(&element)
            } else {
                0
            };
            for i in 0..rows {
                let c = n.at(i);
                if !counts.is_valid(c) {
                    continue;
                }
                let count = i128::from(counts.value(c).max(0));
                too_big(count, MAX_LIST_LEN, "elements")?;
                let mut size = count * (8 + each as i128);
                if let Some((lens, limit, unit, width)) = &per {
                    let e = element.at(i);
                    if lens.is_valid(e) {
                        let all = count * i128::from(lens.value(e));
                        too_big(all, *limit, unit)?;
                        size += all * width;
                    }
                }
                need.add(bytes(size));
            }
        }
        Bound::Resize => {
            let (Some(list), Some(n)) = (arg(0)?, arg(1)?) else {
                return Ok(need);
            };
            let counts = ints(&n.0)?;
            // What one element holds: the fill value's size, or the list's elements'.
            let fill = arg(2)?;
            let each = match &fill {
                Some(f) => row_bytes(f),
                None => element_bytes(&list.0),
            }
            .max(16);
            let inner = match &fill {
                Some(f) => Some((list_lengths(&f.0)?, f)),
                None => None,
            };
            for i in 0..rows {
                let c = n.at(i);
                if counts.is_valid(c) {
                    let v = i128::from(counts.value(c));
                    too_big(v, MAX_LIST_LEN, "elements")?;
                    if let Some((lens, f)) = &inner
                        && lens.is_valid(f.at(i))
                    {
                        let all = v.max(0) * i128::from(lens.value(f.at(i)));
                        too_big(all, MAX_LIST_LEN, "elements")?;
                    }
                    need.add(bytes(v) * each);
                }
            }
        }
        // No limit of their own: measured only inside a budget.
        Bound::ArrayToString | Bound::ArrayReplace if available.is_none() => {}
        Bound::ArrayToString => {
            let (Some(list), Some(delimiter)) = (arg(0)?, arg(1)?) else {
                return Ok(need);
            };
            let lens = list_lengths(&list.0)?;
            let d = text_lengths(&delimiter.0)?;
            let null_text = match arg(2)? {
                Some(t) => Some((text_lengths(&t.0)?, t)),
                None => None,
            };
            // A number takes up to 24 characters as text: three times its 8 bytes.
            let each = 3 * element_bytes(&list.0).max(8);
            for i in 0..rows {
                let l = list.at(i);
                if !lens.is_valid(l) {
                    continue;
                }
                let n = lens.value(l).max(0) as u128;
                let at = delimiter.at(i);
                let mut per = each
                    + if d.is_valid(at) {
                        d.value(at).max(0) as u128
                    } else {
                        0
                    };
                if let Some((t, a)) = &null_text
                    && t.is_valid(a.at(i))
                {
                    per += t.value(a.at(i)).max(0) as u128;
                }
                need.add(n * per);
            }
        }
        Bound::ArrayReplace => {
            let (Some(list), Some(to)) = (arg(0)?, arg(2)?) else {
                return Ok(need);
            };
            let lens = list_lengths(&list.0)?;
            let each = row_bytes(&to).max(element_bytes(&list.0)).max(8);
            for i in 0..rows {
                let l = list.at(i);
                if lens.is_valid(l) {
                    need.add(lens.value(l).max(0) as u128 * each);
                }
            }
        }
        Bound::Series => {
            let inclusive = name == "generate_series";
            let cols: Vec<Arg> = (0..args.len()).filter_map(|i| arg(i).ok()?).collect();
            if cols.iter().any(|c| !c.0.data_type().is_integer()) {
                return exec_err!(
                    "{name}() takes integers only; dates and timestamps are not supported"
                );
            }
            let values = cols
                .iter()
                .map(|c| ints(&c.0))
                .collect::<Result<Vec<_>>>()?;
            let at = |k: usize, i: usize| -> Option<i64> {
                let (c, v) = (&cols[k], &values[k]);
                let j = c.at(i);
                v.is_valid(j).then(|| v.value(j))
            };
            for i in 0..rows {
                let (a, b, s) = match cols.len() {
                    1 => (Some(0), at(0, i), Some(1)),
                    2 => (at(0, i), at(1, i), Some(1)),
                    3 => (at(0, i), at(1, i), at(2, i)),
                    _ => return Ok(need),
                };
                let (Some(a), Some(b), Some(s)) = (a, b, s) else {
                    continue;
                };
                if s == 0 {
                    continue; // the function says what is wrong with that
                }
                let span = (i128::from(b) - i128::from(a)) / i128::from(s);
                too_big(span + i128::from(inclusive), MAX_LIST_LEN, "elements")?;
                need.add(bytes(span + 1) * 8);
            }
        }
        Bound::Replace => {
            // No limit of its own: measured only inside a budget.
            let Some(free) = available else {
                return Ok(need);
            };
            let (Some(text), Some(from), Some(to)) = (arg(0)?, arg(1)?, arg(2)?) else {
                return Ok(need);
            };
            let (texts, froms, tos) = (utf8(&text.0)?, utf8(&from.0)?, utf8(&to.0)?);
            let row = |i: usize| {
                Some((
                    value(&texts, text.at(i))?,
                    value(&froms, from.at(i))?,
                    value(&tos, to.at(i))?,
                ))
            };
            // A bound first, as if `from` were everywhere; the occurrences counted only
            // when that does not fit. An empty `from` leaves the text as it is (as
            // PostgreSQL does).
            for exact in [false, true] {
                need = Need::default();
                for i in 0..rows {
                    let Some((s, f, t)) = row(i) else { continue };
                    let occurrences = match (f.is_empty(), exact) {
                        (true, _) => 0,
                        (false, false) => s.len() / f.len(),
                        (false, true) => s.matches(f).count(),
                    };
                    need.add(s.len() as u128 + occurrences as u128 * t.len() as u128);
                }
                if need.total <= free as u128 {
                    break;
                }
            }
        }
    }
    Ok(need)
}

/// The bytes one row of `a` holds, on average.
fn row_bytes(a: &Arg) -> u128 {
    (a.0.get_array_memory_size() / a.0.len().max(1)) as u128
}

/// The bytes one element of the lists in `a` holds, on average (0 if `a` holds no lists).
fn element_bytes(a: &ArrayRef) -> u128 {
    let values = match a.data_type() {
        DataType::List(_) => a.as_list::<i32>().values().clone(),
        DataType::LargeList(_) => a.as_list::<i64>().values().clone(),
        DataType::FixedSizeList(..) => a.as_fixed_size_list().values().clone(),
        _ => return 0,
    };
    (values.get_array_memory_size() / values.len().max(1)) as u128
}

/// Text values as one UTF-8 array (other types: all null).
fn utf8(a: &ArrayRef) -> Result<ArrayRef> {
    match a.data_type() {
        DataType::Utf8 => Ok(a.clone()),
        DataType::LargeUtf8 | DataType::Utf8View => {
            Ok(cast(a, &DataType::Utf8).map_err(DataFusionError::from)?)
        }
        _ => Ok(datafusion::arrow::array::new_null_array(
            &DataType::Utf8,
            a.len(),
        )),
    }
}

/// The text at `i` of a UTF-8 array from [`utf8`].
fn value(a: &ArrayRef, i: usize) -> Option<&str> {
    let a = a.as_string::<i32>();
    a.is_valid(i).then(|| a.value(i))
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
