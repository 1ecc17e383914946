//! A shadow request's payload read and checked, and the errors a request gets, with
//! AWS's codes and texts (docs/shadows.md, "Errors").

use serde_json::{Map, Value};

/// The longest client token AWS echoes.
pub const TOKEN_MAX: usize = 64;

/// How deep a section may nest: a leaf under at most this many objects (or arrays),
/// counting the section (`desired`, `reported`) as the first.
pub const DEPTH_MAX: usize = 6;

/// A request refused, as `/rejected` and the HTTP API say it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {message}")]
pub struct ShadowError {
    pub code: u16,
    pub message: String,
}

impl ShadowError {
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn bad(message: &str) -> Self {
        Self::new(400, message)
    }

    pub fn not_found(shown: &str) -> Self {
        Self::new(404, format!("No shadow exists with name: '{shown}'"))
    }

    pub fn conflict() -> Self {
        Self::new(409, "Version conflict")
    }

    pub fn too_large() -> Self {
        Self::new(413, "The payload exceeds the maximum size allowed")
    }

    pub fn too_many() -> Self {
        Self::new(429, "Too Many Requests")
    }

    pub fn internal() -> Self {
        Self::new(500, "Internal service failure")
    }

    /// The outcome label of `weir_shadow_requests_total`.
    pub fn outcome(&self) -> &'static str {
        match self.code {
            400 => "invalid",
            404 => "not_found",
            409 => "conflict",
            413 => "too_large",
            415 => "invalid",
            429 => "throttled",
            _ => "failed",
        }
    }
}

/// What an update does to one section.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change<'a> {
    Keep,
    /// `"desired": null`: the section goes.
    Delete,
    Merge(&'a Map<String, Value>),
}

/// An update request, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The request's `state` as it was sent (checked: `null`, or an object of at most
    /// `desired` and `reported`, each `null` or an object), for `/update/accepted`.
    pub state: Value,
    pub version: Option<u64>,
    pub client_token: Option<String>,
}

/// The UTF-8 text of a payload (415 otherwise).
fn text(payload: &[u8]) -> Result<&str, ShadowError> {
    std::str::from_utf8(payload).map_err(|_| {
        ShadowError::new(
            415,
            "Unsupported documented encoding; supported encoding is UTF-8",
        )
    })
}

/// The payload as a JSON object (400 `Invalid JSON` otherwise).
fn object(payload: &[u8]) -> Result<Map<String, Value>, ShadowError> {
    match serde_json::from_str::<Value>(text(payload)?) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(ShadowError::bad("Invalid JSON")),
    }
}

/// The client token of a request, if it sent a valid one.
fn token(o: &Map<String, Value>) -> Result<Option<String>, ShadowError> {
    match o.get("clientToken") {
        None => Ok(None),
        Some(Value::String(t)) if t.len() <= TOKEN_MAX => Ok(Some(t.clone())),
        Some(_) => Err(ShadowError::bad("Invalid clientToken")),
    }
}

/// The client token of a payload that may be anything, for an answer that is an error:
/// echoed when it can be read.
pub fn token_of(payload: &[u8]) -> Option<String> {
    object(payload).ok().and_then(|o| token(&o).ok().flatten())
}

/// A get or delete request: an empty payload, or an object whose `clientToken` is echoed
/// (any other field is ignored).
pub fn parse_plain(payload: &[u8]) -> Result<Option<String>, ShadowError> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    token(&object(payload)?)
}

/// An update request: `{"state": {"desired"?: {...}|null, "reported"?: {...}|null} | null,
/// "version"?: n, "clientToken"?: "..."}`.
pub fn parse_update(payload: &[u8]) -> Result<Update, ShadowError> {
    let mut o = object(payload)?;
    let client_token = token(&o)?;
    let version = match o.get("version") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .ok_or_else(|| ShadowError::bad("Invalid version"))?,
        ),
    };
    let state = o
        .remove("state")
        .ok_or_else(|| ShadowError::bad("Missing required node: state"))?;
    match &state {
        Value::Null => {}
        Value::Object(s) => {
            if s.keys().any(|k| k != "desired" && k != "reported") {
                return Err(ShadowError::bad("State contains an invalid node"));
            }
            section(s.get("desired"), "Desired node must be an object")?;
            section(s.get("reported"), "Reported node must be an object")?;
        }
        _ => return Err(ShadowError::bad("State node must be an object")),
    }
    Ok(Update {
        state,
        version,
        client_token,
    })
}

impl Update {
    /// What the update does to desired and to reported; `None` for `"state": null`
    /// (both sections go).
    pub fn sections(&self) -> Option<(Change<'_>, Change<'_>)> {
        let s = self.state.as_object()?;
        Some((change(s.get("desired")), change(s.get("reported"))))
    }
}

fn change(v: Option<&Value>) -> Change<'_> {
    match v {
        Some(Value::Null) => Change::Delete,
        Some(Value::Object(o)) => Change::Merge(o),
        _ => Change::Keep,
    }
}

/// A section checked: absent, `null`, or an object within the bounds.
fn section(v: Option<&Value>, not_object: &str) -> Result<(), ShadowError> {
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(o)) => check_values(o, 1),
        Some(_) => Err(ShadowError::bad(not_object)),
    }
}

/// Nesting within bounds, and no `null` inside an array.
fn check_values(o: &Map<String, Value>, depth: usize) -> Result<(), ShadowError> {
    o.values().try_for_each(|v| check_value(v, depth, false))
}

fn check_value(v: &Value, depth: usize, in_array: bool) -> Result<(), ShadowError> {
    let nested = || {
        if depth >= DEPTH_MAX {
            Err(ShadowError::bad(
                "JSON contains too many levels of nesting; maximum is 6",
            ))
        } else {
            Ok(())
        }
    };
    match v {
        Value::Null if in_array => Err(ShadowError::bad("Invalid JSON")),
        Value::Object(o) if !o.is_empty() => {
            nested()?;
            o.values()
                .try_for_each(|v| check_value(v, depth + 1, false))
        }
        Value::Array(a) if !a.is_empty() => {
            nested()?;
            a.iter().try_for_each(|v| check_value(v, depth + 1, true))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(payload: &str) -> String {
        parse_update(payload.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn malformed_updates_get_aws_texts() {
        assert_eq!(err(r#"{"state": {"#), "400 Invalid JSON");
        assert_eq!(err(""), "400 Invalid JSON");
        assert_eq!(err("[1]"), "400 Invalid JSON");
        assert_eq!(err(r#"{"version": 1}"#), "400 Missing required node: state");
        assert_eq!(err(r#"{"state": 3}"#), "400 State node must be an object");
        assert_eq!(
            err(r#"{"state": {"delta": {"a": 1}}}"#),
            "400 State contains an invalid node"
        );
        assert_eq!(
            err(r#"{"state": {"desired": [1]}}"#),
            "400 Desired node must be an object"
        );
        assert_eq!(
            err(r#"{"state": {"reported": "x"}}"#),
            "400 Reported node must be an object"
        );
        assert_eq!(
            err(r#"{"state": {}, "version": -1}"#),
            "400 Invalid version"
        );
        assert_eq!(
            err(r#"{"state": {}, "version": "3"}"#),
            "400 Invalid version"
        );
        let long = "x".repeat(65);
        assert_eq!(
            err(&format!(r#"{{"state": {{}}, "clientToken": "{long}"}}"#)),
            "400 Invalid clientToken"
        );
        assert_eq!(
            err(r#"{"state": {"desired": {"a": [1, null]}}}"#),
            "400 Invalid JSON"
        );
        assert_eq!(
            parse_update(b"{\"state\": {\"desired\": {\"a\": \"\xff\"}}}")
                .unwrap_err()
                .code,
            415
        );
    }

    #[test]
    fn nesting_counts_the_section_and_every_container() {
        // desired(1) a(2) b(3) c(4) d(5) e(6): a leaf under six objects is allowed.
        let six = r#"{"state": {"desired": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}}}"#;
        assert!(parse_update(six.as_bytes()).is_ok());
        let seven = r#"{"state": {"desired": {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}}}"#;
        assert_eq!(
            err(seven),
            "400 JSON contains too many levels of nesting; maximum is 6"
        );
        let arrays = r#"{"state": {"reported": {"a": [[[[[[1]]]]]]}}}"#;
        assert_eq!(
            err(arrays),
            "400 JSON contains too many levels of nesting; maximum is 6"
        );
    }

    #[test]
    fn updates_read_sections_version_and_token() {
        let u = parse_update(
            br#"{"state": {"desired": {"a": 1}, "reported": null}, "version": 3, "clientToken": "t"}"#,
        )
        .unwrap();
        assert_eq!(u.version, Some(3));
        assert_eq!(u.client_token.as_deref(), Some("t"));
        let (d, r) = u.sections().unwrap();
        assert!(matches!(d, Change::Merge(m) if m["a"] == 1));
        assert_eq!(r, Change::Delete);
        assert!(
            parse_update(br#"{"state": null}"#)
                .unwrap()
                .sections()
                .is_none()
        );
        assert_eq!(parse_plain(b"").unwrap(), None);
        assert_eq!(
            parse_plain(br#"{"clientToken": "abc"}"#)
                .unwrap()
                .as_deref(),
            Some("abc")
        );
        assert_eq!(parse_plain(b"{").unwrap_err().code, 400);
        assert_eq!(
            token_of(br#"{"clientToken": "k", "state": 1}"#).as_deref(),
            Some("k")
        );
    }
}
