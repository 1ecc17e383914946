//! Shadows on disk: `<data-dir>/shadows/shadows.redb`, a B-tree file whose transactions
//! are synced when they commit, so a shadow's `/accepted` leaves only once a crash cannot
//! take the change back. Memory is the store's page cache (`--shadow-cache-bytes`);
//! everything else is read from disk, however many shadows exist.
//!
//! A key is `(thing, shadow)`, the classic shadow's name the empty string (no named shadow
//! may have it); a value is a [`Record`] as JSON. The store is blocking: the service calls
//! it from a blocking thread.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::document::Record;
use super::topic::ShadowId;

const SHADOWS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("shadows");

/// The file under `<data-dir>/shadows/`.
pub const FILE: &str = "shadows.redb";

pub struct ShadowStore {
    db: Database,
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

impl ShadowStore {
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
            db,
            count: AtomicU64::new(count),
        })
    }

    /// Shadows and tombstones held.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The shadow as committed.
    pub fn get(&self, id: &ShadowId) -> anyhow::Result<Option<Record>> {
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(SHADOWS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(table.get(key(id))?.and_then(|v| decode(id, v.value())))
    }

    /// Names of a thing's named shadows (not deleted), in order, after `after`, at most
    /// `limit`; and whether more follow.
    pub fn list(
        &self,
        thing: &str,
        after: Option<&str>,
        limit: usize,
        now: u64,
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
            if decode(&id, v.value()).is_some_and(|r| r.live() && !r.expired(now)) {
                if names.len() == limit {
                    return Ok((names, true));
                }
                names.push(name.to_owned());
            }
        }
        Ok((names, false))
    }

    /// Runs `f` in one write transaction and commits it, synced, if `f` wrote anything
    /// (nothing of it if `f` fails).
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Writes<'_>) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let txn = self.db.begin_write()?;
        let (out, wrote, added) = {
            let mut w = Writes {
                table: txn.open_table(SHADOWS)?,
                wrote: false,
                added: 0,
            };
            let out = f(&mut w);
            (out, w.wrote, w.added)
        };
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                txn.abort()?;
                return Err(e);
            }
        };
        if wrote {
            txn.commit().context("cannot commit the shadow store")?;
            if added >= 0 {
                self.count.fetch_add(added as u64, Ordering::Relaxed);
            } else {
                self.count
                    .fetch_sub(added.unsigned_abs(), Ordering::Relaxed);
            }
        } else {
            txn.abort()?;
        }
        Ok(out)
    }

    /// Forgets tombstones older than their 48 hours; how many went.
    pub fn sweep(&self, now: u64) -> anyhow::Result<u64> {
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

/// The writes of one transaction.
pub struct Writes<'t> {
    table: redb::Table<'t, (&'static str, &'static str), &'static [u8]>,
    wrote: bool,
    added: i64,
}

impl Writes<'_> {
    /// The shadow as this transaction sees it (its own writes included).
    pub fn get(&self, id: &ShadowId) -> anyhow::Result<Option<Record>> {
        Ok(self.table.get(key(id))?.and_then(|v| decode(id, v.value())))
    }

    pub fn put(&mut self, id: &ShadowId, record: &Record) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(record)?;
        let old = self.table.insert(key(id), bytes.as_slice())?;
        if old.is_none() {
            self.added += 1;
        }
        self.wrote = true;
        Ok(())
    }

    pub fn remove(&mut self, id: &ShadowId) -> anyhow::Result<()> {
        if self.table.remove(key(id))?.is_some() {
            self.added -= 1;
            self.wrote = true;
        }
        Ok(())
    }

    /// Records written in this transaction that were not there before.
    pub fn added(&self) -> i64 {
        self.added
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(thing: &str, name: Option<&str>) -> ShadowId {
        ShadowId::new(thing, name).unwrap()
    }

    fn record(version: u64, deleted_at: Option<u64>) -> Record {
        Record {
            version,
            deleted_at,
            ..Record::default()
        }
    }

    #[test]
    fn writes_are_kept_counted_and_listed_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = ShadowStore::open(dir.path(), 1 << 20).unwrap();
        store
            .write(|w| {
                w.put(&id("lamp", None), &record(1, None))?;
                w.put(&id("lamp", Some("b")), &record(1, None))?;
                w.put(&id("lamp", Some("a")), &record(3, None))?;
                w.put(&id("lamp", Some("gone")), &record(2, Some(100)))?;
                w.put(&id("lamp2", Some("x")), &record(1, None))?;
                // A write reads what the transaction wrote before it.
                assert_eq!(w.get(&id("lamp", Some("a")))?.unwrap().version, 3);
                assert_eq!(w.added(), 5);
                Ok(())
            })
            .unwrap();
        assert_eq!(store.count(), 5);
        // A failed batch leaves nothing behind.
        let failed: anyhow::Result<()> = store.write(|w| {
            w.put(&id("lamp", Some("c")), &record(1, None))?;
            anyhow::bail!("the batch failed")
        });
        assert!(failed.is_err());
        assert!(store.get(&id("lamp", Some("c"))).unwrap().is_none());
        drop(store);

        let store = ShadowStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.count(), 5);
        assert_eq!(
            store.get(&id("lamp", Some("a"))).unwrap().unwrap().version,
            3
        );
        // Named shadows only, in order, without tombstones, a page at a time.
        assert_eq!(
            store.list("lamp", None, 10, 200).unwrap(),
            (vec!["a".to_owned(), "b".to_owned()], false)
        );
        assert_eq!(
            store.list("lamp", None, 1, 200).unwrap(),
            (vec!["a".to_owned()], true)
        );
        assert_eq!(
            store.list("lamp", Some("a"), 1, 200).unwrap(),
            (vec!["b".to_owned()], false)
        );
        assert_eq!(store.list("nobody", None, 10, 200).unwrap().0.len(), 0);
        // Tombstones go after 48 hours, and only they.
        assert_eq!(store.sweep(100 + 3600).unwrap(), 0);
        assert_eq!(
            store
                .sweep(100 + super::super::document::TOMBSTONE_SECS)
                .unwrap(),
            1
        );
        assert_eq!(store.count(), 4);
    }

    #[test]
    fn a_damaged_file_is_a_clear_error_and_a_damaged_record_reads_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), vec![0x5a; 8192]).unwrap();
        let e = ShadowStore::open(dir.path(), 1 << 20)
            .err()
            .expect("garbage is refused");
        assert!(
            format!("{e:#}").contains("cannot open the shadow store"),
            "{e:#}"
        );

        let dir = tempfile::tempdir().unwrap();
        let store = ShadowStore::open(dir.path(), 1 << 20).unwrap();
        let txn = store.db.begin_write().unwrap();
        txn.open_table(SHADOWS)
            .unwrap()
            .insert(("lamp", ""), b"{not json".as_slice())
            .unwrap();
        txn.commit().unwrap();
        assert!(store.get(&id("lamp", None)).unwrap().is_none());
    }
}
