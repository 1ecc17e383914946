//! The store: every object weir keeps, of every kind (rules, named connections, API
//! tokens), each with a name, a version and a JSON body. One trait, two backends:
//!
//! * [`local`]: files under the data directory (a snapshot and a journal, mode 0600), for
//!   one weir on its own;
//! * [`postgres`]: one table of a PostgreSQL database that the replicas of a fleet share
//!   (`--rule-store postgres://...`).
//!
//! Writes are optimistic: a write names the version it replaces ([`Expect`]) and is refused
//! with [`StoreError::Conflict`] when the store holds another, so two replicas changing
//! one object at once cannot lose either change unseen. Every change, whoever made it, is
//! announced on one feed ([`Store::subscribe`]); [`follow::follow`] hands each change to
//! the part of weir that keeps that kind running ([`follow::Follower`]), which brings what
//! runs here in step with the store. A replica follows the one feed; a store of files
//! announces the changes of its own process.
//!
//! Also here: `backend.rs` (the trait and what it keeps), `journal.rs` (JSON-line
//! journals read back after a crash), `legacy.rs` (an earlier weir's files, read once),
//! `name.rs` (the names objects go by).
//!
//! The service layers on top keep their own parsed copy of their kind (the rule service
//! its rules and connections, the authenticator its tokens); the store is the truth they
//! write through and come back to.

pub mod backend;
pub mod follow;
mod journal;
mod legacy;
pub mod local;
mod name;
pub mod postgres;

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

pub use backend::{Backend, Change, Expect, Kind, Object, StoreError};
pub use name::{NameError, validate_name};

/// The store weir writes through: a backend, shared.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

/// An object of a known type, with its version.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub version: u64,
    pub value: T,
}

/// A feed subscription: every change from the moment it was made. A subscriber that fell
/// behind is told to compare everything ([`Change::All`]) instead of being sent what it
/// missed.
pub struct Feed(broadcast::Receiver<Change>);

impl Feed {
    pub async fn next(&mut self) -> Option<Change> {
        match self.0.recv().await {
            Ok(c) => Some(c),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Change::All),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// How many changes a subscriber may fall behind before it is told to compare everything.
pub const FEED_CAPACITY: usize = 1024;

impl Store {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }

    /// Subscribes to the feed of changes.
    pub fn subscribe(&self) -> Feed {
        Feed(self.backend.feed().subscribe())
    }

    /// See [`Backend::corrupt`].
    pub fn corrupt(&self) -> u64 {
        self.backend.corrupt()
    }

    /// Every object of a kind that parses as `T`; one that does not (written by hand, or
    /// by a newer weir), or whose name is not a name, is skipped and logged.
    pub async fn list<T: DeserializeOwned>(
        &self,
        kind: Kind,
    ) -> anyhow::Result<Vec<(String, Versioned<T>)>> {
        Ok(self
            .backend
            .list(kind)
            .await?
            .into_iter()
            .filter_map(|o| parse(kind, o))
            .collect())
    }

    pub async fn versions(&self, kind: Kind) -> anyhow::Result<Vec<(String, u64)>> {
        self.backend.versions(kind).await
    }

    /// The object `name` as `T`; `None` when there is none, or it does not parse (logged).
    pub async fn get<T: DeserializeOwned>(
        &self,
        kind: Kind,
        name: &str,
    ) -> anyhow::Result<Option<Versioned<T>>> {
        Ok(self
            .backend
            .get(kind, name)
            .await?
            .and_then(|o| parse(kind, o).map(|(_, v)| v)))
    }

    /// Writes `value` over what `expect` names; returns the version written.
    pub async fn put<T: Serialize>(
        &self,
        kind: Kind,
        name: &str,
        value: &T,
        expect: Expect,
    ) -> Result<u64, StoreError> {
        let body = serde_json::value::to_raw_value(value).map_err(|e| {
            StoreError::Failed(anyhow::anyhow!(
                "cannot write the {kind} '{name}' as JSON: {e}"
            ))
        })?;
        self.backend.put(kind, name, &body, expect).await?;
        Ok(expect.next())
    }

    /// Deletes the object `name` at `version`.
    pub async fn delete(&self, kind: Kind, name: &str, version: u64) -> Result<(), StoreError> {
        self.backend.delete(kind, name, version).await
    }
}

/// The object as `T`; `None` (logged) when it does not parse, or its name is not one an
/// object may have (a row written by hand, a file edited: the name becomes a path of the
/// API and a label of the metrics).
fn parse<T: DeserializeOwned>(kind: Kind, o: Object) -> Option<(String, Versioned<T>)> {
    if let Err(e) = validate_name(kind, &o.name) {
        let shown: String = o.name.chars().take(64).collect();
        tracing::error!(kind = %kind, name = %shown, error = %e, "a stored object has a name no object may have: skipped");
        return None;
    }
    match serde_json::from_str::<T>(o.body.get()) {
        Ok(value) => Some((
            o.name,
            Versioned {
                version: o.version,
                value,
            },
        )),
        Err(e) => {
            tracing::error!(kind = %kind, name = %o.name, error = %e, "a stored object is not what its kind says: skipped");
            None
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
