//! Checking a rule without building anything: its SQL version, its number of tests and
//! actions, each action (one naming a connection resolved with it; one written inline
//! held to the operator's policy) and its SQL, compiled with the actions' template
//! expressions.

use std::sync::Arc;

use weir_connectors::delivery::ConfigError;
use weir_connectors::sinks::ConnectionConfig;
use weir_connectors::sinks::{Action, ActionConfig};
use weir_engine::template::TemplateExprs;
use weir_engine::{Rule, SqlVersion};

use super::error::RuleError;
use super::spec::{MAX_TESTS, RuleSpec};
use super::state::RuleService;
use crate::pipeline::CompiledRule;

/// The most actions a rule may have (AWS IoT's limit).
pub const MAX_ACTIONS: usize = 10;

/// Runs `f`, which may take a while (compiling a rule, evaluating a rule test), without
/// holding up the other tasks of the runtime's thread (the HTTP API, the broker): on a
/// multi-threaded runtime the thread hands its tasks to another first.
pub(crate) fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Whether a rule names the connection `name`.
pub(super) fn uses(spec: &RuleSpec, name: &str) -> bool {
    spec.actions
        .iter()
        .chain(&spec.error_action)
        .any(|a| a.connection() == Some(name))
}

impl RuleService {
    /// Checks an action: one naming a connection is resolved with it (`over` replaces a
    /// stored connection of its name) and trusted; one written inline is held to the
    /// operator's policy.
    fn action(
        &self,
        a: &ActionConfig,
        exprs: &mut TemplateExprs,
        over: Option<(&str, &ConnectionConfig)>,
    ) -> Result<Action, ConfigError> {
        let Some(name) = a.connection() else {
            return a.validate(exprs, self.pipeline.policy());
        };
        let config = match over {
            Some((n, c)) if n == name => c.clone(),
            _ => self.connection_config(name).ok_or_else(|| {
                ConfigError::invalid(a.kind(), format!("no connection named '{name}'"))
            })?,
        };
        a.with_connection(name, &config)?.validate_trusted(exprs)
    }

    /// Checks a rule without building anything: SQL version, actions, SQL.
    pub fn check(&self, spec: &RuleSpec) -> Result<CompiledRule, RuleError> {
        self.check_using(spec, None)
    }

    /// [`RuleService::check`], with `over` in place of the stored connection of its name.
    pub(super) fn check_using(
        &self,
        spec: &RuleSpec,
        over: Option<(&str, &ConnectionConfig)>,
    ) -> Result<CompiledRule, RuleError> {
        let Some(version) = SqlVersion::parse(&spec.sql_version) else {
            return Err(RuleError::Invalid {
                field: "sql_version",
                message: format!(
                    "SQL version '{}' is not supported; weir implements AWS IoT SQL {}",
                    spec.sql_version,
                    SqlVersion::ALL.map(SqlVersion::as_str).join(" and "),
                ),
            });
        };
        if spec.tests.len() > MAX_TESTS {
            return Err(RuleError::Invalid {
                field: "tests",
                message: format!(
                    "a rule has at most {} tests, got {}",
                    MAX_TESTS,
                    spec.tests.len()
                ),
            });
        }
        if spec.actions.len() > MAX_ACTIONS {
            return Err(RuleError::Invalid {
                field: "actions",
                message: format!(
                    "a rule has at most {MAX_ACTIONS} actions, got {}",
                    spec.actions.len()
                ),
            });
        }
        // The actions' template expressions, in the order in which the rule evaluates
        // them for every output: the validated actions index into this list.
        let mut exprs = TemplateExprs::default();
        let mut actions = Vec::with_capacity(spec.actions.len());
        for (i, a) in spec.actions.iter().enumerate() {
            actions.push(
                self.action(a, &mut exprs, over)
                    .map_err(|e| RuleError::action(format!("actions[{i}]"), e))?,
            );
        }
        let error_action = match &spec.error_action {
            None => None,
            Some(a) => {
                let mut own = TemplateExprs::default();
                let action = self
                    .action(a, &mut own, over)
                    .map_err(|e| RuleError::action("error_action", e))?;
                if !own.as_slice().is_empty() {
                    return Err(RuleError::Action {
                        context: "error_action".to_owned(),
                        message: "the error action's parameters cannot use ${...} templates"
                            .to_owned(),
                    });
                }
                Some(action)
            }
        };
        let rule =
            off_runtime(|| Rule::compile_for(&self.engine, version, &spec.sql, exprs.as_slice()))
                .map_err(RuleError::Sql)?;
        debug_assert_eq!(exprs.as_slice().len(), rule.template_count());
        Ok(CompiledRule {
            rule: Arc::new(rule),
            actions,
            error_action,
        })
    }
}
