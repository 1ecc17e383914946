//! The metadata columns: what a rule reads about a message besides its payload's fields
//! (`topic()`, `clientid()`, `timestamp()`, `get_mqtt_property()`, ...).
//!
//! The dialect rewrites those functions into references to columns named here and records
//! which ones a rule reads ([`MetaNeeds`]); the rule adds exactly those columns to each
//! batch, beside the payload's fields ([`MetaNeeds::schema`], [`MetaNeeds::add_columns`]).
//! Every name starts with `__weir_`, which no payload field can shadow: the dialect refuses
//! identifiers and functions of that prefix.

use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, Int64Array, ListBuilder, StringArray, StringBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use serde_json::Value;

use crate::Message;
use crate::json_text::json_text_field;

/// The "table" the FROM clause is rewritten to.
pub const TABLE: &str = "__weir_msg";
pub const TOPIC: &str = "__weir_topic";
pub const CLIENT_ID: &str = "__weir_clientid";
pub const TIMESTAMP: &str = "__weir_timestamp";
pub const PRINCIPAL: &str = "__weir_principal";
pub const SOURCE_IP: &str = "__weir_sourceip";
pub const TRACE_ID: &str = "__weir_traceid";
/// The raw payload (`*` as a function argument, as in `encode(*, 'base64')`).
pub const PAYLOAD: &str = "__weir_payload";

/// Whether `name` is one of weir's own columns (all start with `__weir_`).
pub fn is_meta(name: &str) -> bool {
    name.starts_with("__weir_")
}

/// The column telling, per message, whether the field at `path` is JSON `null`
/// (rather than a value, or missing).
pub fn json_null(path: &str) -> String {
    format!("__weir_null:{path}")
}

/// The column holding the MQTT 5 property `name` (`get_mqtt_property(name)`).
pub fn mqtt_property(name: &str) -> String {
    format!("__weir_mqtt:{name}")
}

/// The column holding the values of the MQTT 5 user property `key`
/// (`get_user_properties(key)`), or all user properties as JSON text (`None`).
pub fn user_properties(key: Option<&str>) -> String {
    match key {
        Some(k) => format!("__weir_user_property:{k}"),
        None => "__weir_user_properties".to_owned(),
    }
}

/// Which metadata columns a rule reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaNeeds {
    pub topic: bool,
    pub client_id: bool,
    pub timestamp: bool,
    pub principal: bool,
    pub source_ip: bool,
    pub trace_id: bool,
    /// The raw payload bytes: a rule that reads only them takes any payload, JSON or not.
    pub payload: bool,
    /// Field paths (`a.b`) whose JSON-null-ness the rule asks about (`isNull`,
    /// `isUndefined`): the batch gets a boolean column [`json_null`] for each.
    pub json_null: BTreeSet<String>,
    /// MQTT 5 properties the rule reads (`get_mqtt_property`), by AWS's names.
    pub mqtt: BTreeSet<String>,
    /// MQTT 5 user properties the rule reads (`get_user_properties`): a key, or `None`
    /// for all of them.
    pub user_properties: BTreeSet<Option<String>>,
}

impl MetaNeeds {
    pub fn merge(&mut self, o: MetaNeeds) {
        self.topic |= o.topic;
        self.client_id |= o.client_id;
        self.timestamp |= o.timestamp;
        self.principal |= o.principal;
        self.source_ip |= o.source_ip;
        self.payload |= o.payload;
        self.trace_id |= o.trace_id;
        self.json_null.extend(o.json_null);
        self.mqtt.extend(o.mqtt);
        self.user_properties.extend(o.user_properties);
    }

    /// The schema of a batch: the payload's fields, then the metadata columns in `self`.
    pub fn schema(&self, payload: &Schema) -> Schema {
        let mut fields: Vec<Field> = payload
            .fields()
            .iter()
            .filter(|f| !is_meta(f.name()))
            .map(|f| f.as_ref().clone())
            .collect();
        if self.topic {
            fields.push(Field::new(TOPIC, DataType::Utf8, false));
        }
        if self.client_id {
            fields.push(Field::new(CLIENT_ID, DataType::Utf8, true));
        }
        if self.timestamp {
            fields.push(Field::new(TIMESTAMP, DataType::Int64, false));
        }
        if self.principal {
            fields.push(Field::new(PRINCIPAL, DataType::Utf8, true));
        }
        if self.source_ip {
            fields.push(Field::new(SOURCE_IP, DataType::Utf8, true));
        }
        if self.payload {
            fields.push(Field::new(PAYLOAD, DataType::Binary, false));
        }
        if self.trace_id {
            fields.push(Field::new(TRACE_ID, DataType::Utf8, false));
        }
        for path in &self.json_null {
            fields.push(Field::new(json_null(path), DataType::Boolean, false));
        }
        for name in &self.mqtt {
            fields.push(Field::new(mqtt_property(name), DataType::Utf8, true));
        }
        for key in &self.user_properties {
            let name = user_properties(key.as_deref());
            fields.push(match key {
                Some(_) => Field::new(
                    name,
                    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
                    true,
                ),
                None => json_text_field(&name),
            });
        }
        Schema::new(fields)
    }

    /// Adds the metadata columns in `self` of the messages at `indices` in `msgs` to a
    /// batch of their payloads' fields, with a JSON-null flag column per path of
    /// `json_null`.
    pub fn add_columns<M: Borrow<Message>>(
        &self,
        payload: RecordBatch,
        msgs: &[M],
        indices: &[usize],
        json_null: Vec<ArrayRef>,
    ) -> Result<RecordBatch, ArrowError> {
        let schema = Arc::new(self.schema(payload.schema().as_ref()));
        let (_, mut columns, _) = payload.into_parts();
        let msg = |i: usize| msgs[indices[i]].borrow();
        let n = indices.len();
        if self.topic {
            let a: StringArray = (0..n).map(|i| Some(msg(i).topic.as_str())).collect();
            columns.push(Arc::new(a));
        }
        if self.client_id {
            let a: StringArray = (0..n).map(|i| msg(i).client_id.as_deref()).collect();
            columns.push(Arc::new(a));
        }
        if self.timestamp {
            let a: Int64Array = (0..n).map(|i| Some(msg(i).received_at_ms)).collect();
            columns.push(Arc::new(a));
        }
        if self.principal {
            let a: StringArray = (0..n).map(|i| msg(i).principal.as_deref()).collect();
            columns.push(Arc::new(a));
        }
        if self.source_ip {
            let a: StringArray = (0..n).map(|i| msg(i).source_ip.as_deref()).collect();
            columns.push(Arc::new(a));
        }
        if self.payload {
            let a: BinaryArray = (0..n).map(|i| Some(msg(i).payload.as_ref())).collect();
            columns.push(Arc::new(a));
        }
        if self.trace_id {
            let a: StringArray = (0..n).map(|i| Some(msg(i).trace_id())).collect();
            columns.push(Arc::new(a));
        }
        columns.extend(json_null);
        let props = |i: usize| msg(i).properties.as_deref();
        for name in &self.mqtt {
            let a: StringArray = (0..n).map(|i| props(i).and_then(|p| p.get(name))).collect();
            columns.push(Arc::new(a));
        }
        for key in &self.user_properties {
            let pairs = |i: usize| {
                props(i)
                    .map(|p| p.user_properties.as_slice())
                    .unwrap_or(&[])
            };
            match key {
                Some(key) => {
                    let mut b = ListBuilder::new(StringBuilder::new());
                    for i in 0..n {
                        let mut any = false;
                        for (_, v) in pairs(i).iter().filter(|(k, _)| k == key) {
                            b.values().append_value(v);
                            any = true;
                        }
                        // A key the message does not carry is Undefined.
                        b.append(any);
                    }
                    columns.push(Arc::new(b.finish()));
                }
                None => {
                    let a: StringArray = (0..n)
                        .map(|i| {
                            let all = pairs(i);
                            (!all.is_empty()).then(|| {
                                let objects: Vec<Value> = all
                                    .iter()
                                    .map(|(k, v)| serde_json::json!({ k: v }))
                                    .collect();
                                Value::Array(objects).to_string()
                            })
                        })
                        .collect();
                    columns.push(Arc::new(a));
                }
            }
        }
        RecordBatch::try_new_with_options(
            schema,
            columns,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )
    }
}
