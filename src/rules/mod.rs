//! The rule service: the one place rules are checked, stored and started, for the HTTP
//! API and for startup alike.
//!
//! A rule is checked once per change ([`RuleService::check`]): its SQL version, its
//! actions (each validated by its sink, which also parses its `${...}` templates) and its
//! SQL, compiled with the actions' template expressions. Then, if it is enabled, its sinks
//! are built; it is stored; and the pipeline starts it (or stops it, when disabled).
//! Changes are serialised by the store's lock.
//!
//! * [`spec`]: a rule as users write it and as weir stores it.
//! * [`test_run`]: a rule tried on sample messages without deploying it.

pub mod spec;
pub mod test_run;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Mutex;
use weir_connectors::delivery::ConfigError;
use weir_connectors::sinks::ConnectionConfig;
use weir_connectors::sinks::{Action, ActionConfig};
use weir_engine::template::TemplateExprs;
use weir_engine::{Engine, Rule, SqlError, SqlVersion, now_ms};

use crate::connections::{ConnectionStore, MAX_CONNECTIONS, PutError, StoredConnection};
use crate::pipeline::{CompiledRule, Pipeline};
use crate::rule_store::{RuleStore, StoreError, parse_row};
use crate::shared_store::Kind as SharedKind;
use spec::{Precondition, RuleSpec, StoredRule, parse_rule_file, validate_name};

/// Gives the secrets a rule sends back redacted (as an API answer showed them) the values
/// the stored version of the rule has, action by action.
fn keep_secrets(spec: &mut RuleSpec, old: Option<&RuleSpec>) -> Result<(), RuleError> {
    for (i, a) in spec.actions.iter_mut().enumerate() {
        a.restore_secrets(old.and_then(|o| o.actions.get(i)))
            .map_err(|e| RuleError::Action {
                context: format!("actions[{i}]"),
                message: e.to_string(),
            })?;
    }
    if let Some(a) = &mut spec.error_action {
        a.restore_secrets(old.and_then(|o| o.error_action.as_ref()))
            .map_err(|e| RuleError::Action {
                context: "error_action".to_owned(),
                message: e.to_string(),
            })?;
    }
    Ok(())
}

/// Why a rule change was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("{0}")]
    Sql(SqlError),
    /// An action's configuration, or building its sink.
    #[error("{context}: {message}")]
    Action { context: String, message: String },
    /// An action's destination is one the operator's policy does not let rules reach.
    #[error("{context}: {message}")]
    NotAllowed { context: String, message: String },
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{0}")]
    InvalidName(String),
    #[error("no rule named '{0}'")]
    NotFound(String),
    #[error("no connection named '{0}'")]
    ConnectionNotFound(String),
    #[error("the connection '{name}' is used by the rules {rules:?}; change or delete them first")]
    ConnectionInUse { name: String, rules: Vec<String> },
    #[error("weir has {MAX_CONNECTIONS} connections, the most it keeps; delete one first")]
    TooManyConnections,
    /// The instance has as many rules as it may.
    #[error("weir has {0} rules, as many as --max-rules allows; delete one or raise the limit")]
    TooManyRules(usize),
    /// Something else in the request is wrong.
    #[error("{0}")]
    Request(String),
    /// The rule is not at the version the request required (`If-Match`).
    #[error("{}", match current {
        Some(v) => format!("rule '{name}' is at version {v}, not the one the request names (read it again)"),
        None => format!("no rule named '{name}', as the request requires"),
    })]
    PreconditionFailed { name: String, current: Option<u64> },
    /// Other replicas kept changing the rule while this one tried to store its change.
    #[error("rule '{0}' was changed by another replica meanwhile, again and again; try again")]
    Conflict(String),
    /// The rule's own tests fail: each failure with what it expected, what the rule
    /// gave, and the difference.
    #[error("{} of the rule's {total} tests failed", failures.len())]
    TestsFailed {
        total: usize,
        failures: Vec<serde_json::Value>,
    },
    /// The store could not be written: the change was not made.
    #[error(transparent)]
    Store(anyhow::Error),
}

impl RuleError {
    fn action(context: impl Into<String>, e: ConfigError) -> Self {
        let (context, message) = (context.into(), e.to_string());
        match e {
            ConfigError::NotAllowed { .. } => Self::NotAllowed { context, message },
            _ => Self::Action { context, message },
        }
    }
}

/// Refuses a change whose precondition the stored rule does not meet.
fn check_precondition(
    store: &RuleStore,
    name: &str,
    precondition: &Precondition,
) -> Result<(), RuleError> {
    let current = store.get(name).map(|r| r.version);
    if precondition.holds(current) {
        Ok(())
    } else {
        Err(RuleError::PreconditionFailed {
            name: name.to_owned(),
            current,
        })
    }
}

pub struct RuleService {
    engine: Arc<Engine>,
    pipeline: Arc<Pipeline>,
    /// The store; its lock also serialises rule changes.
    store: Mutex<RuleStore>,
    /// The most rules this instance keeps (`--max-rules`).
    max_rules: usize,
    /// The operator's named connections. Changed with the rule store locked.
    connections: std::sync::Mutex<ConnectionStore>,
}

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
fn uses(spec: &RuleSpec, name: &str) -> bool {
    spec.actions
        .iter()
        .chain(&spec.error_action)
        .any(|a| a.connection() == Some(name))
}

/// How often a change is tried again when other replicas changed the rule first.
const CONFLICT_TRIES: usize = 3;

/// The most actions a rule may have (AWS IoT's limit).
pub const MAX_ACTIONS: usize = 10;

impl RuleService {
    pub fn new(
        engine: Arc<Engine>,
        pipeline: Arc<Pipeline>,
        store: RuleStore,
        connections: ConnectionStore,
        max_rules: usize,
    ) -> Self {
        Self {
            engine,
            pipeline,
            store: Mutex::new(store),
            max_rules,
            connections: std::sync::Mutex::new(connections),
        }
    }

    fn connection_store(&self) -> std::sync::MutexGuard<'_, ConnectionStore> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

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
            _ => self
                .connection_store()
                .get(name)
                .map(|c| c.config.clone())
                .ok_or_else(|| {
                    ConfigError::invalid(a.kind(), format!("no connection named '{name}'"))
                })?,
        };
        a.with_connection(name, &config)?.validate_trusted(exprs)
    }

    /// The connections, secrets redacted.
    pub fn connections(&self) -> Vec<StoredConnection> {
        self.connection_store()
            .list()
            .map(StoredConnection::redacted)
            .collect()
    }

    /// One connection, secrets redacted.
    pub fn connection(&self, name: &str) -> Option<StoredConnection> {
        self.connection_store()
            .get(name)
            .map(StoredConnection::redacted)
    }

    /// Creates or replaces a connection. Every rule that names it must stay valid with
    /// it; those that run are restarted with it. Returns the connection (redacted) and
    /// whether it is new.
    pub async fn put_connection(
        &self,
        name: &str,
        mut config: ConnectionConfig,
        source: &str,
    ) -> Result<(StoredConnection, bool), RuleError> {
        validate_name(name)
            .map_err(|m| RuleError::InvalidName(m.replace("rule name", "connection name")))?;
        let store = self.store.lock().await;
        let old = self.connection_store().get(name).cloned();
        config
            .restore_secrets(old.as_ref().map(|o| &o.config))
            .map_err(|e| RuleError::Action {
                context: "connection".to_owned(),
                message: e.to_string(),
            })?;
        config.validate().map_err(|e| RuleError::Action {
            context: "connection".to_owned(),
            message: e.to_string(),
        })?;
        // The same again (a config file's connection at every start of every replica):
        // nothing to store, no rule to restart.
        if let Some(o) = &old
            && o.config == config
            && o.source == source
        {
            return Ok((o.redacted(), false));
        }
        let dependents: Vec<StoredRule> = store
            .list()
            .filter(|r| uses(&r.spec, name))
            .cloned()
            .collect();
        for r in &dependents {
            self.check_using(&r.spec, Some((name, &config)))
                .map_err(|e| RuleError::Action {
                    context: "connection".to_owned(),
                    message: format!("the rule '{}' would not be valid with it: {e}", r.name),
                })?;
        }
        let now = now_ms();
        let stored = StoredConnection {
            name: name.to_owned(),
            config,
            source: source.to_owned(),
            created_at_ms: old.as_ref().map_or(now, |o| o.created_at_ms),
            updated_at_ms: now,
        };
        match store.shared().cloned() {
            None => self
                .connection_store()
                .put(stored.clone())
                .map_err(|e| match e {
                    PutError::TooMany => RuleError::TooManyConnections,
                    PutError::Store(e) => RuleError::Store(e),
                })?,
            Some(shared) => {
                if old.is_none() && self.connection_store().len() >= MAX_CONNECTIONS {
                    return Err(RuleError::TooManyConnections);
                }
                let body =
                    serde_json::to_string(&stored).map_err(|e| RuleError::Store(e.into()))?;
                shared
                    .upsert(SharedKind::Connection, name, &body)
                    .await
                    .map_err(RuleError::Store)?;
                self.connection_store()
                    .set_cached(name, Some(stored.clone()));
            }
        }
        for r in dependents.iter().filter(|r| r.spec.enabled) {
            self.run_here(r).await;
        }
        Ok((stored.redacted(), old.is_none()))
    }

    /// Deletes a connection that no rule names.
    pub async fn delete_connection(&self, name: &str) -> Result<(), RuleError> {
        let store = self.store.lock().await;
        let rules: Vec<String> = store
            .list()
            .filter(|r| uses(&r.spec, name))
            .map(|r| r.name.clone())
            .collect();
        if !rules.is_empty() {
            return Err(RuleError::ConnectionInUse {
                name: name.to_owned(),
                rules,
            });
        }
        let removed = match store.shared() {
            None => self.connection_store().remove(name),
            Some(shared) => {
                let removed = shared.delete_any(SharedKind::Connection, name).await;
                self.connection_store().set_cached(name, None);
                removed
            }
        };
        match removed {
            Ok(true) => Ok(()),
            Ok(false) => Err(RuleError::ConnectionNotFound(name.to_owned())),
            Err(e) => Err(RuleError::Store(e)),
        }
    }

    /// Brings the connection `name` in step with the fleet's shared store; the running
    /// rules that name it restart with it.
    pub async fn sync_connection(&self, name: &str) {
        let store = self.store.lock().await;
        let Some(shared) = store.shared().cloned() else {
            return;
        };
        let remote = match shared.get(SharedKind::Connection, name).await {
            Ok(row) => row.and_then(|r| serde_json::from_str::<StoredConnection>(&r.body).ok()),
            Err(e) => {
                tracing::warn!(connection = name, error = %format!("{e:#}"), "cannot read a changed connection from the rule store");
                return;
            }
        };
        if self.connection_store().get(name) == remote.as_ref() {
            return;
        }
        self.connection_store().set_cached(name, remote);
        tracing::info!(
            connection = name,
            "connection changed in the shared store: applied"
        );
        let dependents: Vec<StoredRule> = store
            .list()
            .filter(|r| r.spec.enabled && uses(&r.spec, name))
            .cloned()
            .collect();
        for r in &dependents {
            self.run_here(r).await;
        }
    }

    /// [`RuleService::sync_connection`] for every connection that differs.
    pub async fn sync_connections(&self) {
        let Some(shared) = self.store.lock().await.shared().cloned() else {
            return;
        };
        let rows = match shared.all(SharedKind::Connection).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read the connections of the rule store");
                return;
            }
        };
        let remote = ConnectionStore::from_shared(rows);
        let mut names: Vec<String> = remote.list().map(|c| c.name.clone()).collect();
        names.extend(self.connection_store().list().map(|c| c.name.clone()));
        names.sort();
        names.dedup();
        for name in names {
            if remote.get(&name) != self.connection_store().get(&name) {
                self.sync_connection(&name).await;
            }
        }
    }

    /// Compiles, builds and starts a stored rule here (or stops it, when that fails),
    /// storing nothing: after a change another replica made, or to a connection it uses.
    async fn run_here(&self, rule: &StoredRule) {
        let started = async {
            let compiled = self.check(&rule.spec)?;
            let prepared = self
                .pipeline
                .build(&rule.name, compiled)
                .await
                .map_err(|e| RuleError::Action {
                    context: e.context,
                    message: e.message,
                })?;
            self.pipeline.start(&rule.name, prepared);
            Ok::<(), RuleError>(())
        };
        if let Err(e) = started.await {
            self.pipeline.stop(&rule.name);
            tracing::error!(rule = %rule.name, error = %e, "rule cannot start here");
        }
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Checks a rule without building anything: SQL version, actions, SQL.
    pub fn check(&self, spec: &RuleSpec) -> Result<CompiledRule, RuleError> {
        self.check_using(spec, None)
    }

    /// [`RuleService::check`], with `over` in place of the stored connection of its name.
    fn check_using(
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
        if spec.tests.len() > test_run::MAX_TESTS {
            return Err(RuleError::Invalid {
                field: "tests",
                message: format!(
                    "a rule has at most {} tests, got {}",
                    test_run::MAX_TESTS,
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

    /// Creates or replaces a rule: checks it, builds its sinks if it is enabled, stores
    /// it and starts it (or stops it, when disabled). Returns the stored rule and whether
    /// it is new.
    pub async fn put(
        &self,
        name: &str,
        spec: RuleSpec,
        source: String,
        precondition: &Precondition,
    ) -> Result<(StoredRule, bool), RuleError> {
        let mut store = self.store.lock().await;
        // In a fleet another replica may change the rule between this one's read and its
        // write: the write is refused, the copy here refreshed, and the change checked
        // again against the precondition and made over the new version.
        for _ in 0..CONFLICT_TRIES {
            check_precondition(&store, name, precondition)?;
            match self
                .put_locked(&mut store, name, spec.clone(), source.clone())
                .await
            {
                Err(RuleError::Conflict(_)) => continue,
                done => return done,
            }
        }
        Err(RuleError::Conflict(name.to_owned()))
    }

    async fn put_locked(
        &self,
        store: &mut RuleStore,
        name: &str,
        spec: RuleSpec,
        source: String,
    ) -> Result<(StoredRule, bool), RuleError> {
        validate_name(name).map_err(RuleError::InvalidName)?;
        let mut spec = spec;
        keep_secrets(&mut spec, store.get(name).map(|r| &r.spec))?;
        let created = store.get(name).map(|r| r.created_at_ms);
        let version = store.get(name).map_or(1, |r| r.version + 1);
        let count = store.list().count();
        if created.is_none() && count >= self.max_rules {
            return Err(RuleError::TooManyRules(count));
        }
        let rule = StoredRule {
            name: name.to_owned(),
            spec,
            source,
            created_at_ms: created.unwrap_or_else(now_ms),
            updated_at_ms: now_ms(),
            version,
        };
        self.apply(store, rule.clone()).await?;
        Ok((rule, created.is_none()))
    }

    /// Enables or disables a stored rule.
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<StoredRule, RuleError> {
        let mut store = self.store.lock().await;
        for _ in 0..CONFLICT_TRIES {
            let mut rule = store
                .get(name)
                .cloned()
                .ok_or_else(|| RuleError::NotFound(name.to_owned()))?;
            if rule.spec.enabled == enabled {
                return Ok(rule);
            }
            rule.spec.enabled = enabled;
            rule.updated_at_ms = now_ms();
            rule.version += 1;
            match self.apply(&mut store, rule.clone()).await {
                Err(RuleError::Conflict(_)) => continue,
                done => return done.map(|()| rule),
            }
        }
        Err(RuleError::Conflict(name.to_owned()))
    }

    /// Deletes a rule: it stops, and its metrics are forgotten.
    pub async fn delete(&self, name: &str, precondition: &Precondition) -> Result<(), RuleError> {
        let mut store = self.store.lock().await;
        for _ in 0..CONFLICT_TRIES {
            check_precondition(&store, name, precondition)?;
            match store.delete(name).await {
                Ok(Some(_)) => {
                    self.pipeline.stop(name);
                    self.pipeline.metrics().forget_rule(name);
                    return Ok(());
                }
                Ok(None) => return Err(RuleError::NotFound(name.to_owned())),
                Err(StoreError::Conflict) => continue,
                Err(StoreError::Failed(e)) => return Err(RuleError::Store(e)),
            }
        }
        Err(RuleError::Conflict(name.to_owned()))
    }

    /// Brings this replica in step with the fleet's shared store for the rule `name`:
    /// what the store holds (or its absence) is what runs here. Nothing to do without a
    /// shared store, or when the copy here is at the store's version.
    pub async fn sync_rule(&self, name: &str) {
        let mut store = self.store.lock().await;
        let Some(shared) = store.shared().cloned() else {
            return;
        };
        match shared.get(SharedKind::Rule, name).await {
            Ok(row) => {
                let remote = row.and_then(|r| parse_row(&r.name, &r.body, r.version));
                self.adopt(&mut store, name, remote).await;
            }
            Err(e) => {
                tracing::warn!(rule = name, error = %format!("{e:#}"), "cannot read a changed rule from the rule store")
            }
        }
    }

    /// [`RuleService::sync_rule`] for every rule whose version differs from the store's,
    /// or that the store no longer has.
    pub async fn sync_all(&self) {
        let mut store = self.store.lock().await;
        let Some(shared) = store.shared().cloned() else {
            return;
        };
        let versions = match shared.versions(SharedKind::Rule).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read the rule store");
                return;
            }
        };
        let remote: std::collections::HashMap<String, u64> = versions.into_iter().collect();
        let mut differing: Vec<String> = remote
            .iter()
            .filter(|(n, v)| store.get(n.as_str()).map(|r| r.version) != Some(**v))
            .map(|(n, _)| n.clone())
            .collect();
        differing.extend(
            store
                .list()
                .filter(|r| !remote.contains_key(&r.name))
                .map(|r| r.name.clone()),
        );
        for name in differing {
            match shared.get(SharedKind::Rule, &name).await {
                Ok(row) => {
                    let rule = row.and_then(|r| parse_row(&r.name, &r.body, r.version));
                    self.adopt(&mut store, &name, rule).await;
                }
                Err(e) => {
                    tracing::warn!(rule = %name, error = %format!("{e:#}"), "cannot read a changed rule from the rule store")
                }
            }
        }
    }

    /// Makes `remote` (another replica's version of the rule `name`, or its deletion)
    /// the rule here, and runs it, or stops it.
    async fn adopt(&self, store: &mut RuleStore, name: &str, remote: Option<StoredRule>) {
        let local = store.get(name).map(|r| r.version);
        match remote {
            Some(rule) if Some(rule.version) != local => {
                store.set_cached(name, Some(rule.clone()));
                tracing::info!(
                    rule = name,
                    version = rule.version,
                    "rule changed in the shared store: applied"
                );
                if rule.spec.enabled {
                    self.run_here(&rule).await;
                } else {
                    self.pipeline.stop(name);
                }
            }
            None if local.is_some() => {
                store.set_cached(name, None);
                self.pipeline.stop(name);
                self.pipeline.metrics().forget_rule(name);
                tracing::info!(rule = name, "rule deleted in the shared store: stopped");
            }
            _ => {}
        }
    }

    pub async fn get(&self, name: &str) -> Option<StoredRule> {
        self.store.lock().await.get(name).cloned()
    }

    pub async fn list(&self) -> Vec<StoredRule> {
        self.store.lock().await.list().cloned().collect()
    }

    /// Checks a rule, stores it and makes the pipeline run it (or stop it, when disabled).
    async fn apply(&self, store: &mut RuleStore, rule: StoredRule) -> Result<(), RuleError> {
        let compiled = self.check(&rule.spec)?;
        self.run_tests(&compiled, &rule.spec.tests)?;
        let prepared = if rule.spec.enabled {
            Some(
                self.pipeline
                    .build(&rule.name, compiled)
                    .await
                    .map_err(|e| RuleError::Action {
                        context: e.context,
                        message: e.message,
                    })?,
            )
        } else {
            None
        };
        match store.store(rule.clone()).await {
            Ok(_) => {}
            Err(StoreError::Conflict) => return Err(RuleError::Conflict(rule.name)),
            Err(StoreError::Failed(e)) => return Err(RuleError::Store(e)),
        }
        match prepared {
            Some(p) => self.pipeline.start(&rule.name, p),
            None => self.pipeline.stop(&rule.name),
        }
        Ok(())
    }

    /// Starts the stored rules, after loading the rule files of `queries_dir` into the
    /// store (a file replaces a stored rule of the same name). A rule file that is not
    /// valid stops weir; a stored rule that no longer starts is logged and left stopped.
    /// The store stays locked throughout, so that a change made over the API meanwhile
    /// waits and is not undone by the loading.
    pub async fn load(&self, queries_dir: &Path) -> anyhow::Result<()> {
        let mut store = self.store.lock().await;
        // The rules stored (and so started) from files here.
        let mut started = std::collections::HashSet::new();
        if let Ok(entries) = std::fs::read_dir(queries_dir) {
            let mut files: Vec<_> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sql"))
                .collect();
            files.sort();
            for path in files {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let (name, spec) = parse_rule_file(&path, &text)?;
                let source = format!("file:{}", path.display());
                // A file stored as it is now is not stored again (its version would
                // change at every start, of every replica of a fleet): it starts below.
                if store
                    .get(&name)
                    .is_some_and(|r| r.spec == spec && r.source == source)
                {
                    continue;
                }
                let mut stored = None;
                for _ in 0..CONFLICT_TRIES {
                    match self
                        .put_locked(&mut store, &name, spec.clone(), source.clone())
                        .await
                    {
                        Err(RuleError::Conflict(_)) => continue,
                        done => {
                            stored = Some(done);
                            break;
                        }
                    }
                }
                stored
                    .unwrap_or_else(|| Err(RuleError::Conflict(name.clone())))
                    .map_err(|e| anyhow::anyhow!("rule file {}: {e}", path.display()))?;
                started.insert(name.clone());
                tracing::info!(rule = %name, file = %path.display(), "loaded rule file");
            }
        }
        let stored: Vec<StoredRule> = store
            .list()
            .filter(|r| r.spec.enabled && !started.contains(&r.name))
            .cloned()
            .collect();
        for rule in &stored {
            self.run_here(rule).await;
        }
        Ok(())
    }
}
