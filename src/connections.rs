//! The named connections an operator defined: `<data-dir>/connections.json` (mode 0600,
//! replaced atomically; it holds their secrets), and the `[connections.<name>]` tables of
//! the config file, which replace a stored connection of the same name at start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use weir_connectors::sinks::ConnectionConfig;

/// A connection as stored and listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredConnection {
    pub name: String,
    #[serde(flatten)]
    pub config: ConnectionConfig,
    /// `api`, or `config` for a connection of the config file.
    pub source: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl StoredConnection {
    /// The connection as an API answer shows it: secrets redacted.
    pub fn redacted(&self) -> Self {
        Self {
            config: self.config.redacted(),
            ..self.clone()
        }
    }
}

#[derive(Serialize, Deserialize)]
struct ConnectionFile {
    version: u32,
    connections: Vec<StoredConnection>,
}

/// The most connections weir keeps.
pub const MAX_CONNECTIONS: usize = 1000;

/// Why a connection was not stored.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("weir has {MAX_CONNECTIONS} connections, the most it keeps; delete one first")]
    TooMany,
    #[error(transparent)]
    Store(anyhow::Error),
}

pub struct ConnectionStore {
    path: PathBuf,
    connections: BTreeMap<String, StoredConnection>,
}

impl ConnectionStore {
    /// Opens the store in `data_dir` (none yet: empty).
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join("connections.json");
        let connections = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: ConnectionFile = serde_json::from_slice(&bytes).with_context(|| {
                    format!("connection store {} is not readable", path.display())
                })?;
                file.connections
                    .into_iter()
                    .map(|c| (c.name.clone(), c))
                    .collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(Self { path, connections })
    }

    /// The connections of the fleet's shared store: this replica's copy of them (rows
    /// that are not connections are skipped, logged).
    pub fn from_shared(rows: Vec<crate::shared_store::Row>) -> Self {
        let mut s = Self {
            path: PathBuf::new(),
            connections: BTreeMap::new(),
        };
        s.set_all_cached(rows);
        s
    }

    /// Makes `c` the copy here of the connection `name` (`None`: gone), writing nothing.
    pub fn set_cached(&mut self, name: &str, c: Option<StoredConnection>) {
        match c {
            Some(c) => {
                self.connections.insert(name.to_owned(), c);
            }
            None => {
                self.connections.remove(name);
            }
        }
    }

    /// Replaces every connection with the shared store's rows.
    pub fn set_all_cached(&mut self, rows: Vec<crate::shared_store::Row>) {
        self.connections = rows
            .into_iter()
            .filter_map(|r| match serde_json::from_str::<StoredConnection>(&r.body) {
                Ok(c) if c.name == r.name => Some((r.name, c)),
                Ok(_) | Err(_) => {
                    tracing::error!(connection = %r.name, "a row of the shared store is not that connection: skipped");
                    None
                }
            })
            .collect();
    }

    pub fn get(&self, name: &str) -> Option<&StoredConnection> {
        self.connections.get(name)
    }

    pub fn list(&self) -> impl Iterator<Item = &StoredConnection> {
        self.connections.values()
    }

    pub fn len(&self) -> usize {
        self.connections.len()
    }

    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// Inserts or replaces a connection and saves the store; on failure nothing changes.
    /// A new one past [`MAX_CONNECTIONS`] is refused.
    pub fn put(&mut self, c: StoredConnection) -> Result<(), PutError> {
        if !self.connections.contains_key(&c.name) && self.connections.len() >= MAX_CONNECTIONS {
            return Err(PutError::TooMany);
        }
        let old = self.connections.insert(c.name.clone(), c.clone());
        if let Err(e) = self.save() {
            match old {
                Some(o) => self.connections.insert(c.name.clone(), o),
                None => self.connections.remove(&c.name),
            };
            return Err(PutError::Store(e));
        }
        Ok(())
    }

    /// Removes a connection and saves the store; whether it was there.
    pub fn remove(&mut self, name: &str) -> anyhow::Result<bool> {
        let Some(old) = self.connections.remove(name) else {
            return Ok(false);
        };
        if let Err(e) = self.save() {
            self.connections.insert(name.to_owned(), old);
            return Err(e);
        }
        Ok(true)
    }

    fn save(&self) -> anyhow::Result<()> {
        let file = ConnectionFile {
            version: 1,
            connections: self.connections.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).expect("connections serialize");
        crate::private_file::replace(&self.path, &bytes)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn connections_persist_privately() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = ConnectionStore::open(tmp.path()).unwrap();
        let config: ConnectionConfig = serde_json::from_value(serde_json::json!(
            {"kafka": {"bootstrap_servers": "k:9092", "properties": {"sasl.password": "p"}}}
        ))
        .unwrap();
        s.put(StoredConnection {
            name: "events".to_owned(),
            config: config.clone(),
            source: "api".to_owned(),
            created_at_ms: 1,
            updated_at_ms: 1,
        })
        .unwrap();
        let path = tmp.path().join("connections.json");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let s = ConnectionStore::open(tmp.path()).unwrap();
        assert_eq!(s.get("events").unwrap().config, config);
        let shown = serde_json::to_value(s.get("events").unwrap().redacted()).unwrap();
        assert_eq!(shown["kafka"]["properties"]["sasl.password"], "<redacted>");
        let mut s = s;
        assert!(s.remove("events").unwrap());
        assert!(!s.remove("events").unwrap());
        assert_eq!(ConnectionStore::open(tmp.path()).unwrap().len(), 0);
    }

    #[test]
    fn at_most_max_connections_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = ConnectionStore::open(tmp.path()).unwrap();
        let c = |name: String| StoredConnection {
            name,
            config: serde_json::from_value(serde_json::json!(
                {"webhook": {"url": "https://hooks.example.com/"}}
            ))
            .unwrap(),
            source: "api".to_owned(),
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        for i in 0..MAX_CONNECTIONS - 1 {
            s.connections.insert(format!("c{i}"), c(format!("c{i}")));
        }
        s.put(c("last".to_owned())).unwrap();
        let err = s.put(c("one-more".to_owned())).unwrap_err();
        assert!(matches!(err, PutError::TooMany), "{err}");
        // Replacing one is not a new one.
        s.put(c("c0".to_owned())).unwrap();
        assert!(s.remove("c1").unwrap());
        s.put(c("one-more".to_owned())).unwrap();
        assert_eq!(s.len(), MAX_CONNECTIONS);
    }
}
