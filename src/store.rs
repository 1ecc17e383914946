//! The rule store: every rule's definition under the data directory, as a snapshot
//! (`rules.json`, replaced atomically: write, sync, rename) and a journal of the changes
//! since (`rules.journal`, one JSON line per change, synced before the change is
//! answered). Opening reads the snapshot and replays the journal; a line torn by a crash
//! (a change that was never answered) is dropped. When the journal outgrows the snapshot
//! it is folded into a new one, so a change costs its own size, not the store's: 10,000
//! rules install as fast as 10.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use weir_connectors::actions::ActionConfig;

/// A rule as a user submits it (`PUT /v1/rules/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub sql: String,
    pub actions: Vec<ActionConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_action: Option<ActionConfig>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The AWS IoT SQL version the rule is written in (AWS's `awsIotSqlVersion`).
    #[serde(default = "current_sql_version")]
    pub sql_version: String,
}

fn yes() -> bool {
    true
}

/// The AWS IoT SQL version weir implements, and the default for rules.
pub const SQL_VERSION: &str = "2016-03-23";

pub(crate) fn current_sql_version() -> String {
    SQL_VERSION.to_owned()
}

/// A rule as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRule {
    pub name: String,
    #[serde(flatten)]
    pub spec: RuleSpec,
    /// `api`, or `file:<path>` for rules loaded from the queries directory.
    pub source: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
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
}

/// Checks a rule name: 1 to 128 letters, digits, '_' or '-'.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!(
            "rule name must have 1 to 128 characters, got {}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "rule name '{name}' contains '{c}'; use letters, digits, '_' and '-'"
        ));
    }
    Ok(())
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
        for (i, line) in journal[..complete].split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let change: Change = serde_json::from_slice(line).with_context(|| {
                format!(
                    "rule journal {} line {} is not readable",
                    journal_path.display(),
                    i + 1
                )
            })?;
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
        };
        if complete < journal.len() {
            tracing::warn!(journal = %store.journal_path.display(), "dropping a torn last line of the rule journal");
            store.compact()?;
        }
        Ok(store)
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

    /// Writes the snapshot; returns its size.
    fn save(&self) -> anyhow::Result<u64> {
        use std::io::Write;
        let file = StoreFile {
            version: 1,
            rules: self.rules.values().cloned().collect(),
        };
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<u64> {
            let mut f = std::fs::File::create(&tmp)?;
            let bytes = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            Ok(bytes.len() as u64)
        };
        write().with_context(|| format!("cannot write rule store {}", self.path.display()))
    }
}

/// A rule file from the queries directory: SQL, with the rest of the rule in `--` comment
/// lines at the top:
///
/// ```sql
/// -- description: Alert on hot machines
/// -- action: {"republish": {"topic": "alerts/${topic(3)}"}}
/// -- error_action: {"republish": {"topic": "weir/errors"}}
/// -- enabled: true
/// -- sql_version: 2016-03-23
/// SELECT ... FROM '...' WHERE ...
/// ```
///
/// The rule's name is the file name without `.sql`.
pub fn parse_rule_file(path: &Path, text: &str) -> anyhow::Result<(String, RuleSpec)> {
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .context("rule file name is not UTF-8")?
        .to_owned();
    validate_name(&name).map_err(anyhow::Error::msg)?;
    let mut spec = RuleSpec {
        sql: String::new(),
        actions: Vec::new(),
        error_action: None,
        enabled: true,
        description: None,
        sql_version: current_sql_version(),
    };
    for (i, line) in text.lines().enumerate() {
        let Some(comment) = line.trim().strip_prefix("--") else {
            continue;
        };
        let Some((key, value)) = comment.trim().split_once(':') else {
            continue;
        };
        let value = value.trim();
        let at = || format!("{}:{}", path.display(), i + 1);
        match key.trim() {
            "action" => spec
                .actions
                .push(serde_json::from_str(value).with_context(|| format!("{}: action", at()))?),
            "error_action" => {
                spec.error_action = Some(
                    serde_json::from_str(value)
                        .with_context(|| format!("{}: error_action", at()))?,
                )
            }
            "description" => spec.description = Some(value.to_owned()),
            "sql_version" => spec.sql_version = value.to_owned(),
            "enabled" => {
                spec.enabled = value
                    .parse()
                    .with_context(|| format!("{}: enabled must be true or false", at()))?
            }
            _ => {}
        }
    }
    spec.sql = text.to_owned();
    Ok((name, spec))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            },
            source: "api".to_owned(),
            created_at_ms: 1,
            updated_at_ms: 1,
        }
    }

    #[test]
    fn persists_across_opens() {
        let dir = std::env::temp_dir().join(format!(
            "weir-store-{}-{}",
            std::process::id(),
            weir_engine::now_ms()
        ));
        let mut s = RuleStore::open(&dir).unwrap();
        assert!(s.put(rule("a")).unwrap());
        assert!(!s.put(rule("a")).unwrap());
        assert!(s.put(rule("b")).unwrap());
        assert!(s.remove("b").unwrap().is_some());
        assert!(s.remove("b").unwrap().is_none());
        let s = RuleStore::open(&dir).unwrap();
        assert_eq!(s.list().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["a"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn changes_go_to_a_journal_that_is_folded_into_the_snapshot() {
        let dir = std::env::temp_dir().join(format!(
            "weir-journal-{}-{}",
            std::process::id(),
            weir_engine::now_ms()
        ));
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
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names() {
        assert!(validate_name("high_temp-1").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a b").is_err());
        assert!(validate_name(&"x".repeat(129)).is_err());
    }

    #[test]
    fn rule_files() {
        let text = "-- description: hot\n-- action: {\"republish\": {\"topic\": \"x\"}}\n-- enabled: false\nSELECT * FROM 'a'\n";
        let (name, spec) = parse_rule_file(Path::new("queries/hot.sql"), text).unwrap();
        assert_eq!(name, "hot");
        assert_eq!(spec.actions.len(), 1);
        assert!(!spec.enabled);
        assert_eq!(spec.description.as_deref(), Some("hot"));
        let bad = "-- action: {\"kafka\": {}}\nSELECT 1";
        let err = parse_rule_file(Path::new("x.sql"), bad).unwrap_err();
        assert!(format!("{err:#}").contains("x.sql:1"), "{err:#}");
    }
}
