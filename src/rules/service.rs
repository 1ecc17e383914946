//! The rule service's state and its rule changes: put, enable or disable, delete; each
//! checked, written through the store over the version it replaces, then started or
//! stopped here. The rule changes of other replicas arrive through the store's feed
//! (`follow.rs`); those of this one are applied as they are made.

use weir_engine::now_ms;

use super::error::RuleError;
use super::spec::{Precondition, RuleSpec, StoredRule};
use super::state::{CONFLICT_TRIES, RuleService, Rules, stored};
use crate::store::{Expect, Kind, StoreError, validate_name};

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

/// Refuses a change whose precondition the stored rule does not meet.
fn check_precondition(
    rules: &Rules,
    name: &str,
    precondition: &Precondition,
) -> Result<(), RuleError> {
    let current = rules.get(name).map(|r| r.version);
    if precondition.holds(current) {
        Ok(())
    } else {
        Err(RuleError::PreconditionFailed {
            name: name.to_owned(),
            current,
        })
    }
}

impl RuleService {
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
        let mut rules = self.rules.lock().await;
        // In a fleet another replica may change the rule between this one's read and its
        // write: the write is refused, the copy here refreshed, and the change checked
        // again against the precondition and made over the new version.
        for _ in 0..CONFLICT_TRIES {
            check_precondition(&rules, name, precondition)?;
            match self
                .put_locked(&mut rules, name, spec.clone(), source.clone())
                .await
            {
                Err(RuleError::Conflict(_)) => continue,
                done => return done,
            }
        }
        Err(RuleError::Conflict(name.to_owned()))
    }

    pub(super) async fn put_locked(
        &self,
        rules: &mut Rules,
        name: &str,
        spec: RuleSpec,
        source: String,
    ) -> Result<(StoredRule, bool), RuleError> {
        validate_name(Kind::Rule, name)?;
        let mut spec = spec;
        keep_secrets(&mut spec, rules.get(name).map(|r| &r.spec))?;
        let created = rules.get(name).map(|r| r.created_at_ms);
        let expect = Expect::over(rules.get(name).map(|r| r.version));
        if created.is_none() && rules.len() >= self.max_rules {
            return Err(RuleError::TooManyRules(rules.len()));
        }
        let rule = StoredRule {
            name: name.to_owned(),
            spec,
            source,
            created_at_ms: created.unwrap_or_else(now_ms),
            updated_at_ms: now_ms(),
            version: expect.next(),
        };
        self.apply(rules, rule.clone(), expect).await?;
        Ok((rule, created.is_none()))
    }

    /// Enables or disables a stored rule.
    pub async fn set_enabled(&self, name: &str, enabled: bool) -> Result<StoredRule, RuleError> {
        let mut rules = self.rules.lock().await;
        for _ in 0..CONFLICT_TRIES {
            let mut rule = rules
                .get(name)
                .cloned()
                .ok_or_else(|| RuleError::NotFound(name.to_owned()))?;
            if rule.spec.enabled == enabled {
                return Ok(rule);
            }
            let expect = Expect::Version(rule.version);
            rule.spec.enabled = enabled;
            rule.updated_at_ms = now_ms();
            rule.version = expect.next();
            match self.apply(&mut rules, rule.clone(), expect).await {
                Err(RuleError::Conflict(_)) => continue,
                done => return done.map(|()| rule),
            }
        }
        Err(RuleError::Conflict(name.to_owned()))
    }

    /// Deletes a rule: it stops, and its metrics are forgotten.
    pub async fn delete(&self, name: &str, precondition: &Precondition) -> Result<(), RuleError> {
        let mut rules = self.rules.lock().await;
        for _ in 0..CONFLICT_TRIES {
            check_precondition(&rules, name, precondition)?;
            let Some(version) = rules.get(name).map(|r| r.version) else {
                return Err(RuleError::NotFound(name.to_owned()));
            };
            match self.store.delete(Kind::Rule, name, version).await {
                Ok(()) => {
                    rules.remove(name);
                    self.pipeline.stop(name);
                    self.pipeline.metrics().forget_rule(name);
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) => {
                    self.refresh(&mut rules, name).await?;
                }
                Err(StoreError::Failed(e)) => return Err(RuleError::Store(e)),
            }
        }
        Err(RuleError::Conflict(name.to_owned()))
    }

    /// Checks a rule, stores it over `expect` and makes the pipeline run it (or stop it,
    /// when disabled). A conflict refreshes the copy here and is answered `Conflict`.
    async fn apply(
        &self,
        rules: &mut Rules,
        rule: StoredRule,
        expect: Expect,
    ) -> Result<(), RuleError> {
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
        match self.store.put(Kind::Rule, &rule.name, &rule, expect).await {
            Ok(_) => {}
            Err(StoreError::Conflict { .. }) => {
                self.refresh(rules, &rule.name).await?;
                return Err(RuleError::Conflict(rule.name));
            }
            Err(StoreError::Failed(e)) => return Err(RuleError::Store(e)),
        }
        rules.insert(rule.name.clone(), rule.clone());
        match prepared {
            Some(p) => self.pipeline.start(&rule.name, p),
            None => self.pipeline.stop(&rule.name),
        }
        Ok(())
    }

    /// Makes the rule `name` as the store holds it now the copy here, without running it:
    /// the change being made is checked again over it.
    async fn refresh(&self, rules: &mut Rules, name: &str) -> Result<(), RuleError> {
        match self
            .store
            .get::<StoredRule>(Kind::Rule, name)
            .await
            .map_err(RuleError::Store)?
            .and_then(|v| stored(name, v))
        {
            Some(r) => rules.insert(name.to_owned(), r),
            None => rules.remove(name),
        };
        Ok(())
    }

    /// Compiles, builds and starts a stored rule here (or stops it, when that fails),
    /// storing nothing: at start, after a change another replica made, or to a connection
    /// it uses.
    pub(super) async fn run_here(&self, rule: &StoredRule) {
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
}
