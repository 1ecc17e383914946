//! A compiled rule: parsed once, planned once per input schema, evaluated per batch.
//!
//! [`Rule::process`] takes a batch of messages and returns, per message, its output(s) or
//! why it failed. The fast path decodes the whole batch into one `RecordBatch` and runs the
//! cached physical expressions over it. If anything in the batch goes wrong (a field whose
//! type conflicts across messages, an expression that fails on one value), the batch is
//! re-run one message at a time, so one bad message fails alone and the others pass.
//!
//! Here: compiling and running; in `plan.rs` the plan for one batch schema, in `encode.rs`
//! the outputs as JSON, in `outcome.rs` what a batch gives.

use std::borrow::Borrow;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray};
use datafusion::arrow::compute::{filter_record_batch, prep_null_mask_filter};
use datafusion::arrow::datatypes::{DataType, Float64Type, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::sql::sqlparser::ast::Expr as SqlExpr;
use serde_json::Value;

use crate::decode::{self, DecodeError};
use crate::dialect::{self, ParsedRule, SqlError, SqlVersion};
use crate::engine::Engine;
use crate::fields::FieldTree;
use crate::meta::{self, MetaNeeds};
use crate::{Message, memory};

mod encode;
mod outcome;
mod plan;

pub use encode::encode_json_rows;
use encode::{splice, unwrap_value, with_nulls};
pub use outcome::{Failure, FailureReason, Outcome, Output};
use plan::{Plan, PlanError, Planner, Plans};

/// A rule ready to run.
pub struct Rule {
    engine: Arc<Engine>,
    parsed: ParsedRule,
    templates: Vec<SqlExpr>,
    fields: FieldTree,
    meta: MetaNeeds,
    /// The fast decoding path's layout of `fields`, when the rule can take it.
    shape: Option<decode::Shape>,
    plans: Plans,
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("parsed", &self.parsed)
            .finish_non_exhaustive()
    }
}

/// A problem with the batch's data or with evaluating it, or the batch went over the
/// memory budget.
enum RunError {
    Data(String),
    Eval(String),
    Memory(memory::Exceeded),
}

impl From<memory::Exceeded> for RunError {
    fn from(over: memory::Exceeded) -> Self {
        Self::Memory(over)
    }
}

/// An evaluation error, or the memory budget if that is what stopped it.
fn eval_error(e: impl std::fmt::Display) -> RunError {
    match memory::check() {
        Err(over) => RunError::Memory(over),
        Ok(()) => RunError::Eval(e.to_string()),
    }
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
        Self::compile_for(engine, SqlVersion::default(), sql, template_exprs)
    }

    /// [`Rule::compile`], for a rule written for AWS IoT SQL `version`.
    pub fn compile_for(
        engine: &Arc<Engine>,
        version: SqlVersion,
        sql: &str,
        template_exprs: &[String],
    ) -> Result<Self, SqlError> {
        // On a thread of its own with a deep stack: the parser and the passes before the
        // depth check recurse as deep as the text nests (see `dialect::limits`).
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("weir-compile".to_owned())
                .stack_size(dialect::limits::COMPILE_STACK)
                .spawn_scoped(scope, || {
                    Self::compile_here(engine, version, sql, template_exprs)
                })
                .map_err(|e| SqlError::new(format!("cannot start compiling the rule: {e}")))?
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn compile_here(
        engine: &Arc<Engine>,
        version: SqlVersion,
        sql: &str,
        template_exprs: &[String],
    ) -> Result<Self, SqlError> {
        let parsed = dialect::parse_rule(engine.state(), sql, version)?;
        let mut fields = parsed.fields.clone();
        let mut meta = parsed.meta.clone();
        let mut templates = Vec::with_capacity(template_exprs.len());
        for text in template_exprs {
            let e = dialect::parse_expr(engine.state(), text, &parsed.variables, version).map_err(
                |mut e| {
                    e.message = format!("in template expression '${{{text}}}': {}", e.message);
                    e.line = None;
                    e.column = None;
                    e
                },
            )?;
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
            plans: Plans::default(),
        };
        let schema = rule.meta.schema(&decode::reference_schema(&rule.fields));
        rule.plan_for(&Arc::new(schema))
            .map_err(|e| SqlError::new(e.to_string()))?;
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
    ///
    /// Inside a [`memory::Scope`], a batch that goes over the budget is run again in
    /// halves, each counted afresh, so that only the messages that need more than the
    /// budget on their own fail (reason `memory_budget`).
    pub fn process<M: Borrow<Message>>(&self, msgs: &[M]) -> Outcome {
        self.process_holding(msgs, 0)
    }

    /// [`Rule::process`] with `held` bytes of earlier outputs of the same batch still held.
    fn process_holding<M: Borrow<Message>>(&self, msgs: &[M], held: usize) -> Outcome {
        match self.process_within_budget(msgs) {
            Ok(outcome) => outcome,
            Err(over) if msgs.len() == 1 => Outcome {
                failures: vec![Failure {
                    index: 0,
                    reason: FailureReason::MemoryBudget,
                    message: over.to_string(),
                }],
                ..Outcome::default()
            },
            Err(_) => {
                // Each half counts from what the batch's outputs so far hold, so that
                // all of them together stay within the budget too.
                let mid = msgs.len() / 2;
                memory::restart_at(held);
                let mut outcome = self.process_holding(&msgs[..mid], held);
                let held = held.saturating_add(outcome.bytes());
                memory::restart_at(held);
                let second = self.process_holding(&msgs[mid..], held);
                outcome
                    .outputs
                    .extend(second.outputs.into_iter().map(|mut o| {
                        o.index += mid;
                        o
                    }));
                outcome
                    .failures
                    .extend(second.failures.into_iter().map(|mut f| {
                        f.index += mid;
                        f
                    }));
                outcome.filtered_out += second.filtered_out;
                outcome
            }
        }
    }

    fn process_within_budget<M: Borrow<Message>>(
        &self,
        msgs: &[M],
    ) -> Result<Outcome, memory::Exceeded> {
        if let Some(shape) = &self.shape {
            let payloads = msgs.iter().map(|m| m.borrow().payload.as_ref());
            if let Some(columns) = shape.decode(payloads) {
                memory::check()?;
                let mut outcome = Outcome::default();
                let indices: Vec<usize> = (0..msgs.len()).collect();
                let run = self.run(
                    msgs,
                    &indices,
                    columns.batch,
                    columns.json_null,
                    &mut outcome,
                );
                match run {
                    Ok(()) => return Ok(outcome),
                    Err(RunError::Memory(over)) => return Err(over),
                    Err(_) => {}
                }
            }
        }
        self.process_general_within_budget(msgs)
    }

    /// [`Rule::process`] without the fast decoding path: the reference it is tested against.
    #[doc(hidden)]
    pub fn process_general<M: Borrow<Message>>(&self, msgs: &[M]) -> Outcome {
        self.process_general_within_budget(msgs)
            .unwrap_or_else(|over| Outcome {
                failures: (0..msgs.len())
                    .map(|index| Failure {
                        index,
                        reason: FailureReason::MemoryBudget,
                        message: over.to_string(),
                    })
                    .collect(),
                ..Outcome::default()
            })
    }

    fn process_general_within_budget<M: Borrow<Message>>(
        &self,
        msgs: &[M],
    ) -> Result<Outcome, memory::Exceeded> {
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
            memory::check()?;
        }
        if rows.is_empty() {
            return Ok(outcome);
        }
        // AWS keeps Int and Decimal apart per message (20 stays 20, 20.5 stays 20.5), while
        // a column has one type. Messages whose numbers are integers in one place and
        // fractions in another run in separate batches, each with its own column types.
        let groups = decode::group_by_number_kinds(rows, &self.fields);
        let several = groups.len() > 1;
        for rows in groups {
            match self.run_rows(msgs, &rows, &mut outcome) {
                Ok(()) => {}
                Err(RunError::Memory(over)) => return Err(over),
                Err(_) if rows.len() > 1 => {
                    // Find the culprits: one message at a time.
                    for row in rows.chunks(1) {
                        match self.run_rows(msgs, row, &mut outcome) {
                            Ok(()) => {}
                            Err(RunError::Memory(over)) => return Err(over),
                            Err(e) => outcome.failures.push(failure(row[0].0, e)),
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
        Ok(outcome)
    }

    /// Runs the rule over projected payloads (the general decoding path).
    fn run_rows<M: Borrow<Message>>(
        &self,
        msgs: &[M],
        rows: &[(usize, Value)],
        outcome: &mut Outcome,
    ) -> Result<(), RunError> {
        let payload =
            decode::rows_to_batch(rows, &self.fields).map_err(|e| RunError::Data(e.to_string()))?;
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
            .meta
            .add_columns(payload, msgs, indices, json_null)
            .map_err(|e| RunError::Data(e.to_string()))?;
        memory::check()?;
        let plan = self
            .plan_for(&batch.schema())
            .map_err(|e| RunError::Data(e.to_string()))?;
        let n = batch.num_rows();

        let (batch, selected): (RecordBatch, Vec<usize>) = match &plan.condition {
            None => (batch, (0..n).collect()),
            Some(cond) => {
                let mask = cond
                    .evaluate(&batch)
                    .and_then(|v| v.into_array(n))
                    .map_err(eval_error)?;
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
                let filtered = filter_record_batch(&batch, &mask).map_err(eval_error)?;
                memory::check()?;
                (filtered, selected)
            }
        };
        if selected.is_empty() {
            outcome.filtered_out += n;
            return Ok(());
        }
        let rows = batch.num_rows();
        let eval = |exprs: &[Arc<dyn PhysicalExpr>]| -> Result<Vec<ArrayRef>, RunError> {
            exprs
                .iter()
                .map(|e| {
                    let value = e.evaluate(&batch).map_err(eval_error)?;
                    if let ColumnarValue::Scalar(s) = &value {
                        // A literal becomes a column of `rows` copies.
                        memory::reserve(s.size().saturating_mul(rows))?;
                    }
                    let array = value.into_array(rows).map_err(eval_error)?;
                    memory::check()?;
                    Ok(array)
                })
                .collect()
        };
        let columns = eval(&plan.columns)?;
        let templates = eval(&plan.templates)?;
        // The JSON takes about what its columns hold, each counted (a column may be the
        // same array as another: `SELECT s AS a, s AS b`).
        memory::reserve(
            columns
                .iter()
                .chain(&templates)
                .map(|c| c.get_array_memory_size())
                .fold(0usize, usize::saturating_add),
        )?;
        let encoded = self
            .encode(&plan, columns, selected.len())
            .map_err(eval_error)?;
        memory::check()?;
        // Counted only now: a batch that fails before this point runs again a message at a
        // time, which counts them then (found by fuzzing: a message counted twice).
        outcome.filtered_out += n - selected.len();
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
        // Columns that are the literal NULL: null in every output.
        let always: Vec<&str> = self
            .parsed
            .null_literals
            .iter()
            .map(|i| self.parsed.columns[*i].name.as_str())
            .collect();
        for (k, (row, json)) in selected.iter().zip(encoded).enumerate() {
            memory::check()?;
            let index = indices[*row];
            let json = if !always.is_empty() || nulls.iter().any(|(_, f)| f.value(k)) {
                let passed = nulls.iter().filter(|(_, f)| f.value(k)).map(|(n, _)| *n);
                with_nulls(&json, always.iter().copied().chain(passed))
            } else {
                json
            };
            let payload = if self.parsed.star {
                splice(&msgs[index].borrow().payload, &json)
            } else if self.parsed.value {
                // Nothing to send for an undefined value, nor for an array with 2015-10-08
                // (one item only).
                let arrays = self.parsed.version.arrays_as_values();
                match unwrap_value(&json).filter(|v| arrays || !v.starts_with(b"[")) {
                    Some(v) => v,
                    None => {
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
                    } else if let Some(whole) = self.whole_number(a, k) {
                        Some(whole)
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

    /// A template's value at `row` as an Int's text, where it is a whole-number Decimal
    /// and the rule's SQL version writes those as Ints.
    fn whole_number(&self, values: &ArrayRef, row: usize) -> Option<String> {
        let v = values.as_primitive_opt::<Float64Type>()?.value(row);
        self.parsed
            .version
            .whole_decimals_as_ints()
            .then(|| crate::json_text::whole_number(v))
            .flatten()
            .map(|i| i.to_string())
    }

    /// Encodes the output columns as one JSON object per row. Null (undefined) values are
    /// left out of the objects.
    fn encode(
        &self,
        plan: &Plan,
        columns: Vec<ArrayRef>,
        rows: usize,
    ) -> Result<Vec<Bytes>, ArrowError> {
        if columns.is_empty() {
            return Ok(vec![Bytes::from_static(b"{}"); rows]);
        }
        let batch = RecordBatch::try_new(plan.output_schema.clone(), columns)?;
        encode_json_rows(&batch, self.parsed.version)
    }

    /// The plan for a batch schema, from the cache or planned now.
    fn plan_for(&self, schema: &SchemaRef) -> Result<Arc<Plan>, PlanError> {
        let planner = Planner {
            engine: &self.engine,
            parsed: &self.parsed,
            templates: &self.templates,
        };
        self.plans.for_schema(planner, schema)
    }
}

fn failure(index: usize, e: RunError) -> Failure {
    let (reason, message) = match e {
        RunError::Data(m) => (FailureReason::TypeMismatch, m),
        RunError::Eval(m) => (FailureReason::Evaluation, m),
        RunError::Memory(over) => (FailureReason::MemoryBudget, over.to_string()),
    };
    Failure {
        index,
        reason,
        message,
    }
}

#[cfg(test)]
mod tests;
