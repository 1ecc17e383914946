//! The fast path of decoding: payloads straight into Arrow columns.
//!
//! For a rule whose fields are all scalars (numbers, strings, booleans), at the top level or
//! inside objects (`geoCoordinates.latitude`), each payload is parsed once by a serde
//! visitor that appends the values the rule reads onto typed column builders and skips the
//! rest without allocating. No `serde_json::Value` is built and no schema is inferred from
//! values: a column's type is the type of its first non-null value.
//!
//! Whatever the general path ([`super::project`] and [`super::rows_to_batch`]) would treat
//! in a way this one does not, makes it give up on the whole batch, which the caller then
//! decodes the general way: a value whose type differs from the one before it in the batch
//! (an Int after a Decimal, a string after a number), an object or array where the rule
//! reads a whole field, a scalar where it reads into an object, a duplicate key, a payload
//! that is not a JSON object or not valid JSON. Both paths give a batch of the same types
//! for the batches this one takes; the golden tests check that every case gives the same
//! outcome both ways.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBufferBuilder, BooleanBuilder, Float64Builder, Int64Builder, NullArray,
    StringBuilder, StructArray,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::key::Key;
use crate::fields::FieldTree;

/// The fields a rule reads, laid out for the fast path.
#[derive(Debug)]
pub struct Shape {
    root: Vec<Node>,
    leaves: usize,
    objects: usize,
    /// The leaf of each path whose JSON null-ness the rule asks for, in the rule's order.
    json_null: Vec<usize>,
}

#[derive(Debug)]
struct Node {
    name: String,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// A field read as a whole: its column's slot.
    Leaf(usize),
    /// An object the rule reads into: its validity slot and the fields read in it.
    Object { slot: usize, children: Vec<Node> },
}

/// The payload columns of a batch, and for each path of [`Shape::new`]'s `json_null`, a
/// boolean column saying where its value was JSON null.
pub struct Columns {
    pub batch: RecordBatch,
    pub json_null: Vec<ArrayRef>,
}

impl Shape {
    /// The layout of `tree`, or `None` when a rule with these fields cannot take the fast
    /// path: it reads the whole payload, or asks whether a field that it reads into is
    /// JSON null.
    pub fn new<'a>(tree: &FieldTree, json_null: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        if tree.whole || tree.children.is_empty() {
            return None;
        }
        let (mut leaves, mut objects) = (0, 0);
        let root = layout(tree, &mut leaves, &mut objects);
        let mut shape = Self {
            root,
            leaves,
            objects,
            json_null: Vec::new(),
        };
        for path in json_null {
            let slot = shape.leaf(path)?;
            shape.json_null.push(slot);
        }
        Some(shape)
    }

    fn leaf(&self, path: &str) -> Option<usize> {
        let mut nodes = &self.root;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let node = nodes.iter().find(|n| n.name == part)?;
            match (&node.kind, parts.peek()) {
                (Kind::Leaf(slot), None) => return Some(*slot),
                (Kind::Object { children, .. }, Some(_)) => nodes = children,
                _ => return None,
            }
        }
        None
    }

    /// Decodes `payloads` into columns, or `None` if the batch needs the general path.
    pub fn decode<'p>(&self, payloads: impl ExactSizeIterator<Item = &'p [u8]>) -> Option<Columns> {
        let n = payloads.len();
        let mut state = State {
            leaves: (0..self.leaves).map(|_| Leaf::default()).collect(),
            objects: (0..self.objects)
                .map(|_| ObjectState {
                    key: 0,
                    valid: 0,
                    validity: BooleanBufferBuilder::new(n),
                })
                .collect(),
            row: 0,
            capacity: n,
        };
        let mut json_null: Vec<BooleanBuilder> = self
            .json_null
            .iter()
            .map(|_| BooleanBuilder::with_capacity(n))
            .collect();
        for payload in payloads {
            let stamp = state.row + 1;
            let mut de = serde_json::Deserializer::from_slice(payload);
            Object {
                nodes: &self.root,
                state: &mut state,
                slot: None,
            }
            .deserialize(&mut de)
            .ok()?;
            de.end().ok()?;
            for leaf in &mut state.leaves {
                if leaf.stamp != stamp {
                    leaf.col.append_null();
                }
            }
            for object in &mut state.objects {
                object.validity.append(object.valid == stamp);
            }
            for (builder, slot) in json_null.iter_mut().zip(&self.json_null) {
                builder.append_value(state.leaves[*slot].null_stamp == stamp);
            }
            state.row += 1;
        }
        let (fields, columns) = finish(&self.root, &mut state, n);
        let batch = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )
        .ok()?;
        let json_null = json_null
            .into_iter()
            .map(|mut b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        Some(Columns { batch, json_null })
    }
}

fn layout(tree: &FieldTree, leaves: &mut usize, objects: &mut usize) -> Vec<Node> {
    tree.children
        .iter()
        .map(|(name, sub)| {
            let kind = if sub.whole || sub.children.is_empty() {
                *leaves += 1;
                Kind::Leaf(*leaves - 1)
            } else {
                *objects += 1;
                let slot = *objects - 1;
                Kind::Object {
                    slot,
                    children: layout(sub, leaves, objects),
                }
            };
            Node {
                name: name.clone(),
                kind,
            }
        })
        .collect()
}

fn finish(nodes: &[Node], state: &mut State, n: usize) -> (Vec<Field>, Vec<ArrayRef>) {
    let mut fields = Vec::with_capacity(nodes.len());
    let mut columns = Vec::with_capacity(nodes.len());
    for node in nodes {
        let (ty, column): (DataType, ArrayRef) = match &node.kind {
            Kind::Leaf(slot) => match &mut state.leaves[*slot].col {
                Col::Nulls => (DataType::Null, Arc::new(NullArray::new(n))),
                Col::Int(b) => (DataType::Int64, Arc::new(b.finish())),
                Col::Float(b) => (DataType::Float64, Arc::new(b.finish())),
                Col::Bool(b) => (DataType::Boolean, Arc::new(b.finish())),
                Col::Str(b) => (DataType::Utf8, Arc::new(b.finish())),
            },
            Kind::Object { slot, children } => {
                let (child_fields, child_columns) = finish(children, state, n);
                let child_fields = Fields::from(child_fields);
                let valid = NullBuffer::new(state.objects[*slot].validity.finish());
                let array = StructArray::new(child_fields.clone(), child_columns, Some(valid));
                (DataType::Struct(child_fields), Arc::new(array))
            }
        };
        fields.push(Field::new(&node.name, ty, true));
        columns.push(column);
    }
    (fields, columns)
}

struct State {
    leaves: Vec<Leaf>,
    objects: Vec<ObjectState>,
    /// The row being decoded; its stamp is `row + 1`.
    row: usize,
    capacity: usize,
}

/// An object the rule reads into.
struct ObjectState {
    /// The stamp of the last row that had its key.
    key: usize,
    /// The stamp of the last row in which it was an object.
    valid: usize,
    validity: BooleanBufferBuilder,
}

#[derive(Default)]
struct Leaf {
    col: Col,
    /// The stamp of the last row that gave this field a value (or null).
    stamp: usize,
    /// The stamp of the last row in which this field was JSON null.
    null_stamp: usize,
}

/// A column whose type is that of its first non-null value.
#[derive(Default)]
enum Col {
    /// Only nulls so far (as many as there were rows).
    #[default]
    Nulls,
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
}

impl Col {
    fn append_null(&mut self) {
        match self {
            Col::Nulls => {}
            Col::Int(b) => b.append_null(),
            Col::Float(b) => b.append_null(),
            Col::Bool(b) => b.append_null(),
            Col::Str(b) => b.append_null(),
        }
    }
}

/// Gives up on the batch: the general path decodes it.
fn give_up<E: de::Error>() -> E {
    E::custom("weir: not for the columnar path")
}

/// The object at `nodes`' level: the payload itself (`root`) or an object the rule reads into.
struct Object<'a> {
    nodes: &'a [Node],
    state: &'a mut State,
    /// The validity slot of an object the rule reads into; `None` for the payload.
    slot: Option<usize>,
}

impl<'de> DeserializeSeed<'de> for Object<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Object<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let state = self.state;
        if let Some(slot) = self.slot {
            state.objects[slot].valid = state.row + 1;
        }
        while let Some(key) = map.next_key_seed(Key)? {
            match self.nodes.iter().find(|n| n.name == key) {
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some(Node {
                    kind: Kind::Leaf(slot),
                    ..
                }) => map.next_value_seed(Value {
                    slot: *slot,
                    state: &mut *state,
                })?,
                Some(Node {
                    kind: Kind::Object { slot, children },
                    ..
                }) => {
                    let stamp = state.row + 1;
                    let object = &mut state.objects[*slot];
                    if object.key == stamp {
                        return Err(give_up());
                    }
                    object.key = stamp;
                    map.next_value_seed(Object {
                        nodes: children,
                        state: &mut *state,
                        slot: Some(*slot),
                    })?
                }
            }
        }
        Ok(())
    }

    /// An object the rule reads into may be null (its fields are then undefined).
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        match self.slot {
            None => Err(give_up()),
            Some(_) => Ok(()),
        }
    }
}

/// A field the rule reads as a whole: a scalar, appended to its column.
struct Value<'a> {
    slot: usize,
    state: &'a mut State,
}

impl Value<'_> {
    /// The leaf, checked not to have been given a value in this row already.
    fn leaf<E: de::Error>(&mut self) -> Result<&mut Leaf, E> {
        let stamp = self.state.row + 1;
        let leaf = &mut self.state.leaves[self.slot];
        if leaf.stamp == stamp {
            return Err(give_up());
        }
        leaf.stamp = stamp;
        Ok(leaf)
    }

    fn rows_before(&self) -> usize {
        self.state.row
    }
}

macro_rules! append {
    ($self:ident, $variant:ident, $builder:expr, $value:expr) => {{
        let (before, capacity) = ($self.rows_before(), $self.state.capacity);
        let leaf = $self.leaf()?;
        if let Col::Nulls = leaf.col {
            let mut b = $builder(capacity);
            b.append_nulls(before);
            leaf.col = Col::$variant(b);
        }
        match &mut leaf.col {
            Col::$variant(b) => {
                b.append_value($value);
                Ok(())
            }
            _ => Err(give_up()),
        }
    }};
}

impl<'de> DeserializeSeed<'de> for Value<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Value<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a scalar")
    }

    fn visit_bool<E: de::Error>(mut self, v: bool) -> Result<(), E> {
        append!(self, Bool, BooleanBuilder::with_capacity, v)
    }

    fn visit_i64<E: de::Error>(mut self, v: i64) -> Result<(), E> {
        append!(self, Int, Int64Builder::with_capacity, v)
    }

    fn visit_u64<E: de::Error>(mut self, v: u64) -> Result<(), E> {
        let v = i64::try_from(v).map_err(|_| give_up())?;
        append!(self, Int, Int64Builder::with_capacity, v)
    }

    fn visit_f64<E: de::Error>(mut self, v: f64) -> Result<(), E> {
        append!(self, Float, Float64Builder::with_capacity, v)
    }

    fn visit_str<E: de::Error>(mut self, v: &str) -> Result<(), E> {
        append!(self, Str, |n| StringBuilder::with_capacity(n, n * 16), v)
    }

    fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
        let stamp = self.state.row + 1;
        let leaf = self.leaf()?;
        leaf.null_stamp = stamp;
        leaf.col.append_null();
        Ok(())
    }
}
