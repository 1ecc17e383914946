//! A shadow document and what requests do to it, as AWS defines it (docs/shadows.md):
//! updates merge (objects recursively, anything else replaced whole, `null` deletes), every
//! leaf has its metadata (`{"timestamp": <epoch s>}`, one per array element), versions
//! count every accepted update, and the delta is what desired says that reported does not.
//! Pure: the store and the service call these with the time and the limits.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::request::{Change, ShadowError, Update};

/// How long a deleted shadow's version is kept, so that a shadow made again continues
/// its numbering (AWS: 48 hours).
pub const TOMBSTONE_SECS: u64 = 48 * 3600;

/// One section pair: `desired` and `reported`, either absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sections {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<Map<String, Value>>,
}

impl Sections {
    fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("maps serialize")
    }
}

/// A shadow as it is stored: its state and metadata, its version, and when it was deleted
/// if it was (a tombstone, keeping the version for [`TOMBSTONE_SECS`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<u64>,
    #[serde(default)]
    pub state: Sections,
    #[serde(default)]
    pub metadata: Sections,
}

impl Record {
    /// Whether this is a shadow, not what is left of a deleted one.
    pub fn live(&self) -> bool {
        self.deleted_at.is_none()
    }

    /// Whether a tombstone has outlived [`TOMBSTONE_SECS`] and may be forgotten.
    pub fn expired(&self, now: u64) -> bool {
        self.deleted_at
            .is_some_and(|d| now.saturating_sub(d) >= TOMBSTONE_SECS)
    }

    /// `desired` and `reported` as compact JSON, the size AWS limits (metadata excluded).
    pub fn size(&self) -> usize {
        let len = |m: &Option<Map<String, Value>>| {
            m.as_ref()
                .map_or(0, |m| serde_json::to_vec(m).map_or(0, |v| v.len()))
        };
        len(&self.state.desired) + len(&self.state.reported)
    }

    /// The delta: what desired says that reported does not.
    pub fn delta(&self) -> Map<String, Value> {
        match &self.state.desired {
            Some(d) => delta(d, self.state.reported.as_ref()),
            None => Map::new(),
        }
    }

    /// `{"state", "metadata", "version"}`, as `/update/documents` shows each side.
    fn document(&self) -> Value {
        json!({
            "state": self.state.to_value(),
            "metadata": self.metadata.to_value(),
            "version": self.version,
        })
    }

    /// The get document: state with its delta, metadata, version and the time.
    pub fn get_document(&self, now: u64, token: Option<&str>) -> Value {
        let mut state = self.state.to_value();
        let delta = self.delta();
        if !delta.is_empty() {
            state["delta"] = Value::Object(delta);
        }
        let mut doc = json!({
            "state": state,
            "metadata": self.metadata.to_value(),
            "version": self.version,
            "timestamp": now,
        });
        with_token(&mut doc, token);
        doc
    }
}

/// The messages an accepted update publishes.
#[derive(Debug, Clone, PartialEq)]
pub struct Updated {
    pub record: Record,
    pub accepted: Value,
    /// `/update/delta`, when the delta is not empty.
    pub delta: Option<Value>,
    pub documents: Value,
}

/// Limits on a shadow's document.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most bytes of desired and reported, compact, after the merge.
    pub max_bytes: usize,
}

/// Applies an update to the shadow as stored (`None`: never made, or its tombstone
/// expired), at `now` (epoch seconds).
pub fn update(
    stored: Option<&Record>,
    req: &Update,
    now: u64,
    limits: Limits,
) -> Result<Updated, ShadowError> {
    let live = stored.filter(|r| r.live());
    if let Some(v) = req.version
        && live.is_none_or(|r| r.version != v)
    {
        return Err(ShadowError::conflict());
    }
    let mut record = live.cloned().unwrap_or_default();
    record.version = stored.map_or(0, |r| r.version) + 1;
    record.deleted_at = None;
    let accepted_meta = match req.sections() {
        None => {
            record.state = Sections::default();
            record.metadata = Sections::default();
            json!({"timestamp": now})
        }
        Some((desired, reported)) => {
            apply(
                &mut record.state.desired,
                &mut record.metadata.desired,
                desired,
                now,
            );
            apply(
                &mut record.state.reported,
                &mut record.metadata.reported,
                reported,
                now,
            );
            stamp(&req.state, now)
        }
    };
    if record.size() > limits.max_bytes {
        return Err(ShadowError::too_large());
    }
    let token = req.client_token.as_deref();
    let mut accepted = json!({
        "state": req.state,
        "metadata": accepted_meta,
        "version": record.version,
        "timestamp": now,
    });
    with_token(&mut accepted, token);
    let delta = record.delta();
    let delta = (!delta.is_empty()).then(|| {
        let meta = delta_metadata(&delta, record.metadata.desired.as_ref());
        let mut d = json!({
            "version": record.version,
            "timestamp": now,
            "state": delta,
            "metadata": meta,
        });
        with_token(&mut d, token);
        d
    });
    let mut documents = json!({
        "previous": live.map_or(Value::Null, Record::document),
        "current": record.document(),
        "timestamp": now,
    });
    with_token(&mut documents, token);
    Ok(Updated {
        record,
        accepted,
        delta,
        documents,
    })
}

/// Deletes a shadow: its tombstone and `/delete/accepted`; 404 if there is none.
pub fn delete(
    stored: Option<&Record>,
    shown: &str,
    now: u64,
    token: Option<&str>,
) -> Result<(Record, Value), ShadowError> {
    let live = stored
        .filter(|r| r.live())
        .ok_or_else(|| ShadowError::not_found(shown))?;
    let tombstone = Record {
        version: live.version,
        deleted_at: Some(now),
        ..Record::default()
    };
    let mut accepted = json!({"version": live.version, "timestamp": now});
    with_token(&mut accepted, token);
    Ok((tombstone, accepted))
}

/// A get: the document, or 404.
pub fn get(
    stored: Option<&Record>,
    shown: &str,
    now: u64,
    token: Option<&str>,
) -> Result<Value, ShadowError> {
    stored
        .filter(|r| r.live())
        .map(|r| r.get_document(now, token))
        .ok_or_else(|| ShadowError::not_found(shown))
}

/// `/rejected`: `{"code", "message", "timestamp", "clientToken"?}`.
pub fn rejected(e: &ShadowError, now: u64, token: Option<&str>) -> Value {
    let mut v = json!({"code": e.code, "message": e.message, "timestamp": now});
    with_token(&mut v, token);
    v
}

fn with_token(doc: &mut Value, token: Option<&str>) {
    if let Some(t) = token {
        doc["clientToken"] = Value::String(t.to_owned());
    }
}

/// Applies one section's change; a section left empty goes.
fn apply(
    section: &mut Option<Map<String, Value>>,
    meta: &mut Option<Map<String, Value>>,
    change: Change<'_>,
    now: u64,
) {
    match change {
        Change::Keep => {}
        Change::Delete => {
            *section = None;
            *meta = None;
        }
        Change::Merge(fields) => {
            let s = section.get_or_insert_default();
            let m = meta.get_or_insert_default();
            merge(s, m, fields, now);
            if s.is_empty() {
                *section = None;
                *meta = None;
            }
        }
    }
}

/// Merges `fields` into `state`, stamping what changed in `meta` (which mirrors `state`).
fn merge(
    state: &mut Map<String, Value>,
    meta: &mut Map<String, Value>,
    fields: &Map<String, Value>,
    now: u64,
) {
    for (k, v) in fields {
        match v {
            Value::Null => {
                state.remove(k);
                meta.remove(k);
            }
            Value::Object(o) => {
                let was_object = matches!(state.get(k), Some(Value::Object(_)));
                if was_object && o.is_empty() {
                    // Nothing to merge into an object that exists.
                    continue;
                }
                if !was_object {
                    state.insert(k.clone(), Value::Object(Map::new()));
                    meta.insert(k.clone(), Value::Object(Map::new()));
                }
                let Some(Value::Object(s)) = state.get_mut(k) else {
                    unreachable!("an object was just made or found")
                };
                let m = match meta.get_mut(k) {
                    Some(Value::Object(m)) => m,
                    _ => {
                        meta.insert(k.clone(), Value::Object(Map::new()));
                        let Some(Value::Object(m)) = meta.get_mut(k) else {
                            unreachable!("an object was just inserted")
                        };
                        m
                    }
                };
                merge(s, m, o, now);
                // The metadata of an object has its keys; an empty object is a value,
                // stamped as a leaf.
                if s.is_empty() {
                    *m = stamp_leaf(now);
                } else {
                    m.retain(|key, _| s.contains_key(key));
                }
            }
            _ => {
                state.insert(k.clone(), v.clone());
                meta.insert(k.clone(), stamp(v, now));
            }
        }
    }
}

fn stamp_leaf(now: u64) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("timestamp".to_owned(), Value::from(now));
    m
}

/// The metadata of a value written at `now`: its shape, every leaf (and every array
/// element) `{"timestamp": now}`; an empty object is a leaf.
pub fn stamp(v: &Value, now: u64) -> Value {
    match v {
        Value::Object(o) if !o.is_empty() => {
            Value::Object(o.iter().map(|(k, v)| (k.clone(), stamp(v, now))).collect())
        }
        Value::Array(a) => Value::Array(a.iter().map(|v| stamp(v, now)).collect()),
        _ => Value::Object(stamp_leaf(now)),
    }
}

/// What `desired` says that `reported` does not: fields reported lacks or holds another
/// value of; objects compared field by field, with the path to each difference kept.
pub fn delta(
    desired: &Map<String, Value>,
    reported: Option<&Map<String, Value>>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, d) in desired {
        match (d, reported.and_then(|r| r.get(k))) {
            (_, None) => {
                out.insert(k.clone(), d.clone());
            }
            (Value::Object(d), Some(Value::Object(r))) => {
                let sub = delta(d, Some(r));
                if !sub.is_empty() {
                    out.insert(k.clone(), Value::Object(sub));
                }
            }
            (d, Some(r)) => {
                if !same(d, r) {
                    out.insert(k.clone(), d.clone());
                }
            }
        }
    }
    out
}

/// The metadata of a delta: desired's, for the fields the delta holds.
fn delta_metadata(delta: &Map<String, Value>, meta: Option<&Map<String, Value>>) -> Value {
    let mut out = Map::new();
    for (k, v) in delta {
        let m = meta.and_then(|m| m.get(k));
        let entry = match (v, m) {
            (Value::Object(o), Some(Value::Object(mo))) if !o.is_empty() => {
                delta_metadata(o, Some(mo))
            }
            (_, Some(m)) => m.clone(),
            (_, None) => continue,
        };
        out.insert(k.clone(), entry);
    }
    Value::Object(out)
}

/// Whether two values are the same: numbers by value (`1` is `1.0`), arrays element by
/// element in order, objects field by field in any order.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}
