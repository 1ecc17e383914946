//! Where shadows are kept: on this replica's disk (`local.rs`, the default) or in the
//! fleet's PostgreSQL (`postgres.rs`, with `--rule-store postgres://`). The service loads
//! the shadows a batch of requests names, applies the requests to them in memory, and
//! commits what changed in one transaction, each write guarded by the version (and
//! liveness) it was loaded at: a replica that lost a race to another commits nothing and
//! runs the batch again on what the winner wrote.

pub mod local;
pub mod postgres;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use futures_util::future::BoxFuture;

use super::document::Record;
use super::topic::ShadowId;

/// What a write expects of the stored shadow it replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No record (not even a tombstone).
    Absent,
    /// A record at this version, live or a tombstone.
    Was { version: u64, live: bool },
}

impl Expect {
    /// What a write over `loaded` expects.
    pub fn of(loaded: Option<&Record>) -> Self {
        match loaded {
            None => Self::Absent,
            Some(r) => Self::Was {
                version: r.version,
                live: r.live(),
            },
        }
    }
}

/// One shadow's new record, over what it was loaded as.
#[derive(Debug, Clone)]
pub struct Write {
    pub id: ShadowId,
    pub expect: Expect,
    pub record: Record,
}

/// A store of shadows.
pub trait ShadowBackend: Send + Sync {
    /// The records (tombstones included) of those of `ids` that exist.
    fn load<'a>(
        &'a self,
        ids: &'a [ShadowId],
    ) -> BoxFuture<'a, anyhow::Result<HashMap<ShadowId, Record>>>;

    /// [`ShadowBackend::load`], blocking, from any thread and whatever runtime (if any)
    /// it belongs to: for `get_thing_shadow()` in a rule, evaluated where no `.await`
    /// can be.
    fn load_now(&self, ids: &[ShadowId]) -> anyhow::Result<HashMap<ShadowId, Record>>;

    /// Writes all of `writes` durably, or nothing: `Ok(false)` when a shadow is no longer
    /// what its write expects (another replica changed it).
    fn commit<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, anyhow::Result<bool>>;

    /// Names of a thing's named shadows (not deleted), in order, after `after`, at most
    /// `limit`; and whether more follow.
    fn list<'a>(
        &'a self,
        thing: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, anyhow::Result<(Vec<String>, bool)>>;

    /// Forgets tombstones past their 48 hours at `now`; how many went.
    fn sweep(&self, now: u64) -> BoxFuture<'_, anyhow::Result<u64>>;

    /// Records held, tombstones included (in a fleet: as of this replica's last count,
    /// with its own inserts since).
    fn count(&self) -> u64;

    /// Bytes the store takes (in a fleet: as of the last count).
    fn bytes(&self) -> u64;
}
