//! JSON payloads to Arrow, decoding only the fields a rule reads.
//!
//! Most rules read only scalar fields, and most batches agree on their types: such a batch
//! takes the fast path ([`Shape`], in `columns.rs`), which parses each payload straight into
//! typed Arrow builders. Everything else takes the general path described here, which the
//! fast path falls back to for a whole batch.
//!
//! Each payload is parsed once, by a serde visitor that materialises the top-level keys the
//! rule's [`FieldTree`] names and skips everything else without allocating (it is still
//! validated, so a malformed payload is caught here). A batch of such projected rows then
//! becomes a `RecordBatch` through arrow-json: the schema is inferred from the batch
//! (numbers that are all integers → Int64, any fraction → Float64, numbers mixed with
//! strings → Utf8, objects → Struct, arrays → List) and widened with the paths the rule
//! reads but the batch lacks, as Null columns, so a missing field is NULL rather than a
//! planning error. Rules cache one plan per distinct schema. Before that,
//! [`group_by_number_kinds`] splits a batch whose messages disagree on whether a number is
//! an integer, so that `20` stays an Int and `20.5` a Decimal as AWS IoT SQL has it.
//! An array whose elements mix JSON types has no Arrow type; it is carried as JSON text
//! (a marked Utf8 column, see [`crate::json_text`]) and written back as JSON.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::json::reader::infer_json_schema_from_iterator;
use datafusion::arrow::record_batch::RecordBatch;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

use crate::error::{Classify, ErrorClass};
use crate::fields::FieldTree;

mod columns;
mod key;
pub use columns::{Columns, Shape};
use key::Key;

/// Why the projected payloads of a batch do not make one Arrow batch: the batch is then
/// run a message at a time, and a message that fails alone fails as a type mismatch.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// arrow-json found no one type for a field across the payloads.
    #[error("fields have conflicting types: {0}")]
    ConflictingTypes(ArrowError),
    /// A field is a number or a boolean in one payload and a string in another.
    #[error("field '{0}' has mixed types in one batch")]
    MixedTypes(String),
    /// A value does not fit the type inferred for its field.
    #[error("field has an unexpected type: {0}")]
    UnexpectedType(ArrowError),
    /// arrow-json refused the inferred schema.
    #[error(transparent)]
    Schema(ArrowError),
}

impl Classify for BatchError {
    fn class(&self) -> ErrorClass {
        match self {
            Self::ConflictingTypes(_) | Self::MixedTypes(_) | Self::UnexpectedType(_) => {
                ErrorClass::User
            }
            Self::Schema(_) => ErrorClass::Internal,
        }
    }
}

impl Classify for DecodeError {
    fn class(&self) -> ErrorClass {
        ErrorClass::User
    }
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("payload is not a JSON object")]
    NotAnObject,
}

/// Parses `payload` (which must be a JSON object), keeping only the fields in `tree`.
pub fn project(payload: &[u8], tree: &FieldTree) -> Result<Map<String, Value>, DecodeError> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let out = TopLevel(tree)
        .deserialize(&mut de)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| {
            if e.is_data() && e.to_string().starts_with(NOT_OBJECT) {
                DecodeError::NotAnObject
            } else {
                DecodeError::InvalidJson(e.to_string())
            }
        })?;
    Ok(out)
}

const NOT_OBJECT: &str = "weir: not an object";

struct TopLevel<'a>(&'a FieldTree);

impl<'de> DeserializeSeed<'de> for TopLevel<'_> {
    type Value = Map<String, Value>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(NOT_OBJECT)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(Key)? {
            match self.0.children.get(key.as_ref()) {
                Some(sub) if !self.0.whole => {
                    let mut v: Value = map.next_value()?;
                    prune(&mut v, sub);
                    out.insert(key.into_owned(), v);
                }
                _ if self.0.whole => {
                    out.insert(key.into_owned(), map.next_value()?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }

    // Everything that is not an object is refused with a recognisable message.
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Err(E::custom(NOT_OBJECT))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Err(E::custom(NOT_OBJECT))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Err(E::custom(NOT_OBJECT))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Err(E::custom(NOT_OBJECT))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Err(E::custom(NOT_OBJECT))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Err(E::custom(NOT_OBJECT))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Self::Value, A::Error> {
        Err(de::Error::custom(NOT_OBJECT))
    }
}

/// Drops the parts of `v` that `tree` does not read.
fn prune(v: &mut Value, tree: &FieldTree) {
    if tree.whole {
        return;
    }
    if let Value::Object(m) = v {
        m.retain(|k, child| match tree.children.get(k) {
            Some(sub) => {
                prune(child, sub);
                true
            }
            None => false,
        });
    }
}

/// The paths of `tree` that `value` (a projected payload) lacks or holds as null: the
/// fields a rule reads that are undefined in this message, as `a.b.c`.
pub fn undefined_paths(tree: &FieldTree, value: &Value) -> Vec<String> {
    fn walk(tree: &FieldTree, value: Option<&Value>, prefix: &str, out: &mut Vec<String>) {
        for (name, sub) in &tree.children {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            let child = value.and_then(|v| v.get(name)).filter(|v| !v.is_null());
            match child {
                None => out.push(path),
                Some(v) if !sub.whole => walk(sub, Some(v), &path, out),
                Some(_) => {}
            }
        }
    }
    let mut out = Vec::new();
    walk(tree, Some(value), "", &mut out);
    out
}

/// A projected payload and the index of its message.
pub type Row = (usize, Value);

/// Splits projected rows into groups in which every number the rule reads is an integer
/// in all rows or a fraction in all rows (one group, in order, in the common case).
pub fn group_by_number_kinds(
    rows: Vec<(usize, Value)>,
    tree: &FieldTree,
) -> Vec<Vec<(usize, Value)>> {
    fn kinds(tree: &FieldTree, v: &Value, out: &mut Vec<u8>) {
        if tree.whole || tree.children.is_empty() {
            out.push(match v {
                Value::Number(n) if n.is_f64() => 2,
                Value::Number(_) => 1,
                _ => 0,
            });
            return;
        }
        for (name, sub) in &tree.children {
            match v.get(name) {
                Some(child) => kinds(sub, child, out),
                None => out.push(0),
            }
        }
    }
    let signature = |v: &Value| {
        let mut out = Vec::with_capacity(tree.children.len());
        kinds(tree, v, &mut out);
        out
    };
    let Some(first) = rows.first().map(|(_, v)| signature(v)) else {
        return Vec::new();
    };
    // Fast path: one shape of numbers. Rows with no number where the first has one (0)
    // do not split a group: a missing value fits any column type.
    let compatible =
        |a: &[u8], b: &[u8]| a.iter().zip(b).all(|(x, y)| *x == 0 || *y == 0 || x == y);
    let signatures: Vec<Vec<u8>> = rows.iter().map(|(_, v)| signature(v)).collect();
    if signatures.iter().all(|s| compatible(s, &first)) {
        return vec![rows];
    }
    let mut groups: Vec<(Vec<u8>, Vec<Row>)> = Vec::new();
    for (row, sig) in rows.into_iter().zip(signatures) {
        match groups.iter_mut().find(|(g, _)| compatible(g, &sig)) {
            Some((g, members)) => {
                for (a, b) in g.iter_mut().zip(&sig) {
                    if *a == 0 {
                        *a = *b;
                    }
                }
                members.push(row);
            }
            None => groups.push((sig, vec![row])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// Builds the payload part of a batch from projected rows. Returns the fields and columns
/// (the caller adds metadata columns).
///
/// An array whose elements are of different JSON types (`[1, "a", {"b": 2}]`) has no
/// Arrow type: when the batch fails for that reason, such arrays are carried as JSON text
/// (see [`crate::json_text`]) and the batch is built again.
pub fn rows_to_batch(rows: &[Row], tree: &FieldTree) -> Result<RecordBatch, BatchError> {
    match typed_batch(rows, tree, &[]) {
        Ok(batch) => Ok(batch),
        Err(e) => {
            let paths = mixed_array_paths(rows);
            if paths.is_empty() {
                return Err(e);
            }
            let mut rows = rows.to_vec();
            as_json_text(&mut rows, &paths);
            typed_batch(&rows, tree, &paths)
        }
    }
}

fn typed_batch(
    rows: &[Row],
    tree: &FieldTree,
    json_text: &[Vec<String>],
) -> Result<RecordBatch, BatchError> {
    let mut inferred = infer_json_schema_from_iterator(rows.iter().map(|(_, v)| Ok::<_, _>(v)))
        .map_err(BatchError::ConflictingTypes)?;
    for path in json_text {
        inferred = Schema::new(mark_json_text(inferred.fields(), path));
    }
    // arrow-json widens numbers mixed with strings to Utf8; that would turn the numbers of
    // every message in the batch (or of an array) into strings. Refuse the batch instead,
    // so that the rule runs such messages one by one, each with its own types, and an
    // array that mixes them is carried as JSON text.
    for f in inferred.fields().iter().filter(|f| has_utf8(f.data_type())) {
        if rows.iter().any(|(_, r)| {
            r.get(f.name())
                .is_some_and(|v| stringified(f.data_type(), v))
        }) {
            return Err(BatchError::MixedTypes(f.name().clone()));
        }
    }
    let schema = Arc::new(widen_schema(&inferred, tree));
    if schema.fields().is_empty() {
        return Ok(RecordBatch::new_empty(schema));
    }
    let mut decoder = ReaderBuilder::new(schema.clone())
        .with_coerce_primitive(true)
        .with_batch_size(rows.len().max(1))
        .build_decoder()
        .map_err(BatchError::Schema)?;
    // The payloads, without copying them out of the rows.
    let values: Vec<&Value> = rows.iter().map(|(_, v)| v).collect();
    decoder
        .serialize(&values)
        .map_err(BatchError::UnexpectedType)?;
    Ok(decoder
        .flush()
        .map_err(BatchError::UnexpectedType)?
        .unwrap_or_else(|| RecordBatch::new_empty(schema)))
}

fn has_utf8(t: &DataType) -> bool {
    match t {
        DataType::Utf8 => true,
        DataType::List(f) | DataType::LargeList(f) => has_utf8(f.data_type()),
        DataType::Struct(fields) => fields.iter().any(|f| has_utf8(f.data_type())),
        _ => false,
    }
}

/// Whether reading `v` as `t` would turn a number or boolean into a string.
fn stringified(t: &DataType, v: &Value) -> bool {
    match (t, v) {
        (DataType::Utf8, v) => !v.is_string() && !v.is_null(),
        (DataType::List(f) | DataType::LargeList(f), Value::Array(items)) => {
            items.iter().any(|i| stringified(f.data_type(), i))
        }
        (DataType::Struct(fields), Value::Object(m)) => fields.iter().any(|f| {
            m.get(f.name())
                .is_some_and(|c| stringified(f.data_type(), c))
        }),
        _ => false,
    }
}

/// The kind of a JSON value, for telling whether an array mixes kinds.
fn kind(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) => 4,
        Value::Object(_) => 5,
    }
}

/// Whether an array's elements (or, within them, any array) mix JSON kinds.
fn is_mixed(items: &[Value]) -> bool {
    let mut seen = 0u8;
    for item in items {
        let k = kind(item);
        if k != 0 && seen != 0 && k != seen {
            return true;
        }
        if k != 0 {
            seen = k;
        }
        let nested = match item {
            Value::Array(a) => is_mixed(a),
            Value::Object(m) => m
                .values()
                .any(|v| matches!(v, Value::Array(a) if is_mixed(a))),
            _ => false,
        };
        if nested {
            return true;
        }
    }
    false
}

/// The object paths that hold an array mixing JSON kinds in any row.
fn mixed_array_paths(rows: &[Row]) -> Vec<Vec<String>> {
    fn find(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        let Value::Object(m) = v else { return };
        for (k, child) in m {
            prefix.push(k.clone());
            match child {
                Value::Array(items) if is_mixed(items) && !out.contains(prefix) => {
                    out.push(prefix.clone());
                }
                Value::Object(_) => find(child, prefix, out),
                _ => {}
            }
            prefix.pop();
        }
    }
    let mut paths = Vec::new();
    for (_, v) in rows {
        find(v, &mut Vec::new(), &mut paths);
    }
    paths
}

/// Replaces the value at each of `paths`, in every row, by its JSON text.
fn as_json_text(rows: &mut [Row], paths: &[Vec<String>]) {
    for (_, v) in rows.iter_mut() {
        for path in paths {
            let slot = path.iter().try_fold(&mut *v, |v, k| v.get_mut(k));
            if let Some(slot) = slot.filter(|s| !s.is_null()) {
                *slot = Value::String(slot.to_string());
            }
        }
    }
}

/// `fields` with the field at `path` made a JSON text string.
fn mark_json_text(fields: &Fields, path: &[String]) -> Fields {
    let Some((first, rest)) = path.split_first() else {
        return fields.clone();
    };
    let marked: Vec<Field> = fields
        .iter()
        .map(|f| {
            let f = f.as_ref().clone();
            if f.name() != first {
                return f;
            }
            match (f.data_type(), rest.is_empty()) {
                (_, true) => crate::json_text::json_text_field(f.name()),
                (DataType::Struct(children), false) => {
                    let children = mark_json_text(children, rest);
                    f.with_data_type(DataType::Struct(children))
                }
                _ => f,
            }
        })
        .collect();
    Fields::from(marked)
}

/// The schema of a batch in which no payload has any field: every path the rule reads,
/// as Null columns (structs of Null where the rule reads into the field). Used to check a
/// rule at submit time.
pub fn reference_schema(tree: &FieldTree) -> Schema {
    widen_schema(&Schema::empty(), tree)
}

/// Adds the paths of `tree` that `schema` lacks, as Null (or struct-of-Null) fields.
fn widen_schema(schema: &Schema, tree: &FieldTree) -> Schema {
    Schema::new(widen_fields(schema.fields(), tree))
}

fn widen_fields(fields: &Fields, tree: &FieldTree) -> Fields {
    let mut out: Vec<Field> = Vec::with_capacity(fields.len().max(tree.children.len()));
    for f in fields.iter() {
        let sub = tree.children.get(f.name());
        let field = match (f.data_type(), sub) {
            (DataType::Struct(children), Some(sub)) if !sub.whole => Field::new(
                f.name(),
                DataType::Struct(widen_fields(children, sub)),
                true,
            ),
            (DataType::Null, Some(sub)) if !sub.whole && !sub.children.is_empty() => Field::new(
                f.name(),
                DataType::Struct(widen_fields(&Fields::empty(), sub)),
                true,
            ),
            _ => f.as_ref().clone().with_nullable(true),
        };
        out.push(field);
    }
    for (name, sub) in &tree.children {
        if out.iter().any(|f| f.name() == name) {
            continue;
        }
        let ty = if sub.whole || sub.children.is_empty() {
            DataType::Null
        } else {
            DataType::Struct(widen_fields(&Fields::empty(), sub))
        };
        out.push(Field::new(name, ty, true));
    }
    Fields::from(out)
}

#[cfg(test)]
mod tests;
