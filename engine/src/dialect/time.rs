//! AWS IoT SQL's time functions as DataFusion UDFs.
//!
//! * `parse_time(pattern, epoch_ms[, zone])`: formats a time with a Joda-Time pattern (as
//!   AWS does), in UTC or the given IANA zone.
//!
//! Joda patterns are translated once per distinct pattern into chrono's format.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

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
pub(super) struct ParseTime {
    signature: Signature,
}

impl ParseTime {
    pub(super) fn new() -> Self {
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
    fn name(&self) -> &str {
        "parse_time"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types.len() {
            2 => Ok(vec![DataType::Utf8, DataType::Int64]),
            3 => Ok(vec![DataType::Utf8, DataType::Int64, DataType::Utf8]),
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
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<Result<_>>()?;
        let patterns = arrays[0].as_string::<i32>();
        let times = arrays[1].as_primitive::<Int64Type>();
        let zones = arrays.get(2).map(|z| z.as_string::<i32>());
        let mut out = StringBuilder::with_capacity(n, n * 24);
        // Patterns are nearly always one literal: translate each distinct one once.
        let mut cached: Option<(String, String)> = None;
        for i in 0..n {
            if patterns.is_null(i) || times.is_null(i) || zones.is_some_and(|z| z.is_null(i)) {
                out.append_null();
                continue;
            }
            let pattern = patterns.value(i);
            if cached.as_ref().is_none_or(|(p, _)| p != pattern) {
                cached = Some((pattern.to_owned(), joda_to_chrono(pattern)));
            }
            let format = &cached.as_ref().expect("set above").1;
            match format_one(format, times.value(i), zones.map(|z| z.value(i))) {
                Some(s) => out.append_value(s),
                None => {
                    let zone = zones.map(|z| z.value(i)).unwrap_or("UTC");
                    return exec_err!(
                        "parse_time(): cannot format {} ms in zone '{zone}'",
                        times.value(i)
                    );
                }
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
