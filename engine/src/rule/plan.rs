//! A rule's plan for one batch schema: its predicate, its output columns and its template
//! expressions as DataFusion physical expressions, with the output schema. A rule is
//! planned once per distinct input schema; the plans of the last few are kept.

use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DFSchema, DataFusionError};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, ExprWithAlias};

use crate::dialect::{self, ParsedRule, types};
use crate::engine::Engine;
use crate::error::{Classify, ErrorClass};

/// How many distinct input schemas a rule keeps plans for.
const PLAN_CACHE: usize = 16;

/// Why a rule does not plan for a batch schema: at submission, against the fields the
/// rule reads, the rule is refused; at run time, the messages of the batch fail.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PlanError {
    /// DataFusion refused an expression (an unknown column, a function given types it
    /// does not take, ...).
    #[error("{}", .0.strip_backtrace())]
    DataFusion(#[from] DataFusionError),
    #[error("WHERE must be a condition, but '{condition}' is of type {ty}")]
    NotACondition { condition: String, ty: DataType },
}

impl Classify for PlanError {
    fn class(&self) -> ErrorClass {
        ErrorClass::User
    }
}

pub(super) struct Plan {
    pub condition: Option<Arc<dyn PhysicalExpr>>,
    pub columns: Vec<Arc<dyn PhysicalExpr>>,
    pub templates: Vec<Arc<dyn PhysicalExpr>>,
    pub output_schema: SchemaRef,
}

/// What a rule is planned from: its parsed SQL and its template expressions.
pub(super) struct Planner<'a> {
    pub engine: &'a Engine,
    pub parsed: &'a ParsedRule,
    pub templates: &'a [SqlExpr],
}

/// A rule's plans, one per input schema it has seen lately.
#[derive(Default)]
pub(super) struct Plans(Mutex<Vec<(SchemaRef, Arc<Plan>)>>);

impl Plans {
    /// The plan for a batch schema, from the cache or planned now.
    pub fn for_schema(
        &self,
        planner: Planner<'_>,
        schema: &SchemaRef,
    ) -> Result<Arc<Plan>, PlanError> {
        let mut plans = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, plan)) = plans
            .iter()
            .find(|(s, _)| Arc::ptr_eq(s, schema) || s == schema)
        {
            return Ok(plan.clone());
        }
        let plan = Arc::new(planner.plan(schema)?);
        if plans.len() >= PLAN_CACHE {
            plans.remove(0);
        }
        plans.push((schema.clone(), plan.clone()));
        Ok(plan)
    }
}

impl Planner<'_> {
    fn plan(&self, schema: &SchemaRef) -> Result<Plan, PlanError> {
        let state = self.engine.state();
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let logical = |expr: &SqlExpr| -> Result<datafusion::logical_expr::Expr, PlanError> {
            let e = state.create_logical_expr_from_sql_expr(
                ExprWithAlias {
                    expr: dialect::nested::resolve(expr.clone(), schema),
                    alias: None,
                },
                &df_schema,
            )?;
            Ok(types::aws_coercions(e, &df_schema)?)
        };
        let to_physical = |e| state.create_physical_expr(e, &df_schema);
        let physical = |expr: &SqlExpr| Ok::<_, PlanError>(to_physical(logical(expr)?)?);
        let condition = match &self.parsed.condition {
            None => None,
            Some(c) => {
                let cond = types::as_condition(logical(c)?, &df_schema)?;
                let p = to_physical(cond)?;
                let ty = p.data_type(schema)?;
                if !matches!(ty, DataType::Boolean | DataType::Null) {
                    return Err(PlanError::NotACondition {
                        condition: c.to_string(),
                        ty,
                    });
                }
                Some(p)
            }
        };
        let mut columns = Vec::with_capacity(self.parsed.columns.len());
        let mut fields = Vec::with_capacity(self.parsed.columns.len());
        for col in &self.parsed.columns {
            let p = physical(&col.expr)?;
            // The metadata says how to encode the value (see `crate::json_text`).
            let field = p.return_field(schema)?;
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
