//! The staging files of an object-store action: one per partition (the rendered path
//! template), under `<action state dir>/staging/`, each holding the rows of one future
//! object as JSON lines, with `<id>.key` beside it naming the object.
//!
//! Rows are appended and handed to the operating system at the end of each batch: from
//! then on an output is durable, and its source message may be acknowledged. A file is
//! rolled (closed, synced and given to the uploader) when it reaches its size limits,
//! when it is old enough, and when the action stops.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::time::Instant;

use super::format::Format;
use crate::delivery::owned_files::{claim, unique_owner};
use crate::delivery::{Delivery, Outcome, Reason};

/// One staging file: the rows of one future object.
pub(super) struct Staged {
    /// `<staging dir>/<id>.jsonl`, with `<id>.key` beside it naming the object.
    pub path: PathBuf,
    /// The object's path under the store's root.
    pub key: String,
    file: BufWriter<tokio::fs::File>,
    pub rows: u64,
    pub bytes: u64,
    pub opened: Instant,
}

/// The open staging files of one action, by partition.
pub(super) struct Staging {
    dir: PathBuf,
    format: Format,
    /// `<rule>-<action>-<owner>`: the start of every object name this action writes.
    name_prefix: String,
    seq: u64,
    open: HashMap<String, Staged>,
}

/// A failed read or write of a staging file: the output is tried again.
pub(super) fn io_failure(what: &str, path: &Path, e: std::io::Error) -> Outcome {
    Outcome::retry(Reason::Io, format!("{what} {}: {e}", path.display()))
}

impl Staging {
    /// The staging files of the action `label` of `rule`, in `dir` (created if need be).
    pub async fn open(
        dir: PathBuf,
        format: Format,
        rule: &str,
        label: &str,
    ) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(&dir).await?;
        let safe: String = format!("{rule}-{label}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Ok(Self {
            dir,
            format,
            name_prefix: format!("{safe}-{}", unique_owner()),
            seq: 0,
            open: HashMap::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The open file of a partition.
    pub fn get(&self, part: &str) -> Option<&Staged> {
        self.open.get(part)
    }

    /// The partitions whose files are at least `age` old.
    pub fn older_than(&self, age: std::time::Duration) -> Vec<String> {
        self.open
            .iter()
            .filter(|(_, s)| s.opened.elapsed() >= age)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Every open partition.
    pub fn partitions(&self) -> Vec<String> {
        self.open.keys().cloned().collect()
    }

    /// Appends one output to its partition's file, opening the file if need be.
    pub async fn append(&mut self, part: &str, d: &Delivery) -> Result<(), Outcome> {
        if !self.open.contains_key(part) {
            self.seq += 1;
            let id = format!("{}-{:06}", self.name_prefix, self.seq);
            let path = self.dir.join(format!("{id}.jsonl"));
            let name = format!("{id}.{}", self.format.extension());
            let key = if part.is_empty() {
                name
            } else {
                format!("{part}/{name}")
            };
            claim(&path);
            let key_path = path.with_extension("key");
            tokio::fs::write(&key_path, &key)
                .await
                .map_err(|e| io_failure("write", &key_path, e))?;
            let file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| io_failure("create", &path, e))?;
            self.open.insert(
                part.to_owned(),
                Staged {
                    path,
                    key,
                    file: BufWriter::with_capacity(256 * 1024, file),
                    rows: 0,
                    bytes: 0,
                    opened: Instant::now(),
                },
            );
        }
        let s = self.open.get_mut(part).expect("opened above");
        s.file
            .write_all(&d.payload)
            .await
            .map_err(|e| io_failure("write", &s.path, e))?;
        s.file
            .write_all(b"\n")
            .await
            .map_err(|e| io_failure("write", &s.path, e))?;
        s.rows += 1;
        s.bytes += d.payload.len() as u64 + 1;
        Ok(())
    }

    /// Hands a partition's appended rows to the operating system.
    pub async fn flush(&mut self, part: &str) -> Result<(), Outcome> {
        let Some(s) = self.open.get_mut(part) else {
            return Ok(());
        };
        s.file
            .flush()
            .await
            .map_err(|e| io_failure("flush", &s.path, e))
    }

    /// Closes a partition's file and syncs it to disk; returns it for upload.
    pub async fn roll(&mut self, part: &str) -> Option<Staged> {
        let mut s = self.open.remove(part)?;
        if let Err(e) = s.file.flush().await {
            tracing::warn!(file = %s.path.display(), error = %e, "cannot flush a staging file");
        }
        if let Err(e) = s.file.get_ref().sync_all().await {
            tracing::warn!(file = %s.path.display(), error = %e, "cannot sync a staging file");
        }
        Some(s)
    }
}

/// A rendered partition path as object path segments: empty, `.` and `..` segments are
/// dropped, so a value cannot climb out of the prefix.
pub(super) fn clean_key(path: &str) -> String {
    path.split('/')
        .filter(|s| !s.is_empty() && *s != "." && *s != "..")
        .collect::<Vec<_>>()
        .join("/")
}
