//! The rule store: every rule's definition, in one JSON file under the data directory,
//! replaced atomically (write, sync, rename) on every change so that a crash leaves either
//! the old or the new file, never half of one.

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

pub struct RuleStore {
    path: PathBuf,
    rules: BTreeMap<String, StoredRule>,
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
        let rules = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: StoreFile = serde_json::from_slice(&bytes)
                    .with_context(|| format!("rule store {} is not readable", path.display()))?;
                file.rules
                    .into_iter()
                    .map(|r| (r.name.clone(), r))
                    .collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Self { path, rules })
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
        if let Err(e) = self.save() {
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
        if let Err(e) = self.save() {
            self.rules.insert(old.name.clone(), old);
            return Err(e);
        }
        Ok(Some(old))
    }

    fn save(&self) -> anyhow::Result<()> {
        use std::io::Write;
        let file = StoreFile {
            version: 1,
            rules: self.rules.values().cloned().collect(),
        };
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
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
