//! A compiled rule: parsed once, planned once per input schema, evaluated per batch.
//!
//! [`Rule::process`] takes a batch of messages and returns, per message, its output(s) or
//! why it failed. The fast path decodes the whole batch into one `RecordBatch` and runs the
//! cached physical expressions over it. If anything in the batch goes wrong (a field whose
//! type conflicts across messages, an expression that fails on one value), the batch is
//! re-run one message at a time, so one bad message fails alone and the others pass.

use std::borrow::Borrow;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Int64Array, ListBuilder, StringArray,
    StringBuilder,
};
use datafusion::arrow::compute::{filter_record_batch, prep_null_mask_filter};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json::{LineDelimitedWriter, WriterBuilder, writer::LineDelimited};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::common::DFSchema;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, ExprWithAlias};
use serde_json::Value;

use crate::decode::{self, DecodeError};
use crate::dialect::{self, FieldTree, MetaNeeds, ParsedRule, SqlError, meta, types};
use crate::{Engine, Message};

/// How many distinct input schemas a rule keeps plans for.
const PLAN_CACHE: usize = 16;

/// One output message of a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Index of the input message in the slice given to [`Rule::process`].
    pub index: usize,
    /// The output JSON object.
    pub payload: Bytes,
    /// The values of the rule's template expressions for this message (`None`: undefined).
    pub params: Vec<Option<String>>,
}

/// Why a message produced no output although the rule's topic filter matched it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    /// The payload is not valid JSON.
    InvalidJson,
    /// The payload is JSON but not an object.
    NotAnObject,
    /// A field has a type the rule cannot use (a string where it reads into an object, ...).
    TypeMismatch,
    /// An expression failed on this message's values.
    Evaluation,
}

impl FailureReason {
    /// A short stable name, used as a metrics label and in error-action messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::NotAnObject => "not_an_object",
            Self::TypeMismatch => "type_mismatch",
            Self::Evaluation => "evaluation_error",
        }
    }

    pub const ALL: [FailureReason; 4] = [
        Self::InvalidJson,
        Self::NotAnObject,
        Self::TypeMismatch,
        Self::Evaluation,
    ];
}

/// A message that failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub index: usize,
    pub reason: FailureReason,
    pub message: String,
}

/// What a batch produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    pub outputs: Vec<Output>,
    pub failures: Vec<Failure>,
    /// Messages for which WHERE was false (or undefined).
    pub filtered_out: usize,
}

struct Plan {
    condition: Option<Arc<dyn PhysicalExpr>>,
    columns: Vec<Arc<dyn PhysicalExpr>>,
    templates: Vec<Arc<dyn PhysicalExpr>>,
    output_schema: SchemaRef,
}

/// A rule ready to run.
pub struct Rule {
    engine: Arc<Engine>,
    parsed: ParsedRule,
    templates: Vec<SqlExpr>,
    fields: FieldTree,
    meta: MetaNeeds,
    /// The fast decoding path's layout of `fields`, when the rule can take it.
    shape: Option<decode::Shape>,
    plans: Mutex<Vec<(SchemaRef, Arc<Plan>)>>,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("parsed", &self.parsed)
            .finish_non_exhaustive()
    }
}

/// Either a problem with the batch's data or with evaluating it.
enum RunError {
    Data(String),
    Eval(String),
}

impl Rule {
    /// Parses and checks `sql`, and the template expressions (the insides of `${...}`) that
    /// the rule's actions use. Planning against the rule's own field paths catches type and
    /// function errors before any message arrives.
    pub fn compile(
        engine: &Arc<Engine>,
        sql: &str,
        template_exprs: &[String],
    ) -> Result<Self, SqlError> {
        let parsed = dialect::parse_rule(engine, sql)?;
        let mut fields = parsed.fields.clone();
        let mut meta = parsed.meta.clone();
        let mut templates = Vec::with_capacity(template_exprs.len());
        for text in template_exprs {
            let e = dialect::parse_expr(engine, text, &parsed.variables).map_err(|mut e| {
                e.message = format!("in template expression '${{{text}}}': {}", e.message);
                e.line = None;
                e.column = None;
                e
            })?;
            fields.merge(&e.fields);
            meta.merge(e.meta.clone());
            templates.push(e.expr);
        }
        let shape = decode::Shape::new(&fields, meta.json_null.iter().map(String::as_str));
        let rule = Self {
            engine: engine.clone(),
            parsed,
            templates,
            fields,
            meta,
            shape,
            plans: Mutex::new(Vec::new()),
        };
        let schema = rule.with_meta_fields(decode::reference_schema(&rule.fields));
        rule.plan_for(&Arc::new(schema)).map_err(SqlError::new)?;
        Ok(rule)
    }

    /// The topic filter of the rule's FROM clause.
    pub fn topic_filter(&self) -> &str {
        &self.parsed.topic_filter
    }

    /// Number of template expressions (the length of every [`Output::params`]).
    pub fn template_count(&self) -> usize {
        self.templates.len()
    }

    /// The fields this rule reads that are undefined (missing or null) in `payload`, as
    /// `a.b.c` paths; empty when the payload is not a JSON object.
    pub fn undefined_fields(&self, payload: &[u8]) -> Vec<String> {
        match decode::project(payload, &self.fields) {
            Ok(map) => decode::undefined_paths(&self.fields, &Value::Object(map)),
            Err(_) => Vec::new(),
        }
    }

    /// Runs the rule over a batch of messages whose topics matched its filter.
    pub fn process<M: Borrow<Message>>(&self, msgs: &[M]) -> Outcome {
        if let Some(shape) = &self.shape {
            let payloads = msgs.iter().map(|m| m.borrow().payload.as_ref());
            if let Some(columns) = shape.decode(payloads) {
                let mut outcome = Outcome::default();
                let indices: Vec<usize> = (0..msgs.len()).collect();
                let run = self.run(
                    msgs,
                    &indices,
                    columns.batch,
                    columns.json_null,
                    &mut outcome,
                );
                if run.is_ok() {
                    return outcome;
                }
            }
        }
        self.process_general(msgs)
    }

    /// [`Rule::process`] without the fast decoding path: the reference it is tested against.
    #[doc(hidden)]
    pub fn process_general<M: Borrow<Message>>(&self, msgs: &[M]) -> Outcome {
        let mut outcome = Outcome::default();
        let mut rows = Vec::with_capacity(msgs.len());
        // A rule that reads no field of the payload (`SELECT *`, `encode(*, 'base64')`,
        // `topic()`) takes any bytes, JSON or not, as AWS does with binary payloads;
        // `SELECT *, <more>` needs a JSON object to add to.
        let adds_to_payload = self.parsed.star && !self.parsed.columns.is_empty();
        let raw_only = self.fields.is_empty() && !adds_to_payload;
        for (index, m) in msgs.iter().enumerate() {
            if raw_only {
                rows.push((index, Value::Object(serde_json::Map::new())));
                continue;
            }
            match decode::project(&m.borrow().payload, &self.fields) {
                Ok(map) => rows.push((index, Value::Object(map))),
                Err(e) => outcome.failures.push(Failure {
                    index,
                    reason: match e {
                        DecodeError::InvalidJson(_) => FailureReason::InvalidJson,
                        DecodeError::NotAnObject => FailureReason::NotAnObject,
                    },
                    message: e.to_string(),
                }),
            }
        }
        if rows.is_empty() {
            return outcome;
        }
        // AWS keeps Int and Decimal apart per message (20 stays 20, 20.5 stays 20.5), while
        // a column has one type. Messages whose numbers are integers in one place and
        // fractions in another run in separate batches, each with its own column types.
        let groups = decode::group_by_number_kinds(rows, &self.fields);
        let several = groups.len() > 1;
        for rows in groups {
            match self.run_rows(msgs, &rows, &mut outcome) {
                Ok(()) => {}
                Err(_) if rows.len() > 1 => {
                    // Find the culprits: one message at a time.
                    for row in rows.chunks(1) {
                        if let Err(e) = self.run_rows(msgs, row, &mut outcome) {
                            outcome.failures.push(failure(row[0].0, e));
                        }
                    }
                }
                Err(e) => outcome.failures.push(failure(rows[0].0, e)),
            }
        }
        if several || outcome.outputs.windows(2).any(|w| w[0].index > w[1].index) {
            outcome.outputs.sort_by_key(|o| o.index);
        }
        outcome.failures.sort_by_key(|f| f.index);
        outcome
    }

    /// Runs the rule over projected payloads (the general decoding path).
    fn run_rows<M: Borrow<Message>>(
        &self,
        msgs: &[M],
        rows: &[(usize, Value)],
        outcome: &mut Outcome,
    ) -> Result<(), RunError> {
        let payload = decode::rows_to_batch(rows, &self.fields).map_err(RunError::Data)?;
        let json_null = self
            .meta
            .json_null
            .iter()
            .map(|path| {
                let flags: BooleanArray = rows
                    .iter()
                    .map(|(_, v)| {
                        Some(
                            path.split('.')
                                .try_fold(v, |v, k| v.get(k))
                                .is_some_and(Value::is_null),
                        )
                    })
                    .collect();
                Arc::new(flags) as ArrayRef
            })
            .collect();
        let indices: Vec<usize> = rows.iter().map(|(i, _)| *i).collect();
        self.run(msgs, &indices, payload, json_null, outcome)
    }

    /// Runs the rule over the payload columns of the messages at `indices` in `msgs`, with
    /// a JSON-null flag column per path of `meta.json_null`.
    fn run<M: Borrow<Message>>(
        &self,
        msgs: &[M],
        indices: &[usize],
        payload: RecordBatch,
        json_null: Vec<ArrayRef>,
        outcome: &mut Outcome,
    ) -> Result<(), RunError> {
        let batch = self
            .add_meta_columns(payload, msgs, indices, json_null)
            .map_err(RunError::Data)?;
        let plan = self.plan_for(&batch.schema()).map_err(RunError::Data)?;
        let n = batch.num_rows();

        let (batch, selected): (RecordBatch, Vec<usize>) = match &plan.condition {
            None => (batch, (0..n).collect()),
            Some(cond) => {
                let mask = cond
                    .evaluate(&batch)
                    .and_then(|v| v.into_array(n))
                    .map_err(|e| RunError::Eval(e.to_string()))?;
                if mask.data_type() == &DataType::Null {
                    outcome.filtered_out += n;
                    return Ok(());
                }
                let mask = mask.as_boolean();
                let mask = if mask.null_count() > 0 {
                    prep_null_mask_filter(mask)
                } else {
                    mask.clone()
                };
                let selected: Vec<usize> = (0..n).filter(|&i| mask.value(i)).collect();
                let filtered = filter_record_batch(&batch, &mask)
                    .map_err(|e| RunError::Eval(e.to_string()))?;
                (filtered, selected)
            }
        };
        outcome.filtered_out += n - selected.len();
        if selected.is_empty() {
            return Ok(());
        }
        let eval = |exprs: &[Arc<dyn PhysicalExpr>]| -> Result<Vec<ArrayRef>, RunError> {
            exprs
                .iter()
                .map(|e| {
                    e.evaluate(&batch)
                        .and_then(|v| v.into_array(batch.num_rows()))
                })
                .collect::<Result<_, _>>()
                .map_err(|e| RunError::Eval(e.to_string()))
        };
        let columns = eval(&plan.columns)?;
        let templates = eval(&plan.templates)?;
        let encoded = self
            .encode(&plan, columns, selected.len())
            .map_err(RunError::Eval)?;
        // Pass-through fields that were JSON null: (output name, null flags of the selected rows).
        let nulls: Vec<(&str, &BooleanArray)> = self
            .parsed
            .passthrough
            .iter()
            .filter_map(|(i, path)| {
                let flags = batch
                    .column_by_name(&meta::json_null(path))?
                    .as_boolean_opt()?;
                Some((self.parsed.columns[*i].name.as_str(), flags))
            })
            .collect();
        for (k, (row, json)) in selected.iter().zip(encoded).enumerate() {
            let index = indices[*row];
            let json = if nulls.iter().any(|(_, f)| f.value(k)) {
                with_nulls(
                    &json,
                    nulls.iter().filter(|(_, f)| f.value(k)).map(|(n, _)| *n),
                )
            } else {
                json
            };
            let payload = if self.parsed.star {
                splice(&msgs[index].borrow().payload, &json)
            } else if self.parsed.value {
                match unwrap_value(&json) {
                    Some(v) => v,
                    None => {
                        // SELECT VALUE of an undefined value: nothing to send.
                        outcome.filtered_out += 1;
                        continue;
                    }
                }
            } else {
                json
            };
            let params = templates
                .iter()
                .map(|a| {
                    if a.is_null(k) {
                        None
                    } else {
                        array_value_to_string(a, k).ok()
                    }
                })
                .collect();
            outcome.outputs.push(Output {
                index,
                payload,
                params,
            });
        }
        Ok(())
    }

    /// Encodes the output columns as one JSON object per row. Null (undefined) values are
    /// left out of the objects.
    fn encode(
        &self,
        plan: &Plan,
        columns: Vec<ArrayRef>,
        rows: usize,
    ) -> Result<Vec<Bytes>, String> {
        if columns.is_empty() {
            return Ok(vec![Bytes::from_static(b"{}"); rows]);
        }
        let batch =
            RecordBatch::try_new(plan.output_schema.clone(), columns).map_err(|e| e.to_string())?;
        encode_json_rows(&batch)
    }

    fn with_meta_fields(&self, payload: Schema) -> Schema {
        let mut fields: Vec<Field> = payload
            .fields()
            .iter()
            .filter(|f| !meta::is_meta(f.name()))
            .map(|f| f.as_ref().clone())
            .collect();
        if self.meta.topic {
            fields.push(Field::new(meta::TOPIC, DataType::Utf8, false));
        }
        if self.meta.client_id {
            fields.push(Field::new(meta::CLIENT_ID, DataType::Utf8, true));
        }
        if self.meta.timestamp {
            fields.push(Field::new(meta::TIMESTAMP, DataType::Int64, false));
        }
        if self.meta.principal {
            fields.push(Field::new(meta::PRINCIPAL, DataType::Utf8, true));
        }
        if self.meta.source_ip {
            fields.push(Field::new(meta::SOURCE_IP, DataType::Utf8, true));
        }
        if self.meta.payload {
            fields.push(Field::new(meta::PAYLOAD, DataType::Binary, false));
        }
        if self.meta.trace_id {
            fields.push(Field::new(meta::TRACE_ID, DataType::Utf8, false));
        }
        for path in &self.meta.json_null {
            fields.push(Field::new(meta::json_null(path), DataType::Boolean, false));
        }
        for name in &self.meta.mqtt {
            fields.push(Field::new(meta::mqtt_property(name), DataType::Utf8, true));
        }
        for key in &self.meta.user_properties {
            let name = meta::user_properties(key.as_deref());
            fields.push(match key {
                Some(_) => Field::new(
                    name,
                    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
                    true,
                ),
                None => dialect::json_values::json_text_field(&name),
            });
        }
        Schema::new(fields)
    }

    fn add_meta_columns<M: Borrow<Message>>(
        &self,
        payload: RecordBatch,
        msgs: &[M],
        indices: &[usize],
        json_null: Vec<ArrayRef>,
    ) -> Result<RecordBatch, String> {
        let schema = Arc::new(self.with_meta_fields(payload.schema().as_ref().clone()));
        let (_, mut columns, _) = payload.into_parts();
        let msg = |i: usize| msgs[indices[i]].borrow();
        let n = indices.len();
        if self.meta.topic {
            let a: StringArray = (0..n).map(|i| Some(msg(i).topic.as_str())).collect();
            columns.push(Arc::new(a));
        }
        if self.meta.client_id {
            let a: StringArray = (0..n).map(|i| msg(i).client_id.as_deref()).collect();
            columns.push(Arc::new(a));
        }
        if self.meta.timestamp {
            let a: Int64Array = (0..n).map(|i| Some(msg(i).received_at_ms)).collect();
            columns.push(Arc::new(a));
        }
        if self.meta.principal {
            let a: StringArray = (0..n).map(|i| msg(i).principal.as_deref()).collect();
            columns.push(Arc::new(a));
        }
        if self.meta.source_ip {
            let a: StringArray = (0..n).map(|i| msg(i).source_ip.as_deref()).collect();
            columns.push(Arc::new(a));
        }
        if self.meta.payload {
            let a: BinaryArray = (0..n).map(|i| Some(msg(i).payload.as_ref())).collect();
            columns.push(Arc::new(a));
        }
        if self.meta.trace_id {
            let a: StringArray = (0..n).map(|i| Some(msg(i).trace_id())).collect();
            columns.push(Arc::new(a));
        }
        columns.extend(json_null);
        let props = |i: usize| msg(i).properties.as_deref();
        for name in &self.meta.mqtt {
            let a: StringArray = (0..n).map(|i| props(i).and_then(|p| p.get(name))).collect();
            columns.push(Arc::new(a));
        }
        for key in &self.meta.user_properties {
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
        .map_err(|e| e.to_string())
    }

    /// The plan for a batch schema, from the cache or planned now.
    fn plan_for(&self, schema: &SchemaRef) -> Result<Arc<Plan>, String> {
        let mut plans = self.plans.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, plan)) = plans
            .iter()
            .find(|(s, _)| Arc::ptr_eq(s, schema) || s == schema)
        {
            return Ok(plan.clone());
        }
        let plan = Arc::new(self.plan(schema)?);
        if plans.len() >= PLAN_CACHE {
            plans.remove(0);
        }
        plans.push((schema.clone(), plan.clone()));
        Ok(plan)
    }

    fn plan(&self, schema: &SchemaRef) -> Result<Plan, String> {
        let state = self.engine.state();
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| e.to_string())?;
        let logical = |expr: &SqlExpr| -> Result<datafusion::logical_expr::Expr, String> {
            let e = state
                .create_logical_expr_from_sql_expr(
                    ExprWithAlias {
                        expr: dialect::nested::resolve(expr.clone(), schema),
                        alias: None,
                    },
                    &df_schema,
                )
                .map_err(|e| e.strip_backtrace())?;
            types::aws_coercions(e, &df_schema).map_err(|e| e.strip_backtrace())
        };
        let to_physical = |e| {
            state
                .create_physical_expr(e, &df_schema)
                .map_err(|e| e.strip_backtrace())
        };
        let physical = |expr: &SqlExpr| to_physical(logical(expr)?);
        let condition = match &self.parsed.condition {
            None => None,
            Some(c) => {
                let cond = types::as_condition(logical(c)?, &df_schema)
                    .map_err(|e| e.strip_backtrace())?;
                let p = to_physical(cond)?;
                let ty = p.data_type(schema).map_err(|e| e.to_string())?;
                if !matches!(ty, DataType::Boolean | DataType::Null) {
                    return Err(format!(
                        "WHERE must be a condition, but '{c}' is of type {ty}"
                    ));
                }
                Some(p)
            }
        };
        let mut columns = Vec::with_capacity(self.parsed.columns.len());
        let mut fields = Vec::with_capacity(self.parsed.columns.len());
        for col in &self.parsed.columns {
            let p = physical(&col.expr)?;
            // The metadata says how to encode the value (see `json_values`).
            let field = p.return_field(schema).map_err(|e| e.to_string())?;
            fields.push(
                Field::new(&col.name, field.data_type().clone(), true)
                    .with_metadata(field.metadata().clone()),
            );
            columns.push(p);
        }
        let templates = self
            .templates
            .iter()
            .map(&physical)
            .collect::<Result<_, _>>()?;
        Ok(Plan {
            condition,
            columns,
            templates,
            output_schema: Arc::new(Schema::new(fields)),
        })
    }
}

fn failure(index: usize, e: RunError) -> Failure {
    let (reason, message) = match e {
        RunError::Data(m) => (FailureReason::TypeMismatch, m),
        RunError::Eval(m) => (FailureReason::Evaluation, m),
    };
    Failure {
        index,
        reason,
        message,
    }
}

/// The encoded object with `"name":null` members added.
fn with_nulls<'a>(json: &Bytes, names: impl Iterator<Item = &'a str>) -> Bytes {
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
fn unwrap_value(json: &Bytes) -> Option<Bytes> {
    const PREFIX: &[u8] = br#"{"v":"#;
    json.starts_with(PREFIX)
        .then(|| json.slice(PREFIX.len()..json.len() - 1))
}

/// `SELECT *, extra AS x`: the payload object with the extra members appended.
fn splice(payload: &Bytes, extra: &Bytes) -> Bytes {
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
/// hold (see `dialect::json_values`).
pub fn encode_json_rows(batch: &RecordBatch) -> Result<Vec<Bytes>, String> {
    let rows = batch.num_rows();
    let mut writer: LineDelimitedWriter<Vec<u8>> = WriterBuilder::new()
        .with_explicit_nulls(false)
        .with_encoder_factory(Arc::new(dialect::json_values::Encoders))
        .build::<_, LineDelimited>(Vec::new());
    writer.write(batch).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    let buf = Bytes::from(writer.into_inner());
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

    /// The walkthrough rule, as shipped.
    const SEED: &str = include_str!("../../queries/high_temperature.sql");

    fn json(b: &Bytes) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    fn msg(payload: &str) -> Message {
        Message::new(
            "enterprise/facilities/plant-01/metrics",
            payload.as_bytes().to_vec(),
        )
        .with_client_id("dev-7")
    }

    #[test]
    fn seed_rule_transforms_and_filters() {
        let rule = Rule::compile(&Engine::new(), SEED, &[]).unwrap();
        let msgs = [
            msg(
                r#"{"currentAmbientTemperature": 90.5, "geoCoordinates": {"latitude": 52.1, "longitude": 4.3}}"#,
            ),
            msg(
                r#"{"currentAmbientTemperature": 20.0, "geoCoordinates": {"latitude": 1, "longitude": 2}}"#,
            ),
            msg(r#"{"currentAmbientTemperature": 100}"#),
        ];
        let out = rule.process(&msgs);
        assert_eq!(out.failures, []);
        assert_eq!(out.filtered_out, 1);
        assert_eq!(out.outputs.len(), 2);
        let first = json(&out.outputs[0].payload);
        assert_eq!(first["deviceIdentifier"], "dev-7");
        assert_eq!(first["celsiusReading"], 90.5);
        assert!((first["fahrenheitReading"].as_f64().unwrap() - 194.9).abs() < 1e-9);
        assert_eq!(first["lat"], 52.1);
        assert_eq!(first["lon"], 4.3);
        // Missing fields are undefined and left out.
        let third = json(&out.outputs[1].payload);
        assert_eq!(out.outputs[1].index, 2);
        assert_eq!(third.as_object().unwrap().len(), 3, "{third}");
        // Batched with 90.5, the integer 100 stays an integer (AWS's Int).
        assert_eq!(
            out.outputs[1].payload.slice(..).as_ref(),
            &br#"{"deviceIdentifier":"dev-7","celsiusReading":100,"fahrenheitReading":212.0}"#[..]
        );
        assert_eq!(third["celsiusReading"], 100);
    }

    #[test]
    fn bad_messages_fail_alone() {
        let rule = Rule::compile(&Engine::new(), SEED, &[]).unwrap();
        let msgs = [
            msg(r#"{"currentAmbientTemperature": 90}"#),
            msg("not json"),
            msg(r#"{"currentAmbientTemperature": 91, "geoCoordinates": "north"}"#),
            msg("[1]"),
            // A string that is not a number makes the comparison undefined: filtered out.
            msg(r#"{"currentAmbientTemperature": "hot"}"#),
            msg(r#"{"currentAmbientTemperature": 92}"#),
        ];
        let out = rule.process(&msgs);
        let passed: Vec<usize> = out.outputs.iter().map(|o| o.index).collect();
        assert_eq!(passed, [0, 5]);
        let failed: Vec<(usize, &str)> = out
            .failures
            .iter()
            .map(|f| (f.index, f.reason.as_str()))
            .collect();
        assert_eq!(
            failed,
            [
                (1, "invalid_json"),
                (2, "type_mismatch"),
                (3, "not_an_object"),
            ]
        );
    }

    #[test]
    fn star_keeps_the_payload_and_appends_columns() {
        let e = Engine::new();
        let rule = Rule::compile(&e, "SELECT * FROM 'a/b'", &[]).unwrap();
        let out = rule.process(&[Message::new("a/b", &b" {\"x\": [1, {\"y\": 2}]} "[..])]);
        assert_eq!(
            json(&out.outputs[0].payload),
            serde_json::json!({"x": [1, {"y": 2}]})
        );
        let rule = Rule::compile(&e, "SELECT *, 15 AS speed FROM 'a/b' WHERE t > 1", &[]).unwrap();
        let out = rule.process(&[
            Message::new("a/b", &br#"{"color": "red", "t": 50}"#[..]),
            Message::new("a/b", &br#"{"t": 0}"#[..]),
        ]);
        assert_eq!(out.outputs.len(), 1);
        assert_eq!(
            json(&out.outputs[0].payload),
            serde_json::json!({"color": "red", "t": 50, "speed": 15})
        );
    }

    #[test]
    fn nested_objects_come_out_nested() {
        let rule = Rule::compile(&Engine::new(), "SELECT g, g.a.b AS deep FROM '#'", &[]).unwrap();
        let out = rule.process(&[Message::new(
            "x",
            &br#"{"g": {"a": {"b": 1}, "c": "s"}}"#[..],
        )]);
        assert_eq!(
            json(&out.outputs[0].payload),
            serde_json::json!({"g": {"a": {"b": 1}, "c": "s"}, "deep": 1})
        );
    }

    #[test]
    fn templates_are_evaluated_per_message() {
        let exprs = vec![
            "topic(3)".to_owned(),
            "clientid()".to_owned(),
            "v * 2".to_owned(),
        ];
        let rule = Rule::compile(&Engine::new(), "SELECT v FROM 'a/+/+'", &exprs).unwrap();
        let out = rule.process(&[
            Message::new("a/b/c", &br#"{"v": 2}"#[..]).with_client_id("me"),
            Message::new("a/b/d", &br#"{}"#[..]),
        ]);
        assert_eq!(
            out.outputs[0].params,
            [Some("c".into()), Some("me".into()), Some("4".into())]
        );
        assert_eq!(out.outputs[1].params, [Some("d".into()), None, None]);
    }

    #[test]
    fn templates_may_use_set_variables() {
        let exprs = vec!["@level".to_owned(), "@geo.lat".to_owned()];
        let rule = Rule::compile(
            &Engine::new(),
            "SET @level = CASE WHEN t > 50 THEN 'high' ELSE 'low' END, @geo = g SELECT t FROM 'a'",
            &exprs,
        )
        .unwrap();
        let out = rule.process(&[Message::new("a", &br#"{"t": 60, "g": {"lat": 1.5}}"#[..])]);
        assert_eq!(
            out.outputs[0].params,
            [Some("high".into()), Some("1.5".into())]
        );
        let err = Rule::compile(&Engine::new(), "SELECT t FROM 'a'", &exprs).unwrap_err();
        assert!(err.message.contains("unknown variable @level"), "{err}");
    }

    #[test]
    fn trace_ids_name_the_message_across_rules() {
        let e = Engine::new();
        let a = Rule::compile(&e, "SELECT traceid() AS t FROM 'a'", &[]).unwrap();
        let b = Rule::compile(&e, "SELECT v FROM 'a'", &["traceid()".to_owned()]).unwrap();
        let msgs = [
            Message::new("a", &br#"{"v": 1}"#[..]),
            Message::new("a", &br#"{"v": 2}"#[..]),
        ];
        let (out_a, out_b) = (a.process(&msgs), b.process(&msgs));
        let ids: Vec<String> = out_a
            .outputs
            .iter()
            .map(|o| json(&o.payload)["t"].as_str().unwrap().to_owned())
            .collect();
        assert_ne!(ids[0], ids[1]);
        assert_eq!(ids[0].len(), 36);
        assert_eq!(&ids[0][14..15], "4", "{}", ids[0]);
        assert_eq!(out_b.outputs[0].params[0].as_deref(), Some(ids[0].as_str()));
        assert_eq!(out_b.outputs[1].params[0].as_deref(), Some(ids[1].as_str()));
    }

    #[test]
    fn evaluation_errors_fail_the_message() {
        let rule = Rule::compile(&Engine::new(), "SELECT 10 / d AS q FROM 'a'", &[]).unwrap();
        let out = rule.process(&[
            Message::new("a", &br#"{"d": 2}"#[..]),
            Message::new("a", &br#"{"d": 0}"#[..]),
        ]);
        assert_eq!(out.outputs.len(), 1);
        assert_eq!(json(&out.outputs[0].payload), serde_json::json!({"q": 5}));
        assert_eq!(out.failures[0].index, 1);
        assert_eq!(out.failures[0].reason, FailureReason::Evaluation);
        assert!(
            out.failures[0].message.contains("Divide by zero"),
            "{:?}",
            out.failures
        );
    }

    #[test]
    fn compile_errors() {
        let e = Engine::new();
        let err = Rule::compile(&e, "SELECT a FROM 'x' WHERE a + 1", &[]).unwrap_err();
        assert!(err.message.contains("WHERE must be a condition"), "{err}");
        let err = Rule::compile(&e, "SELECT a FROM 'x'", &["nosuch(1)".to_owned()]).unwrap_err();
        assert!(err.message.contains("template expression"), "{err}");
    }

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

    #[test]
    fn scalar_batches_take_the_fast_path_and_others_do_not() {
        let rule = Rule::compile(&Engine::new(), SEED, &[]).unwrap();
        let shape = rule.shape.as_ref().expect("the seed rule has a fast path");
        let fast = |payloads: &[&str]| {
            shape
                .decode(payloads.iter().map(|p| p.as_bytes()))
                .is_some()
        };
        assert!(fast(&[
            r#"{"currentAmbientTemperature": 90.5, "geoCoordinates": {"latitude": 52.1}, "x": [1]}"#,
            r#"{"currentAmbientTemperature": null, "geoCoordinates": null}"#,
            r#"{"other": {"deep": [1, {"a": "b"}]}}"#,
        ]));
        // An Int after a Decimal, a string after a number, an object where a scalar is
        // read, a scalar where an object is read into, a duplicate key, bad JSON.
        assert!(!fast(&[
            r#"{"currentAmbientTemperature": 90.5}"#,
            r#"{"currentAmbientTemperature": 90}"#
        ]));
        assert!(!fast(&[
            r#"{"currentAmbientTemperature": 90.5}"#,
            r#"{"currentAmbientTemperature": "hot"}"#
        ]));
        assert!(!fast(&[r#"{"currentAmbientTemperature": {"c": 1}}"#]));
        assert!(!fast(&[r#"{"geoCoordinates": 5}"#]));
        assert!(!fast(&[
            r#"{"currentAmbientTemperature": 1, "currentAmbientTemperature": 2}"#
        ]));
        assert!(!fast(&[r#"{"currentAmbientTemperature": 1"#]));
        assert!(!fast(&["[1]"]));
        // A rule that reads the whole payload never does.
        let star = Rule::compile(&Engine::new(), "SELECT * FROM 't'", &[]).unwrap();
        assert!(star.shape.is_none());
    }

    mod fast_path {
        use super::*;
        use proptest::prelude::*;

        fn scalar() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("null".to_owned()),
                Just("true".to_owned()),
                Just("false".to_owned()),
                (-5i64..5).prop_map(|i| i.to_string()),
                (-50i64..50).prop_map(|i| format!("{}.5", i)),
                Just("\"a\"".to_owned()),
                Just("\"b\\\"c\"".to_owned()),
                Just("18446744073709551615".to_owned()),
            ]
        }

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => scalar(),
                1 => prop::collection::vec(scalar(), 0..3).prop_map(|v| format!("[{}]", v.join(","))),
                2 => prop::collection::vec((prop_oneof![Just("x"), Just("y"), Just("z")], scalar()), 0..3)
                    .prop_map(|kv| {
                        let members: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                        format!("{{{}}}", members.join(","))
                    }),
            ]
        }

        fn payload() -> impl Strategy<Value = String> {
            prop_oneof![
                20 => prop::collection::vec((prop_oneof![Just("a"), Just("b"), Just("g"), Just("o")], value()), 0..5)
                    .prop_map(|kv| {
                        let members: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                        format!("{{{}}}", members.join(","))
                    }),
                1 => Just("not json".to_owned()),
                1 => Just("[1]".to_owned()),
            ]
        }

        /// Batches that agree on their types, so that most of them take the fast path.
        fn uniform() -> impl Strategy<Value = Vec<String>> {
            (scalar(), scalar(), 1usize..6).prop_map(|(a, x, n)| {
                (0..n)
                    .map(|i| match i % 3 {
                        0 => format!(r#"{{"a": {a}, "g": {{"x": {x}, "y": 1}}, "o": [1]}}"#),
                        1 => format!(r#"{{"b": "s{i}", "g": null}}"#),
                        _ => format!(r#"{{"a": null, "g": {{"x": {x}}}}}"#),
                    })
                    .collect()
            })
        }

        const RULES: [&str; 6] = [
            "SELECT a, b, g.x AS x FROM 't'",
            "SELECT a + 1 AS n, g.x AS x, g.y AS y FROM 't' WHERE g.x <> 0 OR a > 0",
            "SELECT isUndefined(a) AS u, isNull(g.x) AS n, g.x FROM 't'",
            "SELECT VALUE g.x FROM 't' WHERE NOT isUndefined(g.x)",
            "SELECT g, a FROM 't'",
            "SELECT *, a AS aa FROM 't'",
        ];

        fn check(payloads: &[String]) -> Result<(), TestCaseError> {
            let msgs: Vec<Message> = payloads
                .iter()
                .map(|p| Message::new("t", p.as_bytes().to_vec()))
                .collect();
            for sql in RULES {
                let rule = Rule::compile(&Engine::new(), sql, &[]).unwrap();
                prop_assert_eq!(rule.process(&msgs), rule.process_general(&msgs), "{}", sql);
            }
            Ok(())
        }

        proptest! {
            #[test]
            fn agrees_with_the_general_path(payloads in prop::collection::vec(payload(), 1..6)) {
                check(&payloads)?;
            }

            #[test]
            fn agrees_on_uniform_batches(payloads in uniform()) {
                check(&payloads)?;
            }
        }
    }
}
