//! The store in files under the data directory, for one weir on its own: a snapshot
//! (`store.json`, replaced atomically: write, sync, rename) and a journal of the changes
//! since (`store.journal`, one JSON line per change, synced before the change is
//! answered), both readable by weir's user alone (they hold connections' and actions'
//! secrets). Opening reads the snapshot and replays the journal; a line torn by a crash (a
//! change that was never answered) is dropped, and a damaged line loses only its own
//! change (counted, and the journal kept aside as `store.journal.corrupt-<ms>`). When the
//! journal outgrows the snapshot it is folded into a new one, so a change costs its own
//! size, not the store's: 10,000 rules install as fast as 10.
//!
//! A data directory of an earlier weir keeps each kind in a file of its own (`rules.json`
//! and `rules.journal`, `connections.json`, `tokens.json`): the first open reads them into
//! a new snapshot and renames them `*.imported` ([`super::legacy`]).

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::Context;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::broadcast;

use super::backend::{Backend, Change, Expect, Kind, Object, StoreError};
use super::journal::{read_if_there, replay_journal};
use super::legacy;
use crate::private_file;

/// The journal is folded into the snapshot once it is larger than this and the snapshot.
const JOURNAL_MIN: u64 = 64 * 1024;
/// The snapshot's format; an earlier weir's files have none (see [`super::legacy`]).
const FORMAT: u32 = 2;
pub const SNAPSHOT: &str = "store.json";
pub const JOURNAL: &str = "store.journal";

/// An object as the files hold it.
#[derive(Serialize, Deserialize)]
struct Record {
    kind: String,
    name: String,
    version: u64,
    body: Box<RawValue>,
}

#[derive(Deserialize)]
struct Snapshot {
    format: u32,
    objects: Vec<Record>,
}

/// One line of the journal.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Put(Record),
    Delete { kind: String, name: String },
}

type Key = (Kind, String);

/// What is held: every object, by kind and name.
struct Held {
    version: u64,
    body: Box<RawValue>,
}

struct Files {
    snapshot: PathBuf,
    journal_path: PathBuf,
    objects: BTreeMap<Key, Held>,
    journal: Option<std::fs::File>,
    journal_bytes: u64,
    snapshot_bytes: u64,
}

/// The store of one weir, in files.
pub struct Local {
    files: Mutex<Files>,
    /// Lines (or objects of an imported file) that could not be read at opening.
    corrupt: u64,
    feed: broadcast::Sender<Change>,
}

impl Local {
    /// Opens (or creates) the store in `data_dir`, importing an earlier weir's files.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let snapshot = data_dir.join(SNAPSHOT);
        let journal_path = data_dir.join(JOURNAL);
        let mut files = Files {
            snapshot,
            journal_path,
            objects: BTreeMap::new(),
            journal: None,
            journal_bytes: 0,
            snapshot_bytes: 0,
        };
        let corrupt = if !files.snapshot.exists() && !files.journal_path.exists() {
            let imported = legacy::import(data_dir)?;
            files.objects = imported
                .objects
                .into_iter()
                .map(|(key, (version, body))| (key, Held { version, body }))
                .collect();
            if !imported.files.is_empty() {
                files.compact()?;
                legacy::set_aside(&imported.files)?;
            }
            imported.corrupt
        } else {
            legacy::warn_if_left(data_dir);
            files.read()?
        };
        Ok(Self {
            files: Mutex::new(files),
            corrupt,
            feed: broadcast::channel(super::FEED_CAPACITY).0,
        })
    }

    fn files(&self) -> std::sync::MutexGuard<'_, Files> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn announce(&self, kind: Kind, name: &str) {
        let _ = self.feed.send(Change::One(kind, name.to_owned()));
    }
}

impl Files {
    /// Holds a record read from the files; one of a kind this weir does not know (a newer
    /// weir's) is skipped.
    fn insert(&mut self, r: Record) {
        if let Some(kind) = Kind::parse(&r.kind) {
            let held = Held {
                version: r.version,
                body: r.body,
            };
            self.objects.insert((kind, r.name), held);
        }
    }

    /// Reads the snapshot and replays the journal; returns how many lines were damaged.
    fn read(&mut self) -> anyhow::Result<u64> {
        match std::fs::read(&self.snapshot) {
            Ok(bytes) => {
                let file: Snapshot = serde_json::from_slice(&bytes).with_context(|| {
                    format!("the store {} is not readable", self.snapshot.display())
                })?;
                if file.format != FORMAT {
                    anyhow::bail!(
                        "the store {} is in format {}, which this weir does not read (it reads {FORMAT})",
                        self.snapshot.display(),
                        file.format
                    );
                }
                for r in file.objects {
                    self.insert(r);
                }
                self.snapshot_bytes = bytes.len() as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", self.snapshot.display()));
            }
        }
        let journal = read_if_there(&self.journal_path)?;
        let path = self.journal_path.clone();
        let replay = replay_journal(&journal, &path, |line: Line| match line {
            Line::Put(r) => self.insert(r),
            Line::Delete { kind, name } => {
                if let Some(kind) = Kind::parse(&kind) {
                    self.objects.remove(&(kind, name));
                }
            }
        })?;
        self.journal_bytes = replay.complete as u64;
        if replay.corrupt > 0 || replay.complete < journal.len() {
            self.compact()?;
        }
        Ok(replay.corrupt)
    }

    /// Appends a change (already made in memory) to the journal and syncs it; folds the
    /// journal into a new snapshot when it has outgrown it.
    fn record(&mut self, line: &Line) -> anyhow::Result<()> {
        use std::io::Write;
        if self.journal_bytes > JOURNAL_MIN.max(self.snapshot_bytes) {
            return self.compact();
        }
        let mut bytes = serde_json::to_vec(line)?;
        bytes.push(b'\n');
        let append = |files: &mut Self| -> std::io::Result<()> {
            if files.journal.is_none() {
                files.journal = Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .mode(0o600)
                        .open(&files.journal_path)?,
                );
            }
            let f = files.journal.as_mut().expect("opened above");
            f.write_all(&bytes)?;
            f.sync_data()
        };
        if let Err(e) = append(self) {
            // The file may now end in part of this line; the next snapshot replaces it.
            self.journal = None;
            self.journal_bytes = u64::MAX / 2;
            return Err(e).with_context(|| {
                format!("cannot write the journal {}", self.journal_path.display())
            });
        }
        self.journal_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Writes every object to a new snapshot, then empties the journal. A crash between
    /// the two replays the journal over the new snapshot, which changes nothing.
    fn compact(&mut self) -> anyhow::Result<()> {
        let mut bytes = format!("{{\"format\": {FORMAT}, \"objects\": [").into_bytes();
        for (i, ((kind, name), held)) in self.objects.iter().enumerate() {
            bytes.extend_from_slice(if i == 0 { b"\n" } else { b",\n" });
            let record = RecordRef {
                kind: kind.as_str(),
                name,
                version: held.version,
                body: &held.body,
            };
            serde_json::to_writer(&mut bytes, &record)?;
        }
        bytes.extend_from_slice(b"\n]}\n");
        private_file::replace(&self.snapshot, &bytes)
            .with_context(|| format!("cannot write the store {}", self.snapshot.display()))?;
        self.snapshot_bytes = bytes.len() as u64;
        self.journal = None;
        match std::fs::remove_file(&self.journal_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot empty the journal {}", self.journal_path.display())
                });
            }
        }
        self.journal_bytes = 0;
        Ok(())
    }

    fn put(
        &mut self,
        kind: Kind,
        name: &str,
        body: &RawValue,
        expect: Expect,
    ) -> Result<(), StoreError> {
        let key = (kind, name.to_owned());
        let current = self.objects.get(&key).map(|h| h.version);
        if Expect::over(current) != expect {
            return Err(StoreError::Conflict {
                kind,
                name: name.to_owned(),
            });
        }
        let held = Held {
            version: expect.next(),
            body: body.to_owned(),
        };
        let line = Line::Put(Record {
            kind: kind.as_str().to_owned(),
            name: name.to_owned(),
            version: held.version,
            body: held.body.clone(),
        });
        let old = self.objects.insert(key.clone(), held);
        if let Err(e) = self.record(&line) {
            // Keep memory and disk in step.
            match old {
                Some(o) => self.objects.insert(key, o),
                None => self.objects.remove(&key),
            };
            return Err(StoreError::Failed(e));
        }
        Ok(())
    }

    fn delete(&mut self, kind: Kind, name: &str, version: u64) -> Result<(), StoreError> {
        let key = (kind, name.to_owned());
        if self.objects.get(&key).map(|h| h.version) != Some(version) {
            return Err(StoreError::Conflict {
                kind,
                name: name.to_owned(),
            });
        }
        let old = self.objects.remove(&key).expect("there, checked above");
        let line = Line::Delete {
            kind: kind.as_str().to_owned(),
            name: name.to_owned(),
        };
        if let Err(e) = self.record(&line) {
            self.objects.insert(key, old);
            return Err(StoreError::Failed(e));
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct RecordRef<'a> {
    kind: &'a str,
    name: &'a str,
    version: u64,
    body: &'a RawValue,
}

impl Backend for Local {
    fn list(&self, kind: Kind) -> BoxFuture<'_, anyhow::Result<Vec<Object>>> {
        let files = self.files();
        let objects = files
            .objects
            .range((kind, String::new())..)
            .take_while(|((k, _), _)| *k == kind)
            .map(|((_, name), h)| Object {
                name: name.clone(),
                version: h.version,
                body: h.body.clone(),
            })
            .collect();
        Box::pin(std::future::ready(Ok(objects)))
    }

    fn versions(&self, kind: Kind) -> BoxFuture<'_, anyhow::Result<Vec<(String, u64)>>> {
        let files = self.files();
        let versions = files
            .objects
            .range((kind, String::new())..)
            .take_while(|((k, _), _)| *k == kind)
            .map(|((_, name), h)| (name.clone(), h.version))
            .collect();
        Box::pin(std::future::ready(Ok(versions)))
    }

    fn get<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<Object>>> {
        let found = self
            .files()
            .objects
            .get(&(kind, name.to_owned()))
            .map(|h| Object {
                name: name.to_owned(),
                version: h.version,
                body: h.body.clone(),
            });
        Box::pin(std::future::ready(Ok(found)))
    }

    fn put<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
        body: &'a RawValue,
        expect: Expect,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let done = self.files().put(kind, name, body, expect);
        if done.is_ok() {
            self.announce(kind, name);
        }
        Box::pin(std::future::ready(done))
    }

    fn delete<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
        version: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let done = self.files().delete(kind, name, version);
        if done.is_ok() {
            self.announce(kind, name);
        }
        Box::pin(std::future::ready(done))
    }

    fn feed(&self) -> &broadcast::Sender<Change> {
        &self.feed
    }

    fn corrupt(&self) -> u64 {
        self.corrupt
    }
}
