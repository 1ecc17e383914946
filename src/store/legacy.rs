//! The files of an earlier weir's data directory, read once into the local store: each kind
//! kept its own way, and the store keeps every kind in one snapshot and journal.
//!
//! | file | what it held | as objects |
//! |---|---|---|
//! | `rules.json` | `{"version": 1, "rules": [<rule>, ...]}` | `rule`, at the rule's own `version` (0 when it had none) |
//! | `rules.journal` | changes since: `{"put": <rule>}`, `{"remove": "<name>"}` | replayed over `rules.json` |
//! | `connections.json` | `{"version": 1, "connections": [<connection>, ...]}` | `connection`, version 1 |
//! | `tokens.json` | `{"version": 1, "tokens": {"<name>": <token>, ...}}` | `token`, version 1 |
//!
//! A file that is not readable stops weir, naming it (as the earlier weir did); a torn
//! last journal line is dropped and a damaged one loses its own change (counted). Once
//! the store's snapshot holds them, the files are renamed `<file>.imported`: an earlier
//! weir started on the directory again finds none, and the files stay for an operator who
//! wants them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::backend::Kind;
use super::journal::{read_if_there, replay_journal};

/// The files an earlier weir kept its objects in.
pub const FILES: [&str; 4] = [
    "rules.json",
    "rules.journal",
    "connections.json",
    "tokens.json",
];

/// An earlier weir's files beside a store that has its own (written by an earlier weir
/// started on the directory after this one): not read, and said so.
pub fn warn_if_left(data_dir: &Path) {
    let left: Vec<&str> = FILES
        .into_iter()
        .filter(|f| data_dir.join(f).exists())
        .collect();
    if !left.is_empty() {
        tracing::warn!(
            files = ?left,
            dir = %data_dir.display(),
            "files of an earlier weir beside the store are not read: the store was made from them before, or after them; move them away to silence this"
        );
    }
}

/// What an earlier weir's files held.
#[derive(Default)]
pub struct Imported {
    /// Every object, by kind and name: its version and body.
    pub objects: BTreeMap<(Kind, String), (u64, Box<RawValue>)>,
    /// Journal lines that could not be read.
    pub corrupt: u64,
    /// The files read, to be set aside once the store holds what they held.
    pub files: Vec<PathBuf>,
}

/// What the store needs of an earlier weir's rule: its name and version.
#[derive(Deserialize)]
struct RuleHead {
    name: String,
    #[serde(default)]
    version: u64,
}

#[derive(Deserialize)]
struct RuleFile {
    rules: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum RuleChange {
    Put(Box<RawValue>),
    Remove(String),
}

#[derive(Deserialize)]
struct ConnectionFile {
    connections: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
struct NameOnly {
    name: String,
}

#[derive(Deserialize)]
struct TokenFile {
    tokens: BTreeMap<String, Box<RawValue>>,
}

/// Reads whatever of an earlier weir's files `data_dir` holds.
pub fn import(data_dir: &Path) -> anyhow::Result<Imported> {
    let mut out = Imported::default();
    let path = data_dir.join("rules.json");
    if let Some(bytes) = read(&path, &mut out)? {
        let file: RuleFile = serde_json::from_slice(&bytes)
            .with_context(|| format!("rule store {} is not readable", path.display()))?;
        for raw in file.rules {
            put_rule(&mut out, raw, &path)?;
        }
    }
    let path = data_dir.join("rules.journal");
    if let Some(bytes) = read(&path, &mut out)? {
        let mut failed = None;
        let replayed = replay_journal(&bytes, &path, |change: RuleChange| match change {
            RuleChange::Put(raw) => {
                if let Err(e) = put_rule(&mut out, raw, &path) {
                    failed.get_or_insert(e);
                }
            }
            RuleChange::Remove(name) => {
                out.objects.remove(&(Kind::Rule, name));
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        out.corrupt += replayed.corrupt;
    }
    let path = data_dir.join("connections.json");
    if let Some(bytes) = read(&path, &mut out)? {
        let file: ConnectionFile = serde_json::from_slice(&bytes)
            .with_context(|| format!("connection store {} is not readable", path.display()))?;
        for raw in file.connections {
            let head: NameOnly = serde_json::from_str(raw.get())
                .with_context(|| format!("a connection of {} has no name", path.display()))?;
            out.objects.insert((Kind::Connection, head.name), (1, raw));
        }
    }
    let path = data_dir.join("tokens.json");
    if let Some(bytes) = read(&path, &mut out)? {
        let file: TokenFile = serde_json::from_slice(&bytes)
            .with_context(|| format!("token store {} is not readable", path.display()))?;
        for (name, raw) in file.tokens {
            out.objects.insert((Kind::Token, name), (1, raw));
        }
    }
    if !out.files.is_empty() {
        tracing::info!(
            files = ?out.files,
            objects = out.objects.len(),
            "read the stores of an earlier weir into the store"
        );
    }
    Ok(out)
}

/// The bytes of `path`, noted as read; `None` when it is not there.
fn read(path: &Path, out: &mut Imported) -> anyhow::Result<Option<Vec<u8>>> {
    if !path.exists() {
        return Ok(None);
    }
    let bytes = read_if_there(path)?;
    out.files.push(path.to_owned());
    Ok(Some(bytes))
}

fn put_rule(out: &mut Imported, raw: Box<RawValue>, path: &Path) -> anyhow::Result<()> {
    let head: RuleHead = serde_json::from_str(raw.get())
        .with_context(|| format!("a rule of {} has no name", path.display()))?;
    out.objects
        .insert((Kind::Rule, head.name), (head.version, raw));
    Ok(())
}

/// Renames each file `<file>.imported`.
pub fn set_aside(files: &[PathBuf]) -> anyhow::Result<()> {
    for f in files {
        let mut to = f.as_os_str().to_owned();
        to.push(".imported");
        std::fs::rename(f, &to).with_context(|| {
            format!(
                "cannot rename {} to {}",
                f.display(),
                Path::new(&to).display()
            )
        })?;
    }
    Ok(())
}
