//! What a backend of the [store](super) is: the kinds of objects, an object, what a write
//! replaces, the feed's announcements, and the [`Backend`] trait the local files and
//! PostgreSQL implement.

use futures_util::future::BoxFuture;
use serde_json::value::RawValue;
use tokio::sync::broadcast;

/// A kind of object. Its name is the `kind` column of the PostgreSQL table and of the
/// local files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Rule,
    Connection,
    Token,
}

impl Kind {
    /// Every kind, in the order a replica catches up on them: connections before the rules
    /// that name them.
    pub const ALL: [Kind; 3] = [Kind::Connection, Kind::Rule, Kind::Token];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rule => "rule",
            Self::Connection => "connection",
            Self::Token => "token",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored object: its name, its version (1 when created, one more per change) and
/// itself as JSON.
#[derive(Debug, Clone)]
pub struct Object {
    pub name: String,
    pub version: u64,
    pub body: Box<RawValue>,
}

/// What a write replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nothing: the object is new. Written as version 1.
    Absent,
    /// The object at this version. Written as the next.
    Version(u64),
}

impl Expect {
    /// What a write over `current` (the version held here, if any) replaces.
    pub fn over(current: Option<u64>) -> Self {
        current.map_or(Self::Absent, Self::Version)
    }

    /// The version the write makes.
    pub fn next(self) -> u64 {
        match self {
            Self::Absent => 1,
            Self::Version(v) => v + 1,
        }
    }
}

/// What the feed announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This object changed (or went).
    One(Kind, String),
    /// Announcements may have been missed: compare everything.
    All,
}

/// Why the store did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The object is not at the version the write replaces (another replica changed it
    /// first), or a new one exists already.
    #[error("the {kind} '{name}' is not at the version the change replaces")]
    Conflict { kind: Kind, name: String },
    /// The store could not be read or written: the change was not made.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for StoreError {
    fn from(e: anyhow::Error) -> Self {
        Self::Failed(e)
    }
}

/// A backend: where the objects are kept.
pub trait Backend: Send + Sync {
    /// Every object of a kind, by name.
    fn list(&self, kind: Kind) -> BoxFuture<'_, anyhow::Result<Vec<Object>>>;
    /// The version of every object of a kind.
    fn versions(&self, kind: Kind) -> BoxFuture<'_, anyhow::Result<Vec<(String, u64)>>>;
    fn get<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<Object>>>;
    /// Writes `body` over what `expect` names, as version `expect.next()`.
    fn put<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
        body: &'a RawValue,
        expect: Expect,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Deletes the object at `version`.
    fn delete<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
        version: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// The feed every change is announced on.
    fn feed(&self) -> &broadcast::Sender<Change>;
    /// Objects that could not be read when the store was opened (a damaged journal line,
    /// a row that is not JSON): each one lost, counted.
    fn corrupt(&self) -> u64 {
        0
    }
}
