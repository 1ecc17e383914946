//! The rule service's state: the service itself, and the copies it holds of what the store
//! keeps (its rules, and the named connections they may use), each at the store's version.
//! The changes are in `service.rs` (rules) and `connections.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use weir_connectors::sinks::ConnectionConfig;
use weir_engine::Engine;

use super::spec::StoredRule;
use crate::pipeline::Pipeline;
use crate::store::{Kind, Store, Versioned};

/// How often a change is tried again when other replicas changed the object first.
pub(super) const CONFLICT_TRIES: usize = 3;

/// The rules as the store holds them: this replica's copy.
pub type Rules = BTreeMap<String, StoredRule>;

pub struct RuleService {
    pub(super) engine: Arc<Engine>,
    pub(super) pipeline: Arc<Pipeline>,
    pub(super) store: Store,
    /// The rules; the lock also serialises every change of rules and connections.
    pub(super) rules: Mutex<Rules>,
    /// The operator's named connections. Changed with the rules locked.
    pub(super) connections: std::sync::Mutex<Connections>,
    /// The most rules this instance keeps (`--max-rules`).
    pub(super) max_rules: usize,
}

/// The most connections weir keeps.
pub const MAX_CONNECTIONS: usize = 1000;

/// A connection as stored and listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredConnection {
    pub name: String,
    #[serde(flatten)]
    pub config: ConnectionConfig,
    /// `api`, or `config` for a connection of the config file.
    pub source: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl StoredConnection {
    /// The connection as an API answer shows it: secrets redacted.
    pub fn redacted(&self) -> Self {
        Self {
            config: self.config.redacted(),
            ..self.clone()
        }
    }
}

/// The connections as the store holds them: this replica's copy, with their versions.
#[derive(Default)]
pub struct Connections(pub(super) BTreeMap<String, Versioned<StoredConnection>>);

impl Connections {
    /// The store's connections (one that is not a connection of its name is skipped,
    /// logged).
    pub async fn load(store: &Store) -> anyhow::Result<Self> {
        Ok(Self(
            store
                .list(Kind::Connection)
                .await?
                .into_iter()
                .filter(|(name, v)| named(name, v))
                .collect(),
        ))
    }

    pub(super) fn get(&self, name: &str) -> Option<&Versioned<StoredConnection>> {
        self.0.get(name)
    }

    pub(super) fn set(&mut self, name: &str, c: Option<Versioned<StoredConnection>>) {
        match c {
            Some(c) => self.0.insert(name.to_owned(), c),
            None => self.0.remove(name),
        };
    }
}

/// Whether the store's connection `name` says it is that connection.
pub(super) fn named(name: &str, v: &Versioned<StoredConnection>) -> bool {
    let same = v.value.name == name;
    if !same {
        tracing::error!(
            connection = name,
            "a stored connection names another: skipped"
        );
    }
    same
}

impl RuleService {
    /// The rule service over `store`, with the rules and connections it holds.
    pub async fn open(
        engine: Arc<Engine>,
        pipeline: Arc<Pipeline>,
        store: Store,
        max_rules: usize,
    ) -> anyhow::Result<Self> {
        let rules = store
            .list::<StoredRule>(Kind::Rule)
            .await?
            .into_iter()
            .filter_map(|(name, v)| Some((name.clone(), stored(&name, v)?)))
            .collect();
        let connections = Connections::load(&store).await?;
        Ok(Self {
            engine,
            pipeline,
            store,
            rules: Mutex::new(rules),
            connections: std::sync::Mutex::new(connections),
            max_rules,
        })
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    pub async fn get(&self, name: &str) -> Option<StoredRule> {
        self.rules.lock().await.get(name).cloned()
    }

    pub async fn list(&self) -> Vec<StoredRule> {
        self.rules.lock().await.values().cloned().collect()
    }
}

/// The store's object `name` as a rule, at the store's version of it (the body's own may
/// be older: written by hand, or before versions were kept). One that names another rule
/// is skipped, logged.
pub(super) fn stored(name: &str, v: Versioned<StoredRule>) -> Option<StoredRule> {
    let mut rule = v.value;
    if rule.name != name {
        tracing::error!(
            rule = name,
            "a stored rule names another rule ('{}'): skipped",
            rule.name
        );
        return None;
    }
    rule.version = v.version;
    Some(rule)
}
