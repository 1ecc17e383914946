//! The object-storage action, for `file://` URLs: JSON lines under a local directory.
//!
//! Outputs are appended to a hidden in-progress file (`.<name>.jsonl.tmp`) in the target
//! directory. The file is rolled, that is flushed, synced and renamed to its final name
//! `<rule>-<action>-<start ms>-<seq>.jsonl`, when it reaches `max_rows` or `max_bytes`,
//! when it is older than `max_age`, and when the action stops. A rename within one
//! directory is atomic, so a reader that lists `*.jsonl` never sees a half-written file.
//! In-progress files left by a crash are completed at the next start: cut back to their
//! last whole line and renamed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::time::Instant;

use super::{ActionContext, ConfigError, Delivery, DeliveryError};
use crate::retry::humantime_serde_compat;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Jsonl,
    Parquet,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreConfig {
    /// `file:///absolute/path` (S3 and other stores come with the object-storage work).
    /// Without a URL, files go to `<output dir>/<rule name>/` (`--output-dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub format: Format,
    /// Roll the file after this many rows.
    #[serde(default = "default_max_rows")]
    pub max_rows: u64,
    /// Roll the file once it holds this many bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Roll the file when it is this old.
    #[serde(default = "default_max_age", with = "humantime_serde_compat")]
    pub max_age: Duration,
    /// Store options (endpoint, region, credentials, ...); none apply to `file://`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub options: std::collections::BTreeMap<String, String>,
}

fn default_max_rows() -> u64 {
    100_000
}
fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_max_age() -> Duration {
    Duration::from_secs(60)
}

impl ObjectStoreConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| ConfigError::invalid("object_store", m);
        if let Some(url) = &self.url {
            let Some(path) = url.strip_prefix("file://") else {
                let scheme = url.split("://").next().unwrap_or_default();
                return Err(bad(format!(
                    "url '{url}': this build writes only to file:// URLs (got scheme '{scheme}')"
                )));
            };
            if !path.starts_with('/') {
                return Err(bad(format!(
                    "url '{url}' must be an absolute path: file:///dir"
                )));
            }
        }
        if self.format != Format::Jsonl {
            return Err(bad(
                "format 'parquet' is not available yet; use \"jsonl\"".to_owned()
            ));
        }
        if self.max_rows == 0 || self.max_bytes == 0 || self.max_age.is_zero() {
            return Err(bad(
                "max_rows, max_bytes and max_age must be more than 0".to_owned()
            ));
        }
        if let Some(k) = self.options.keys().next() {
            return Err(bad(format!("option '{k}' does not apply to file:// URLs")));
        }
        Ok(())
    }

    /// The directory the files go to.
    fn dir(&self, ctx: &ActionContext) -> PathBuf {
        match &self.url {
            Some(url) => PathBuf::from(url.trim_start_matches("file://")),
            None => ctx.output_dir.join(&ctx.rule),
        }
    }
}

struct Current {
    tmp: PathBuf,
    name: String,
    file: BufWriter<tokio::fs::File>,
    rows: u64,
    bytes: u64,
    opened: Instant,
}

pub struct FileSink {
    dir: PathBuf,
    prefix: String,
    max_rows: u64,
    max_bytes: u64,
    max_age: Duration,
    seq: u64,
    current: Option<Current>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> DeliveryError {
    DeliveryError::retryable("io", format!("{what} {}: {e}", path.display()))
}

impl FileSink {
    pub(crate) async fn open(
        c: &ObjectStoreConfig,
        ctx: &ActionContext,
    ) -> Result<Self, ConfigError> {
        c.validate()?;
        let dir = c.dir(ctx);
        tokio::fs::create_dir_all(&dir).await.map_err(|e| {
            ConfigError::invalid(
                "object_store",
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
        let safe: String = format!("{}-{}", ctx.rule, ctx.label)
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        // Files this process opened belong to running sinks (a rule being replaced still
        // drains into its file): only earlier runs' files are completed here.
        let started = *PROCESS_START.get_or_init(weir_engine::now_ms);
        recover(&dir, &safe, started).await;
        Ok(Self {
            dir,
            prefix: format!("{safe}-{}", weir_engine::now_ms()),
            max_rows: c.max_rows,
            max_bytes: c.max_bytes,
            max_age: c.max_age,
            seq: 0,
            current: None,
        })
    }

    pub(crate) async fn deliver(&mut self, d: &Delivery) -> Result<(), DeliveryError> {
        if self.current.is_none() {
            self.seq += 1;
            let name = format!("{}-{:06}.jsonl", self.prefix, self.seq);
            let tmp = self.dir.join(format!(".{name}.tmp"));
            let file = tokio::fs::File::create(&tmp)
                .await
                .map_err(|e| io_err("create", &tmp, e))?;
            self.current = Some(Current {
                tmp,
                name,
                file: BufWriter::new(file),
                rows: 0,
                bytes: 0,
                opened: Instant::now(),
            });
        }
        let cur = self.current.as_mut().expect("opened above");
        cur.file
            .write_all(&d.payload)
            .await
            .map_err(|e| io_err("write", &cur.tmp, e))?;
        cur.file
            .write_all(b"\n")
            .await
            .map_err(|e| io_err("write", &cur.tmp, e))?;
        cur.rows += 1;
        cur.bytes += d.payload.len() as u64 + 1;
        if cur.rows >= self.max_rows || cur.bytes >= self.max_bytes {
            self.roll().await?;
        }
        Ok(())
    }

    pub(crate) async fn flush(&mut self) -> Result<(), DeliveryError> {
        match &mut self.current {
            Some(c) => c.file.flush().await.map_err(|e| io_err("flush", &c.tmp, e)),
            None => Ok(()),
        }
    }

    pub(crate) async fn roll_if_old(&mut self) -> Result<(), DeliveryError> {
        match &self.current {
            Some(c) if c.opened.elapsed() >= self.max_age => self.roll().await,
            _ => Ok(()),
        }
    }

    /// Makes the in-progress file visible under its final name.
    pub(crate) async fn roll(&mut self) -> Result<(), DeliveryError> {
        let Some(mut cur) = self.current.take() else {
            return Ok(());
        };
        let result = async {
            cur.file
                .flush()
                .await
                .map_err(|e| io_err("flush", &cur.tmp, e))?;
            cur.file
                .get_ref()
                .sync_all()
                .await
                .map_err(|e| io_err("sync", &cur.tmp, e))?;
            let dest = self.dir.join(&cur.name);
            tokio::fs::rename(&cur.tmp, &dest)
                .await
                .map_err(|e| io_err("rename", &cur.tmp, e))
        }
        .await;
        if result.is_err() {
            // Keep the file so that the next roll (or the next start) completes it.
            self.current = Some(cur);
        }
        result
    }
}

/// When the first file sink of this process opened (ms since the epoch).
static PROCESS_START: std::sync::OnceLock<i64> = std::sync::OnceLock::new();

/// Completes in-progress files of `prefix` that runs started before `started` left behind.
async fn recover(dir: &Path, prefix: &str, started: i64) {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(name) = file_name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".tmp"))
            .filter(|n| n.starts_with(prefix))
        else {
            continue;
        };
        // `<prefix>-<start ms>-<seq>.jsonl`
        let opened: Option<i64> = name[prefix.len()..]
            .trim_start_matches('-')
            .split('-')
            .next()
            .and_then(|ms| ms.parse().ok());
        if opened.is_none_or(|ms| ms >= started) {
            continue;
        }
        let path = entry.path();
        let Ok(data) = tokio::fs::read(&path).await else {
            continue;
        };
        let keep = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let dest = dir.join(name);
        let done = async {
            if keep > 0 {
                tokio::fs::write(&dest, &data[..keep]).await?;
            }
            tokio::fs::remove_file(&path).await
        }
        .await;
        match done {
            Ok(()) if keep == 0 => {
                tracing::info!(file = %path.display(), "removed an empty file left by an earlier run")
            }
            Ok(()) => {
                tracing::info!(file = %dest.display(), "completed a file left by an earlier run")
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "could not complete a file left by an earlier run")
            }
        }
    }
}
