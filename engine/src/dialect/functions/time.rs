//! AWS IoT SQL's time functions as DataFusion UDFs.
//!
//! * `parse_time(pattern, epoch_ms[, zone])`: formats a time with a Joda-Time pattern (as
//!   AWS does), in UTC or the given IANA zone.
//! * `time_to_epoch(text, pattern)`: reads a time written in a Joda-Time pattern, into
//!   milliseconds since the epoch. Fields the pattern lacks default to 1970-01-01 00:00,
//!   the zone to UTC; a zone is an IANA name, `UTC`/`GMT`/`Z`, an offset (`+01:00`,
//!   `-0800`) or both (`UTC+01:00`). Text that does not fit the pattern is Undefined.
//!
//! Joda patterns are translated once per distinct pattern into chrono's format.

use std::sync::Arc;

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use datafusion::arrow::array::{Array, AsArray, Int64Builder, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::udf::{arg_arrays, name_and_signature};
use super::values::Whole;

/// The family's kernels, called by their AWS names.
pub(super) fn udfs() -> Vec<ScalarUDF> {
    vec![
        ScalarUDF::from(ParseTime::new()),
        ScalarUDF::from(TimeToEpoch::new()),
    ]
}

/// Translates a Joda-Time pattern into a chrono format string.
pub fn joda_to_chrono(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() * 2);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // Quoted text; '' is a quote.
            let mut j = i + 1;
            if j < chars.len() && chars[j] == '\'' {
                out.push('\'');
                i += 2;
                continue;
            }
            while j < chars.len() {
                if chars[j] == '\'' {
                    if j + 1 < chars.len() && chars[j + 1] == '\'' {
                        out.push('\'');
                        j += 2;
                        continue;
                    }
                    break;
                }
                if chars[j] == '%' {
                    out.push('%');
                }
                out.push(chars[j]);
                j += 1;
            }
            i = j + 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            if c == '%' {
                out.push('%');
            }
            out.push(c);
            i += 1;
            continue;
        }
        let mut n = 1;
        while i + n < chars.len() && chars[i + n] == c {
            n += 1;
        }
        let spec = match (c, n) {
            ('y' | 'Y' | 'u', 2) => "%y",
            ('y' | 'Y' | 'u', _) => "%Y",
            ('M', 1) => "%-m",
            ('M', 2) => "%m",
            ('M', 3) => "%b",
            ('M', _) => "%B",
            ('d', 1) => "%-d",
            ('d', _) => "%d",
            ('D', _) => "%j",
            ('H', 1) => "%-H",
            ('H', _) => "%H",
            ('h', 1) => "%-I",
            ('h', _) => "%I",
            ('m', 1) => "%-M",
            ('m', _) => "%M",
            ('s', 1) => "%-S",
            ('s', _) => "%S",
            ('S', 1) => "%1f",
            ('S', 2) => "%2f",
            ('S', _) => "%3f",
            ('a', _) => "%p",
            ('E', 1..=3) => "%a",
            ('E', _) => "%A",
            ('z', _) => "%Z",
            ('Z', 1) => "%z",
            ('Z', _) => "%:z",
            ('G', _) => "AD",
            ('w', _) => "%V",
            _ => "",
        };
        out.push_str(spec);
        i += n;
    }
    out
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ParseTime {
    signature: Signature,
}

impl ParseTime {
    fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn format_one(format: &str, ms: i64, zone: Option<&str>) -> Option<String> {
    let t = DateTime::<Utc>::from_timestamp_millis(ms)?;
    Some(match zone {
        None => t.format(format).to_string(),
        Some(z) => t
            .with_timezone(&z.parse::<Tz>().ok()?)
            .format(format)
            .to_string(),
    })
}

impl ScalarUDFImpl for ParseTime {
    name_and_signature!("parse_time");

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        // Strings as Utf8; the time is converted by the kernel, as AWS converts an Int, and
        // a pattern or zone that is no String gives Undefined.
        match arg_types.len() {
            2 | 3 => Ok(arg_types
                .iter()
                .map(|t| match t {
                    DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
                    t => t.clone(),
                })
                .collect()),
            n => plan_err!(
                "parse_time() takes 2 or 3 arguments (pattern, epoch ms[, zone]), got {n}"
            ),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let arrays = arg_arrays(&args)?;
        let mut out = StringBuilder::with_capacity(n, n * 24);
        let zones = match arrays.get(2) {
            None => Some(None),
            Some(z) => z.as_string_opt::<i32>().map(Some),
        };
        let (Some(patterns), Some(zones)) = (arrays[0].as_string_opt::<i32>(), zones) else {
            out.append_nulls(n);
            return Ok(ColumnarValue::Array(Arc::new(out.finish())));
        };
        let times = Whole::new(&arrays[1])?;
        // Patterns are nearly always one literal: translate each distinct one once.
        let mut cached: Option<(String, String)> = None;
        for i in 0..n {
            let (Some(ms), true, false) = (
                times.at(i),
                patterns.is_valid(i),
                zones.is_some_and(|z| z.is_null(i)),
            ) else {
                out.append_null();
                continue;
            };
            let pattern = patterns.value(i);
            if cached.as_ref().is_none_or(|(p, _)| p != pattern) {
                cached = Some((pattern.to_owned(), joda_to_chrono(pattern)));
            }
            let format = &cached.as_ref().expect("set above").1;
            // A zone that is none, or a time outside chrono's range: Undefined.
            out.append_option(format_one(format, ms, zones.map(|z| z.value(i))));
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// The fields read from a time's text.
#[derive(Debug)]
struct Parsed {
    year: i32,
    month: u32,
    day: u32,
    hour: u32,
    pm: Option<bool>,
    minute: u32,
    second: u32,
    milli: u32,
    zone: Option<Zone>,
}

#[derive(Debug)]
enum Zone {
    Fixed(FixedOffset),
    Named(Tz),
}

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// Reads `text` written in the Joda-Time `pattern`, into ms since the epoch.
pub fn time_to_epoch(text: &str, pattern: &str) -> Option<i64> {
    let mut p = Parsed {
        year: 1970,
        month: 1,
        day: 1,
        hour: 0,
        pm: None,
        minute: 0,
        second: 0,
        milli: 0,
        zone: None,
    };
    let pat: Vec<char> = pattern.chars().collect();
    let mut rest = text;
    let mut i = 0;
    while i < pat.len() {
        let c = pat[i];
        if c == '\'' {
            // Quoted text must appear as is; '' is a quote.
            let mut j = i + 1;
            let mut lit = String::new();
            while j < pat.len() {
                if pat[j] == '\'' {
                    if j + 1 < pat.len() && pat[j + 1] == '\'' {
                        lit.push('\'');
                        j += 2;
                        continue;
                    }
                    break;
                }
                lit.push(pat[j]);
                j += 1;
            }
            if j == i + 1 {
                lit.push('\'');
            }
            rest = rest.strip_prefix(lit.as_str())?;
            i = j + 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            rest = rest.strip_prefix(c)?;
            i += 1;
            continue;
        }
        let mut n = 1;
        while i + n < pat.len() && pat[i + n] == c {
            n += 1;
        }
        i += n;
        // A number field right before another one has exactly its width.
        let abutting = pat.get(i).is_some_and(|c| c.is_ascii_alphabetic());
        let mut number = |max: usize| read_number(&mut rest, if abutting { n } else { max.max(n) });
        match c {
            'y' | 'Y' | 'u' => {
                let y = number(9)?;
                p.year = i32::try_from(if n == 2 { 2000 + y } else { y }).ok()?;
            }
            'M' if n >= 3 => {
                let lower = rest.to_ascii_lowercase();
                let (k, len) = MONTHS.iter().enumerate().find_map(|(k, m)| {
                    if lower.starts_with(m) {
                        Some((k, m.len()))
                    } else if lower.starts_with(&m[..3]) {
                        Some((k, 3))
                    } else {
                        None
                    }
                })?;
                p.month = k as u32 + 1;
                rest = &rest[len..];
            }
            'M' => p.month = u32::try_from(number(2)?).ok()?,
            'd' => p.day = u32::try_from(number(2)?).ok()?,
            'H' | 'k' | 'h' | 'K' => {
                let h = u32::try_from(number(2)?).ok()?;
                p.hour = if c == 'k' && h == 24 { 0 } else { h };
            }
            'm' => p.minute = u32::try_from(number(2)?).ok()?,
            's' => p.second = u32::try_from(number(2)?).ok()?,
            'S' => {
                let before = rest.len();
                let v = read_number(&mut rest, if abutting { n } else { 9 })?;
                let digits = (before - rest.len()) as u32;
                p.milli = u32::try_from(v * 1000 / 10i64.pow(digits)).ok()?;
            }
            'a' => {
                let lower = rest.get(..2)?.to_ascii_lowercase();
                p.pm = Some(match lower.as_str() {
                    "am" => false,
                    "pm" => true,
                    _ => return None,
                });
                rest = &rest[2..];
            }
            'E' => {
                // A day name: read and ignore (the date decides the day).
                let len = rest
                    .find(|c: char| !c.is_alphabetic())
                    .unwrap_or(rest.len());
                if len == 0 {
                    return None;
                }
                rest = &rest[len..];
            }
            'G' => {
                rest = rest
                    .strip_prefix("AD")
                    .or_else(|| rest.strip_prefix("CE"))?;
            }
            'z' | 'Z' | 'V' | 'X' | 'x' | 'O' => {
                let len = rest.find(char::is_whitespace).unwrap_or(rest.len());
                p.zone = Some(zone(&rest[..len])?);
                rest = &rest[len..];
            }
            _ => return None,
        }
    }
    if !rest.is_empty() {
        return None;
    }
    if let Some(pm) = p.pm {
        p.hour = p.hour % 12 + if pm { 12 } else { 0 };
    }
    let local = NaiveDate::from_ymd_opt(p.year, p.month, p.day)?
        .and_hms_milli_opt(p.hour, p.minute, p.second, p.milli)?;
    let t = match p.zone {
        None => local.and_utc().timestamp_millis(),
        Some(Zone::Fixed(off)) => off.from_local_datetime(&local).single()?.timestamp_millis(),
        Some(Zone::Named(tz)) => tz
            .from_local_datetime(&local)
            .earliest()?
            .timestamp_millis(),
    };
    Some(t)
}

/// Reads an integer of at most `width` digits (and a leading '-') off the front of `rest`.
fn read_number(rest: &mut &str, width: usize) -> Option<i64> {
    let sign = rest.starts_with('-') as usize;
    let digits = rest[sign..]
        .bytes()
        .take(width)
        .take_while(u8::is_ascii_digit)
        .count();
    if digits == 0 {
        return None;
    }
    let v: i64 = rest[..sign + digits].parse().ok()?;
    *rest = &rest[sign + digits..];
    Some(v)
}

/// A zone: an IANA name, `UTC`/`GMT`/`Z`, an offset, or `UTC`/`GMT` with an offset.
fn zone(s: &str) -> Option<Zone> {
    if let Ok(tz) = s.parse::<Tz>() {
        return Some(Zone::Named(tz));
    }
    let offset = s
        .strip_prefix("UTC")
        .or_else(|| s.strip_prefix("GMT"))
        .unwrap_or(s);
    if offset.is_empty() || offset == "Z" {
        return Some(Zone::Fixed(FixedOffset::east_opt(0)?));
    }
    let sign = match offset.as_bytes()[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = offset[1..].chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m) = match digits.len() {
        1 | 2 => (digits.parse::<i32>().ok()?, 0),
        4 => (digits[..2].parse().ok()?, digits[2..].parse().ok()?),
        _ => return None,
    };
    Some(Zone::Fixed(FixedOffset::east_opt(
        sign * (h * 3600 + m * 60),
    )?))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TimeToEpoch {
    signature: Signature,
}

impl TimeToEpoch {
    fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for TimeToEpoch {
    name_and_signature!("time_to_epoch");

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types.len() {
            2 => Ok(vec![DataType::Utf8, DataType::Utf8]),
            n => plan_err!("time_to_epoch() takes 2 arguments (time, pattern), got {n}"),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let arrays = arg_arrays(&args)?;
        let (texts, patterns) = (arrays[0].as_string::<i32>(), arrays[1].as_string::<i32>());
        let mut out = Int64Builder::with_capacity(n);
        for i in 0..n {
            if texts.is_null(i) || patterns.is_null(i) {
                out.append_null();
            } else {
                out.append_option(time_to_epoch(texts.value(i), patterns.value(i)));
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_times_in_joda_patterns() {
        assert_eq!(
            time_to_epoch("2020-04-03 09:45:18 UTC+01:00", "yyyy-MM-dd HH:mm:ss VV"),
            Some(1_585_903_518_000)
        );
        assert_eq!(
            time_to_epoch("18 December 2015", "dd MMMM yyyy"),
            Some(1_450_396_800_000)
        );
        assert_eq!(
            time_to_epoch(
                "2007-12-03 10:15:30.592 America/Los_Angeles",
                "yyyy-MM-dd HH:mm:ss.SSS z"
            ),
            Some(1_196_705_730_592)
        );
        assert_eq!(
            time_to_epoch("20200403T094518Z", "yyyyMMdd'T'HHmmssX"),
            Some(1_585_907_118_000)
        );
        assert_eq!(
            time_to_epoch("3/4/20 9:45 PM -0800", "d/M/yy h:mm a Z"),
            Some(1_585_979_100_000)
        );
        assert_eq!(time_to_epoch("2020-13-01", "yyyy-MM-dd"), None);
        assert_eq!(time_to_epoch("2020-01-01 junk", "yyyy-MM-dd"), None);
        assert_eq!(time_to_epoch("01:02", "HH:mm:ss"), None);
    }

    #[test]
    fn translates_joda_patterns() {
        assert_eq!(
            joda_to_chrono("yyyy-MM-dd'T'HH:mm:ss.SSSZ"),
            "%Y-%m-%dT%H:%M:%S.%3f%z"
        );
        assert_eq!(
            joda_to_chrono("yyyy.MM.dd G 'at' HH:mm:ss z"),
            "%Y.%m.%d AD at %H:%M:%S %Z"
        );
        assert_eq!(
            joda_to_chrono("EEE, d MMM yy h:mm a ''100%''"),
            "%a, %-d %b %y %-I:%M %p '100%%'"
        );
    }

    #[test]
    fn formats_in_a_zone() {
        let f = joda_to_chrono("yyyy.MM.dd G 'at' HH:mm:ss z");
        assert_eq!(
            format_one(&f, 100_000_000, Some("America/Belize")).as_deref(),
            Some("1970.01.01 AD at 21:46:40 CST")
        );
        assert_eq!(
            format_one(&f, 0, None).as_deref(),
            Some("1970.01.01 AD at 00:00:00 UTC")
        );
        assert_eq!(format_one(&f, 0, Some("Nowhere/Atlantis")), None);
    }
}
