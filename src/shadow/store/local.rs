//! Shadows on this replica's disk: `<data-dir>/shadows/shadows.redb`, a B-tree file whose
//! transactions are synced when they commit, so a shadow's `/accepted` leaves only once a
//! crash cannot take the change back. Memory is the file's page cache
//! (`--shadow-cache-bytes`); everything else is read from disk, however many shadows
//! exist.
//!
//! A key is `(thing, shadow)`, the classic shadow's name the empty string (no named shadow
//! may have it); a value is a [`Record`] as JSON. redb is blocking: every call runs on a
//! blocking thread.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use futures_util::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Expect, ShadowBackend, Write};
use crate::shadow::document::Record;
use crate::shadow::topic::ShadowId;

const SHADOWS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("shadows");

/// The file under `<data-dir>/shadows/`.
pub const FILE: &str = "shadows.redb";

pub struct Local {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// The file, for its size.
    path: std::path::PathBuf,
    /// Records held: shadows and tombstones.
    count: AtomicU64,
}

fn key(id: &ShadowId) -> (&str, &str) {
    (&id.thing, id.name.as_deref().unwrap_or(""))
}

/// A record read back; a damaged one (edited by hand, or a bug of an earlier weir) is
/// logged and read as absent, so that the shadow can be written again.
fn decode(id: &ShadowId, bytes: &[u8]) -> Option<Record> {
    match serde_json::from_slice(bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(shadow = %id, error = %e, "a stored shadow cannot be read; it is treated as absent");
            None
        }
    }
}

/// Runs blocking work of the store on a blocking thread.
fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> BoxFuture<'static, anyhow::Result<T>> {
    Box::pin(async move {
        tokio::task::spawn_blocking(f)
            .await
            .context("the shadow store's thread failed")?
    })
}

impl Local {
    /// Opens (or makes) the store under `dir`, with a page cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: usize) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the shadow directory {}", dir.display()))?;
        let path = dir.join(FILE);
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(&path)
            .with_context(|| format!("cannot open the shadow store {}", path.display()))?;
        let txn = db.begin_write()?;
        let count = txn.open_table(SHADOWS)?.len()?;
        txn.commit()?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                path,
                count: AtomicU64::new(count),
            }),
        })
    }
}

#[cfg(test)]
impl Local {
    /// Overwrites a shadow's record with bytes that are not one, as a damaged file would.
    pub(super) fn damage(&self, id: &ShadowId) {
        let txn = self.inner.db.begin_write().unwrap();
        txn.open_table(SHADOWS)
            .unwrap()
            .insert(key(id), b"{not json".as_slice())
            .unwrap();
        txn.commit().unwrap();
    }
}

impl Inner {
    fn load(&self, ids: &[ShadowId]) -> anyhow::Result<HashMap<ShadowId, Record>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SHADOWS)?;
        let mut found = HashMap::new();
        for id in ids {
            if let Some(r) = table.get(key(id))?.and_then(|v| decode(id, v.value())) {
                found.insert(id.clone(), r);
            }
        }
        Ok(found)
    }

    fn commit(&self, writes: &[Write]) -> anyhow::Result<bool> {
        let txn = self.db.begin_write()?;
        let mut added = 0;
        {
            let mut table = txn.open_table(SHADOWS)?;
            for w in writes {
                let (held, now) = match table.get(key(&w.id))? {
                    Some(v) => (true, decode(&w.id, v.value())),
                    None => (false, None),
                };
                if Expect::of(now.as_ref()) != w.expect {
                    // Only this process writes the file: the service's own mistake.
                    drop(table);
                    txn.abort()?;
                    return Ok(false);
                }
                // A damaged record read as absent is replaced, not added.
                added += u64::from(!held);
                table.insert(key(&w.id), serde_json::to_vec(&w.record)?.as_slice())?;
            }
        }
        txn.commit().context("cannot commit the shadow store")?;
        self.count.fetch_add(added, Ordering::Relaxed);
        Ok(true)
    }

    fn list(
        &self,
        thing: &str,
        after: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<(Vec<String>, bool)> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SHADOWS)?;
        let mut names = Vec::new();
        for entry in table.range((thing, after.unwrap_or(""))..)? {
            let (k, v) = entry?;
            let (t, name) = k.value();
            if t != thing {
                break;
            }
            if name.is_empty() || Some(name) == after {
                continue;
            }
            let id = ShadowId {
                thing: thing.to_owned(),
                name: Some(name.to_owned()),
            };
            if decode(&id, v.value()).is_some_and(|r| r.live()) {
                if names.len() == limit {
                    return Ok((names, true));
                }
                names.push(name.to_owned());
            }
        }
        Ok((names, false))
    }

    fn sweep(&self, now: u64) -> anyhow::Result<u64> {
        let txn = self.db.begin_write()?;
        let removed = {
            let mut table = txn.open_table(SHADOWS)?;
            let before = table.len()?;
            table.retain(|_, v| {
                serde_json::from_slice::<Record>(v).map_or(true, |r| !r.expired(now))
            })?;
            before - table.len()?
        };
        txn.commit()?;
        self.count.fetch_sub(removed, Ordering::Relaxed);
        Ok(removed)
    }
}

impl ShadowBackend for Local {
    fn load<'a>(
        &'a self,
        ids: &'a [ShadowId],
    ) -> BoxFuture<'a, anyhow::Result<HashMap<ShadowId, Record>>> {
        let (inner, ids) = (self.inner.clone(), ids.to_vec());
        blocking(move || inner.load(&ids))
    }

    fn load_now(&self, ids: &[ShadowId]) -> anyhow::Result<HashMap<ShadowId, Record>> {
        self.inner.load(ids)
    }

    fn commit<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, anyhow::Result<bool>> {
        let (inner, writes) = (self.inner.clone(), writes.to_vec());
        blocking(move || inner.commit(&writes))
    }

    fn list<'a>(
        &'a self,
        thing: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, anyhow::Result<(Vec<String>, bool)>> {
        let inner = self.inner.clone();
        let (thing, after) = (thing.to_owned(), after.map(str::to_owned));
        blocking(move || inner.list(&thing, after.as_deref(), limit))
    }

    fn sweep(&self, now: u64) -> BoxFuture<'_, anyhow::Result<u64>> {
        let inner = self.inner.clone();
        blocking(move || inner.sweep(now))
    }

    fn count(&self) -> u64 {
        self.inner.count.load(Ordering::Relaxed)
    }

    fn bytes(&self) -> u64 {
        std::fs::metadata(&self.inner.path).map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(thing: &str, name: Option<&str>) -> ShadowId {
        ShadowId::new(thing, name).unwrap()
    }

    #[test]
    fn a_damaged_file_is_a_clear_error_and_a_damaged_record_reads_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), vec![0x5a; 8192]).unwrap();
        let e = Local::open(dir.path(), 1 << 20)
            .err()
            .expect("garbage is refused");
        assert!(
            format!("{e:#}").contains("cannot open the shadow store"),
            "{e:#}"
        );

        let dir = tempfile::tempdir().unwrap();
        let store = Local::open(dir.path(), 1 << 20).unwrap();
        let txn = store.inner.db.begin_write().unwrap();
        txn.open_table(SHADOWS)
            .unwrap()
            .insert(("lamp", ""), b"{not json".as_slice())
            .unwrap();
        txn.commit().unwrap();
        assert!(store.inner.load(&[id("lamp", None)]).unwrap().is_empty());
    }
}
