//! Named connections: destinations an operator defines once (`PUT /v1/connections/{name}`,
//! or a `[connections.<name>]` table of the config file, which replaces a stored one of
//! the same name at start) and rules' actions name. They live in the store beside the
//! rules, with their secrets; a change is checked against every rule that names the
//! connection, and the running ones restart with it.

use weir_connectors::sinks::ConnectionConfig;
use weir_engine::now_ms;

use super::check::uses;
use super::error::RuleError;
use super::spec::StoredRule;
use super::state::{
    CONFLICT_TRIES, Connections, MAX_CONNECTIONS, RuleService, StoredConnection, named,
};
use crate::store::{Expect, Kind, StoreError, Versioned, validate_name};

impl RuleService {
    fn connection_copy(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configuration of the connection `name`, secrets and all.
    pub(super) fn connection_config(&self, name: &str) -> Option<ConnectionConfig> {
        self.connection_copy()
            .get(name)
            .map(|c| c.value.config.clone())
    }

    /// The connections, secrets redacted.
    pub fn connections(&self) -> Vec<StoredConnection> {
        self.connection_copy()
            .0
            .values()
            .map(|c| c.value.redacted())
            .collect()
    }

    /// One connection, secrets redacted.
    pub fn connection(&self, name: &str) -> Option<StoredConnection> {
        self.connection_copy().get(name).map(|c| c.value.redacted())
    }

    /// The version of every connection held here.
    pub(super) fn connection_versions(&self) -> Vec<(String, u64)> {
        self.connection_copy()
            .0
            .iter()
            .map(|(n, c)| (n.clone(), c.version))
            .collect()
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
        validate_name(Kind::Connection, name)?;
        let rules = self.rules.lock().await;
        for _ in 0..CONFLICT_TRIES {
            let old = self.connection_copy().get(name).cloned();
            config
                .restore_secrets(old.as_ref().map(|o| &o.value.config))
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
                && o.value.config == config
                && o.value.source == source
            {
                return Ok((o.value.redacted(), false));
            }
            if old.is_none() && self.connection_copy().0.len() >= MAX_CONNECTIONS {
                return Err(RuleError::TooManyConnections(MAX_CONNECTIONS));
            }
            let dependents: Vec<&StoredRule> =
                rules.values().filter(|r| uses(&r.spec, name)).collect();
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
                config: config.clone(),
                source: source.to_owned(),
                created_at_ms: old.as_ref().map_or(now, |o| o.value.created_at_ms),
                updated_at_ms: now,
            };
            let expect = Expect::over(old.as_ref().map(|o| o.version));
            match self
                .store
                .put(Kind::Connection, name, &stored, expect)
                .await
            {
                Ok(version) => {
                    self.connection_copy().set(
                        name,
                        Some(Versioned {
                            version,
                            value: stored.clone(),
                        }),
                    );
                }
                Err(StoreError::Conflict { .. }) => {
                    self.refresh_connection(name).await?;
                    continue;
                }
                Err(StoreError::Failed(e)) => return Err(RuleError::Store(e)),
            }
            for r in dependents.iter().filter(|r| r.spec.enabled) {
                self.run_here(r).await;
            }
            return Ok((stored.redacted(), old.is_none()));
        }
        Err(RuleError::Conflict(name.to_owned()))
    }

    /// Deletes a connection that no rule names.
    pub async fn delete_connection(&self, name: &str) -> Result<(), RuleError> {
        let rules = self.rules.lock().await;
        let users: Vec<String> = rules
            .values()
            .filter(|r| uses(&r.spec, name))
            .map(|r| r.name.clone())
            .collect();
        if !users.is_empty() {
            return Err(RuleError::ConnectionInUse {
                name: name.to_owned(),
                rules: users,
            });
        }
        for _ in 0..CONFLICT_TRIES {
            let Some(version) = self.connection_copy().get(name).map(|c| c.version) else {
                return Err(RuleError::ConnectionNotFound(name.to_owned()));
            };
            match self.store.delete(Kind::Connection, name, version).await {
                Ok(()) => {
                    self.connection_copy().set(name, None);
                    return Ok(());
                }
                Err(StoreError::Conflict { .. }) => {
                    self.refresh_connection(name).await?;
                }
                Err(StoreError::Failed(e)) => return Err(RuleError::Store(e)),
            }
        }
        Err(RuleError::Conflict(name.to_owned()))
    }

    /// Makes the connection `name` as the store holds it now the copy here; whether it
    /// changed.
    async fn refresh_connection(&self, name: &str) -> Result<bool, RuleError> {
        let remote = self
            .store
            .get::<StoredConnection>(Kind::Connection, name)
            .await
            .map_err(RuleError::Store)?
            .filter(|v| named(name, v));
        let mut copy = self.connection_copy();
        if copy.get(name) == remote.as_ref() {
            return Ok(false);
        }
        copy.set(name, remote);
        Ok(true)
    }

    /// Brings the connection `name` in step with the store; the running rules that name
    /// it restart with it.
    pub(super) async fn follow_connection(&self, name: &str) {
        let rules = self.rules.lock().await;
        match self.refresh_connection(name).await {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(
                    connection = name,
                    "connection changed in the store: applied"
                );
                for r in rules
                    .values()
                    .filter(|r| r.spec.enabled && uses(&r.spec, name))
                {
                    self.run_here(r).await;
                }
            }
            Err(e) => {
                tracing::warn!(connection = name, error = %e, "cannot read a changed connection from the store")
            }
        }
    }
}
