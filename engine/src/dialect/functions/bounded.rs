//! Every DataFusion function a rule can call, wrapped so that it stays within the limits
//! and the memory budget of the evaluation that calls it (see [`crate::memory`]).
//!
//! - Functions whose output a count argument sizes (`repeat('x', 2000000000)`,
//!   `array_repeat(0, 1e9)`, `range(1e10)`) refuse to build a value larger than
//!   [`MAX_TEXT_BYTES`](crate::dialect::limits::MAX_TEXT_BYTES) or
//!   [`MAX_LIST_LEN`](crate::dialect::limits::MAX_LIST_LEN). The check runs on the
//!   arguments, before the wrapped function allocates anything; a refusal is an
//!   evaluation error, which fails the batch to the rule's error action (or the rule's
//!   submission, when DataFusion folds a constant call while planning).
//! - Inside a rule's evaluation, every call estimates what it will build from its
//!   arguments (exactly for the count-sized functions and `replace`, the size of its
//!   arguments for the others; weir's own `regexp_replace` counts its matches itself)
//!   and runs only if that fits the budget left. A batch that would not fit is run one row
//!   at a time, with the budget checked after each, so that a loose estimate does not fail
//!   a batch that fits; and every call is followed by a check of what it did allocate.
//!
//! The wrapper is here; what a call would build is measured in `bounded/measure.rs`.

mod measure;

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::compute::concat;
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::{DataFusionError, ExprSchema, Result, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::execution::SessionState;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, StructFieldMapping,
};

use crate::memory;
use measure::{Bound, measure};

/// Functions left unwrapped: DataFusion recognises them by their type while planning
/// (`get_field` of `named_struct`, `log` of `power`), and they build nothing larger than
/// their arguments.
const UNWRAPPED: &[&str] = &["get_field", "named_struct", "struct", "log", "power"];

/// The identity, metered: a value computed once (a literal, a function of literals) that
/// an array function's lambda returns for every element is charged once per element
/// before the array function repeats it.
pub(crate) const MATERIALIZE: &str = "__weir_materialize";

/// The functions this module adds to the registry.
pub(super) fn udfs() -> Vec<ScalarUDF> {
    vec![ScalarUDF::new_from_impl(Materialize {
        signature: Signature::any(1, datafusion::logical_expr::Volatility::Immutable),
    })]
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Materialize {
    signature: Signature,
}

impl ScalarUDFImpl for Materialize {
    fn name(&self) -> &str {
        MATERIALIZE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(args.arg_fields[0].clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        Ok(args.args[0].clone())
    }
}

/// Replaces every scalar function in `state`'s registry with its metered wrapper.
pub fn install(state: &mut SessionState) {
    let mut names: Vec<String> = state
        .scalar_functions()
        .values()
        .map(|f| f.name().to_owned())
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        if UNWRAPPED.contains(&name.as_str()) {
            continue;
        }
        let Some(inner) = state.scalar_functions().get(&name).cloned() else {
            continue;
        };
        let bound = Bound::of(&name);
        state
            .register_udf(Arc::new(Metered::wrap(inner, bound)))
            .expect("a wrapper replaces the function it wraps");
    }
}

/// The call `f` with its function metered, if it is not yet: DataFusion's planner builds
/// some calls (`make_array` for `[a, b]`) from its own functions, not the registry's.
pub(crate) fn meter_call(f: &ScalarFunction) -> Option<Expr> {
    let name = f.func.name();
    if f.func.inner().is::<Metered>() || UNWRAPPED.contains(&name) {
        return None;
    }
    let bound = Bound::of(name);
    let udf = Metered::wrap(f.func.clone(), bound);
    Some(Expr::ScalarFunction(ScalarFunction::new_udf(
        Arc::new(udf),
        f.args.clone(),
    )))
}

/// A call of one of weir's own kernels that the dialect plans directly (not through the
/// registry), metered like the functions of the registry.
pub(crate) fn metered_call<F: ScalarUDFImpl + 'static>(kernel: F, args: Vec<Expr>) -> Expr {
    let udf = Metered::wrap(Arc::new(ScalarUDF::new_from_impl(kernel)), None);
    Expr::ScalarFunction(ScalarFunction::new_udf(Arc::new(udf), args))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Metered {
    inner: Arc<ScalarUDF>,
    bound: Option<Bound>,
}

impl Metered {
    fn wrap(inner: Arc<ScalarUDF>, bound: Option<Bound>) -> ScalarUDF {
        ScalarUDF::new_from_impl(Self { inner, bound })
    }

    /// Runs the wrapped function on one row at a time, checking the budget after each.
    fn row_by_row(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let mut parts: Vec<ArrayRef> = Vec::with_capacity(args.number_rows);
        let mut bytes = 0usize;
        for i in 0..args.number_rows {
            let row = ScalarFunctionArgs {
                args: args
                    .args
                    .iter()
                    .map(|a| match a {
                        ColumnarValue::Array(a) => ColumnarValue::Array(a.slice(i, 1)),
                        ColumnarValue::Scalar(s) => ColumnarValue::Scalar(s.clone()),
                    })
                    .collect(),
                arg_fields: args.arg_fields.clone(),
                number_rows: 1,
                return_field: args.return_field.clone(),
                config_options: args.config_options.clone(),
            };
            let out = self.inner.invoke_with_args(row)?.into_array(1)?;
            bytes = bytes.saturating_add(out.get_array_memory_size());
            parts.push(out);
            memory::check().map_err(over_budget)?;
        }
        // The parts are copied into one array.
        memory::reserve(bytes).map_err(over_budget)?;
        let parts: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        Ok(ColumnarValue::Array(concat(&parts)?))
    }
}

/// The evaluation error of a batch over its memory budget.
pub(crate) fn over_budget(e: memory::Exceeded) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl ScalarUDFImpl for Metered {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let updated = self.inner.inner().with_updated_config(config)?;
        Some(Self::wrap(Arc::new(updated), self.bound))
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    #[allow(deprecated)]
    fn is_nullable(&self, args: &[Expr], schema: &dyn ExprSchema) -> bool {
        self.inner.inner().is_nullable(args, schema)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.inner.inner().conditional_arguments(args)
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner.evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.inner.propagate_constraints(interval, inputs)
    }

    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<PreimageResult> {
        self.inner.inner().preimage(args, lit_expr, info)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }

    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.inner().strictly_order_preserving(inputs)
    }

    fn struct_field_mapping(
        &self,
        literal_args: &[Option<ScalarValue>],
    ) -> Option<StructFieldMapping> {
        self.inner.inner().struct_field_mapping(literal_args)
    }

    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.inner.inner().placement(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let available = memory::available();
        if available.is_none() && self.bound.is_none() {
            // Not inside a rule's evaluation, and no limit of its own.
            return self.inner.invoke_with_args(args);
        }
        let rows = args.number_rows;
        let need = measure(self.name(), self.bound, &args.args, rows, available)?;
        let Some(available) = available else {
            return self.inner.invoke_with_args(args);
        };
        let out = if need.total <= available as u128 {
            self.inner.invoke_with_args(args)?
        } else if args.number_rows > 1 && need.row <= available as u128 {
            self.row_by_row(args)?
        } else {
            let total = usize::try_from(need.total).unwrap_or(usize::MAX);
            memory::reserve(total).map_err(over_budget)?;
            self.inner.invoke_with_args(args)?
        };
        memory::check().map_err(over_budget)?;
        if let ColumnarValue::Scalar(v) = &out
            && v.size() > LARGE_VALUE
        {
            // One value for every row: whatever uses it (CASE, a struct, an array
            // function's lambda) may repeat it `rows` times.
            memory::reserve(v.size().saturating_mul(rows)).map_err(over_budget)?;
        }
        Ok(out)
    }
}

/// A single value larger than this is charged as if repeated on every row.
const LARGE_VALUE: usize = 4096;
