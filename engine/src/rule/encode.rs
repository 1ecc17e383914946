//! A rule's outputs as JSON: one object per row, undefined values left out, fields that
//! pass a JSON `null` through written as `null`, `SELECT *` spliced into the payload as
//! received and `SELECT VALUE` unwrapped.

use bytes::Bytes;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

use crate::dialect::SqlVersion;
use crate::json_text;

/// The encoded object with `"name":null` members added.
pub(super) fn with_nulls<'a>(json: &Bytes, names: impl Iterator<Item = &'a str>) -> Bytes {
    let mut out = json[..json.len() - 1].to_vec();
    for name in names {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(
            serde_json::to_string(name)
                .expect("a string serialises")
                .as_bytes(),
        );
        out.extend_from_slice(b":null");
    }
    out.push(b'}');
    Bytes::from(out)
}

/// `SELECT VALUE e`: the value in the encoded `{"v":<value>}` (the dialect names the one
/// column `v`), or `None` for `{}`: the value was undefined.
pub(super) fn unwrap_value(json: &Bytes) -> Option<Bytes> {
    const PREFIX: &[u8] = br#"{"v":"#;
    json.starts_with(PREFIX)
        .then(|| json.slice(PREFIX.len()..json.len() - 1))
}

/// `SELECT *, extra AS x`: the payload object with the extra members appended.
pub(super) fn splice(payload: &Bytes, extra: &Bytes) -> Bytes {
    let extra_inner = &extra[1..extra.len() - 1];
    if extra_inner.is_empty() {
        // `SELECT *` alone: the payload as received, whatever its bytes.
        return payload.clone();
    }
    let trimmed = payload.trim_ascii();
    let body = trimmed[..trimmed.len() - 1].trim_ascii_end();
    let mut out = Vec::with_capacity(body.len() + extra.len() + 1);
    out.extend_from_slice(body);
    if body != b"{" {
        out.push(b',');
    }
    out.extend_from_slice(extra_inner);
    out.push(b'}');
    Bytes::from(out)
}

/// Encodes a batch as one JSON object per row, as rules write their outputs: null
/// (undefined) values are left out, and JSON text columns are written as the JSON they
/// hold (see [`crate::json_text`]); whole-number Decimals as the SQL version says.
pub fn encode_json_rows(
    batch: &RecordBatch,
    version: SqlVersion,
) -> Result<Vec<Bytes>, ArrowError> {
    let rows = batch.num_rows();
    let buf = Bytes::from(json_text::write_lines(
        batch,
        version.whole_decimals_as_ints(),
    )?);
    // JSON strings escape newlines, so every '\n' ends a row.
    let mut out = Vec::with_capacity(rows);
    let mut start = 0;
    for (i, b) in buf.iter().enumerate() {
        if *b == b'\n' {
            out.push(buf.slice(start..i));
            start = i + 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_objects() {
        let s = |p: &str, e: &str| splice(&Bytes::from(p.to_owned()), &Bytes::from(e.to_owned()));
        assert_eq!(s("{}", r#"{"a":1}"#), Bytes::from(r#"{"a":1}"#));
        assert_eq!(
            s(r#" { "b" : 2 } "#, r#"{"a":1}"#),
            Bytes::from(r#"{ "b" : 2,"a":1}"#)
        );
        assert_eq!(s(r#"{"b":2}"#, "{}"), Bytes::from(r#"{"b":2}"#));
    }
}
