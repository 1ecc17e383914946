//! The rule store: every rule's definition under the data directory, as a snapshot
//! (`rules.json`, replaced atomically: write, sync, rename) and a journal of the changes
//! since (`rules.journal`, one JSON line per change, synced before the change is
//! answered). Opening reads the snapshot and replays the journal; a line torn by a crash
//! (a change that was never answered) is dropped. When the journal outgrows the snapshot
//! it is folded into a new one, so a change costs its own size, not the store's: 10,000
//! rules install as fast as 10.
//!
//! With `--rule-store postgres://...` the rules are kept in the fleet's shared store
//! instead ([`crate::shared_store`]); this one is then the replica's copy of them, and a
//! change is answered once the database holds it.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::rules::spec::StoredRule;
use crate::shared_store::{Conflict, Kind, SharedStore};

/// Why a change was not stored.
#[derive(Debug)]
pub enum StoreError {
    /// Another replica changed the rule first; the copy here now holds its version.
    Conflict,
    Failed(anyhow::Error),
}

#[derive(Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    rules: Vec<StoredRule>,
}

/// One line of the journal.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Change {
    Put(Box<StoredRule>),
    Remove(String),
}

/// The journal is folded into the snapshot once it is larger than this and the snapshot.
const JOURNAL_MIN: u64 = 64 * 1024;

pub struct RuleStore {
    path: PathBuf,
    journal_path: PathBuf,
    rules: BTreeMap<String, StoredRule>,
    journal: Option<std::fs::File>,
    journal_bytes: u64,
    snapshot_bytes: u64,
    /// Journal lines that could not be read when the store was opened.
    corrupt_lines: u64,
    /// The fleet's shared store, where the rules are kept instead of the files.
    shared: Option<Arc<SharedStore>>,
}

impl RuleStore {
    /// Opens (or creates) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let path = data_dir.join("rules.json");
        let journal_path = data_dir.join("rules.journal");
        let (mut rules, snapshot_bytes) = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: StoreFile = serde_json::from_slice(&bytes)
                    .with_context(|| format!("rule store {} is not readable", path.display()))?;
                let rules = file
                    .rules
                    .into_iter()
                    .map(|r| (r.name.clone(), r))
                    .collect();
                (rules, bytes.len() as u64)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (BTreeMap::new(), 0),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let journal = match std::fs::read(&journal_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", journal_path.display()));
            }
        };
        // Complete lines only: a crash can tear the last one, whose change was not answered.
        let complete = journal
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let mut corrupt_lines = 0;
        for (i, line) in journal[..complete].split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            // A damaged line (a damaged disk, an edit by hand) loses its one change; the
            // changes after it were answered too, and are kept.
            let change: Change = match serde_json::from_slice(line) {
                Ok(c) => c,
                Err(e) => {
                    corrupt_lines += 1;
                    tracing::error!(
                        journal = %journal_path.display(),
                        line = i + 1,
                        error = %e,
                        "a line of the rule journal is corrupt: its change is lost, the others are kept"
                    );
                    continue;
                }
            };
            match change {
                Change::Put(rule) => {
                    rules.insert(rule.name.clone(), *rule);
                }
                Change::Remove(name) => {
                    rules.remove(&name);
                }
            }
        }
        let mut store = Self {
            path,
            journal_path,
            rules,
            journal: None,
            journal_bytes: complete as u64,
            snapshot_bytes,
            corrupt_lines,
            shared: None,
        };
        if corrupt_lines > 0 {
            let aside = store
                .journal_path
                .with_extension(format!("journal.corrupt-{}", weir_engine::now_ms()));
            std::fs::write(&aside, &journal).with_context(|| {
                format!("cannot keep the corrupt journal as {}", aside.display())
            })?;
            tracing::error!(kept = %aside.display(), "the corrupt rule journal is kept for inspection");
            store.compact()?;
        } else if complete < journal.len() {
            tracing::warn!(journal = %store.journal_path.display(), "dropping a torn last line of the rule journal");
            store.compact()?;
        }
        Ok(store)
    }

    /// The rules of the fleet's shared store. A row that is not a rule (written by hand,
    /// or by a newer weir) is skipped and counted in [`RuleStore::corrupt_lines`].
    pub async fn open_shared(shared: Arc<SharedStore>) -> anyhow::Result<Self> {
        let mut rules = BTreeMap::new();
        let mut corrupt_lines = 0;
        for row in shared.all(Kind::Rule).await? {
            match parse_row(&row.name, &row.body, row.version) {
                Some(r) => {
                    rules.insert(r.name.clone(), r);
                }
                None => corrupt_lines += 1,
            }
        }
        Ok(Self {
            path: PathBuf::new(),
            journal_path: PathBuf::new(),
            rules,
            journal: None,
            journal_bytes: 0,
            snapshot_bytes: 0,
            corrupt_lines,
            shared: Some(shared),
        })
    }

    /// The fleet's shared store, if the rules are kept there.
    pub fn shared(&self) -> Option<&Arc<SharedStore>> {
        self.shared.as_ref()
    }

    /// Stores a rule (new, or over the version before its own): in the shared store when
    /// there is one, else on disk. Returns whether it was new.
    pub async fn store(&mut self, rule: StoredRule) -> Result<bool, StoreError> {
        let Some(shared) = self.shared.clone() else {
            return self.put(rule).map_err(StoreError::Failed);
        };
        let body = serde_json::to_string(&rule).map_err(|e| StoreError::Failed(e.into()))?;
        match shared
            .put(Kind::Rule, &rule.name, &body, rule.version)
            .await
        {
            Ok(Ok(())) => Ok(self.rules.insert(rule.name.clone(), rule).is_none()),
            Ok(Err(Conflict)) => {
                self.refresh(&rule.name).await.map_err(StoreError::Failed)?;
                Err(StoreError::Conflict)
            }
            Err(e) => Err(StoreError::Failed(e)),
        }
    }

    /// Deletes a rule (at the version the copy here holds). Returns the deleted rule.
    pub async fn delete(&mut self, name: &str) -> Result<Option<StoredRule>, StoreError> {
        let Some(shared) = self.shared.clone() else {
            return self.remove(name).map_err(StoreError::Failed);
        };
        let Some(version) = self.rules.get(name).map(|r| r.version) else {
            return Ok(None);
        };
        match shared.remove(Kind::Rule, name, version).await {
            Ok(Ok(())) => Ok(self.rules.remove(name)),
            Ok(Err(Conflict)) => {
                self.refresh(name).await.map_err(StoreError::Failed)?;
                Err(StoreError::Conflict)
            }
            Err(e) => Err(StoreError::Failed(e)),
        }
    }

    /// The rule `name` as the shared store holds it now (`None`: none there), after
    /// making it the copy here. A store of files has nothing to fetch: `Ok(None)`.
    pub async fn refresh(&mut self, name: &str) -> anyhow::Result<Option<StoredRule>> {
        let Some(shared) = self.shared.clone() else {
            return Ok(None);
        };
        let row = shared.get(Kind::Rule, name).await?;
        let rule = row.and_then(|r| parse_row(&r.name, &r.body, r.version));
        self.set_cached(name, rule.clone());
        Ok(rule)
    }

    /// Makes `rule` the copy here of the rule `name` (`None`: it is gone), without
    /// writing anything: another replica stored it.
    pub fn set_cached(&mut self, name: &str, rule: Option<StoredRule>) {
        match rule {
            Some(r) => {
                self.rules.insert(name.to_owned(), r);
            }
            None => {
                self.rules.remove(name);
            }
        }
    }

    /// Journal lines that could not be read when the store was opened (their changes are
    /// lost; the file is kept as `rules.journal.corrupt-<ms>`).
    pub fn corrupt_lines(&self) -> u64 {
        self.corrupt_lines
    }

    pub fn get(&self, name: &str) -> Option<&StoredRule> {
        self.rules.get(name)
    }

    pub fn list(&self) -> impl Iterator<Item = &StoredRule> {
        self.rules.values()
    }

    /// Inserts or replaces a rule and saves the store. Returns whether it was new.
    pub fn put(&mut self, rule: StoredRule) -> anyhow::Result<bool> {
        let old = self.rules.insert(rule.name.clone(), rule.clone());
        if let Err(e) = self.record(&Change::Put(Box::new(rule.clone()))) {
            // Keep memory and disk in step.
            match &old {
                Some(o) => self.rules.insert(o.name.clone(), o.clone()),
                None => self.rules.remove(&rule.name),
            };
            return Err(e);
        }
        Ok(old.is_none())
    }

    /// Removes a rule and saves the store. Returns the removed rule.
    pub fn remove(&mut self, name: &str) -> anyhow::Result<Option<StoredRule>> {
        let Some(old) = self.rules.remove(name) else {
            return Ok(None);
        };
        if let Err(e) = self.record(&Change::Remove(name.to_owned())) {
            self.rules.insert(old.name.clone(), old);
            return Err(e);
        }
        Ok(Some(old))
    }

    /// Appends a change (already made in memory) to the journal and syncs it; folds the
    /// journal into a new snapshot when it has outgrown it.
    fn record(&mut self, change: &Change) -> anyhow::Result<()> {
        use std::io::Write;
        if self.journal_bytes > JOURNAL_MIN.max(self.snapshot_bytes) {
            return self.compact();
        }
        let mut line = serde_json::to_vec(change)?;
        line.push(b'\n');
        let append = |store: &mut Self| -> std::io::Result<()> {
            if store.journal.is_none() {
                store.journal = Some(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .mode(0o600)
                        .open(&store.journal_path)?,
                );
            }
            let f = store.journal.as_mut().expect("opened above");
            f.write_all(&line)?;
            f.sync_data()
        };
        if let Err(e) = append(self) {
            // The file may now end in part of this line; the next snapshot replaces it.
            self.journal = None;
            self.journal_bytes = u64::MAX / 2;
            return Err(e).with_context(|| {
                format!("cannot write rule journal {}", self.journal_path.display())
            });
        }
        self.journal_bytes += line.len() as u64;
        Ok(())
    }

    /// Writes every rule to a new snapshot, then empties the journal. A crash between the
    /// two replays the journal over the new snapshot, which changes nothing.
    fn compact(&mut self) -> anyhow::Result<()> {
        self.snapshot_bytes = self.save()?;
        self.journal = None;
        match std::fs::remove_file(&self.journal_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot empty rule journal {}", self.journal_path.display())
                });
            }
        }
        self.journal_bytes = 0;
        Ok(())
    }

    /// Writes the snapshot (rules hold their actions' secrets: readable by weir's user
    /// alone); returns its size.
    fn save(&self) -> anyhow::Result<u64> {
        let file = StoreFile {
            version: 1,
            rules: self.rules.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file)?;
        crate::private_file::replace(&self.path, &bytes)
            .with_context(|| format!("cannot write rule store {}", self.path.display()))?;
        Ok(bytes.len() as u64)
    }
}

/// A row of the shared store as a rule; the row's version is the rule's.
pub fn parse_row(name: &str, body: &str, version: u64) -> Option<StoredRule> {
    match serde_json::from_str::<StoredRule>(body) {
        Ok(mut r) if r.name == name => {
            r.version = version;
            Some(r)
        }
        Ok(_) => {
            tracing::error!(
                rule = name,
                "a row of the shared rule store names another rule: skipped"
            );
            None
        }
        Err(e) => {
            tracing::error!(rule = name, error = %e, "a row of the shared rule store is not a rule: skipped");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::spec::{RuleSpec, SQL_VERSION};

    fn rule(name: &str) -> StoredRule {
        StoredRule {
            name: name.to_owned(),
            spec: RuleSpec {
                sql: "SELECT * FROM 'a'".to_owned(),
                actions: vec![],
                error_action: None,
                enabled: true,
                description: None,
                sql_version: SQL_VERSION.to_owned(),
                tests: vec![],
            },
            source: "api".to_owned(),
            created_at_ms: 1,
            updated_at_ms: 1,
            version: 1,
        }
    }

    /// A damaged line in the middle of the journal loses only its own change: the store
    /// opens, the changes after it apply, the line is counted and the journal kept aside.
    #[test]
    fn a_corrupt_journal_line_loses_only_its_change() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        {
            let mut s = RuleStore::open(&dir).unwrap();
            s.put(rule("a")).unwrap();
            s.put(rule("b")).unwrap();
            s.put(rule("c")).unwrap();
        }
        let journal = dir.join("rules.journal");
        let text = std::fs::read_to_string(&journal).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let damaged = format!("{}\n{}\n{}\n", lines[0], &lines[1][..10], lines[2]);
        std::fs::write(&journal, damaged).unwrap();
        let s = RuleStore::open(&dir).unwrap();
        assert_eq!(s.corrupt_lines(), 1);
        let names: Vec<&str> = s.list().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        let kept = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("rules.journal.corrupt-")
            })
            .count();
        assert_eq!(kept, 1);
        drop(s);
        // Compacted: the next open finds nothing wrong and the same rules.
        let s = RuleStore::open(&dir).unwrap();
        assert_eq!((s.corrupt_lines(), s.list().count()), (0, 2));
    }

    #[test]
    fn a_journal_that_cannot_be_written_refuses_the_change_and_memory_stays_in_step() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut s = RuleStore::open(&dir).unwrap();
        assert!(s.put(rule("a")).unwrap());
        // The journal cannot be opened again (as on a full or read-only disk).
        s.journal = None;
        std::fs::remove_file(dir.join("rules.journal")).unwrap();
        std::fs::create_dir(dir.join("rules.journal")).unwrap();
        let err = s.put(rule("b")).unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot write rule journal"),
            "{err:#}"
        );
        assert!(s.remove("a").is_err());
        let names = |s: &RuleStore| s.list().map(|r| r.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&s), ["a"], "memory keeps what the disk has");
        // The disk recovers: the next change writes a whole snapshot.
        std::fs::remove_dir(dir.join("rules.journal")).unwrap();
        assert!(s.put(rule("b")).unwrap());
        assert_eq!(names(&RuleStore::open(&dir).unwrap()), ["a", "b"]);
    }

    #[test]
    fn persists_across_opens() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut s = RuleStore::open(&dir).unwrap();
        assert!(s.put(rule("a")).unwrap());
        assert!(!s.put(rule("a")).unwrap());
        assert!(s.put(rule("b")).unwrap());
        assert!(s.remove("b").unwrap().is_some());
        assert!(s.remove("b").unwrap().is_none());
        let s = RuleStore::open(&dir).unwrap();
        assert_eq!(s.list().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn changes_go_to_a_journal_that_is_folded_into_the_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut s = RuleStore::open(&dir).unwrap();
        s.put(rule("a")).unwrap();
        s.put(rule("b")).unwrap();
        s.remove("a").unwrap();
        // Three changes: no snapshot yet, three journal lines.
        assert!(!dir.join("rules.json").exists());
        let journal = std::fs::read_to_string(dir.join("rules.journal")).unwrap();
        assert_eq!(journal.lines().count(), 3, "{journal}");
        let names = |s: &RuleStore| s.list().map(|r| r.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&RuleStore::open(&dir).unwrap()), ["b"]);
        // Enough changes to outgrow the minimum: the journal is folded, nothing is lost.
        for i in 0..1000 {
            s.put(rule(&format!("r{i}"))).unwrap();
        }
        assert!(dir.join("rules.json").exists());
        let journal_len = std::fs::metadata(dir.join("rules.journal")).map_or(0, |m| m.len());
        let snapshot_len = std::fs::metadata(dir.join("rules.json")).unwrap().len();
        assert!(
            journal_len <= JOURNAL_MIN.max(snapshot_len) + 1024,
            "journal {journal_len} bytes"
        );
        let reopened = RuleStore::open(&dir).unwrap();
        assert_eq!(reopened.list().count(), 1001);
        assert_eq!(names(&reopened), names(&s));
        // A crash in the middle of a line: that change was never answered, and is dropped.
        drop(reopened);
        s.put(rule("last")).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("rules.journal"))
            .unwrap();
        std::io::Write::write_all(&mut f, br#"{"put": {"name": "torn", "sq"#).unwrap();
        drop(f);
        let reopened = RuleStore::open(&dir).unwrap();
        assert!(reopened.get("last").is_some());
        assert!(reopened.get("torn").is_none());
        assert_eq!(reopened.list().count(), 1002);
    }
}
