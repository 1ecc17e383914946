//! Uploads rolled staging files in the background, so that a slow or absent store never
//! holds up the action's deliveries (they go to staging files meanwhile).
//!
//! A file is converted to the target format (Parquet: one Arrow batch per 64 Ki rows,
//! schema inferred from the rows, snappy-compressed) and written with a multipart upload,
//! which makes the object visible only once it is complete; the staging file is deleted
//! after. An upload that fails because the store is away waits on disk and is retried with
//! backoff, at the next start too. One that can never succeed (the rows do not convert to
//! Parquet, the object path is not valid) is not retried: the file is moved to
//! `staging/rejected/` for the operator, logged, and its rows are counted in
//! `weir_action_dead_lettered_total`. An object's name derives from its staging file, so an
//! upload repeated after a crash overwrites the same object instead of adding one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::format::{Format, to_parquet};
use crate::delivery::owned_files::{claim, release};
use crate::delivery::{Failure, Reason, RetryPolicy};
use crate::metrics::Metrics;

/// A rolled staging file waiting for its upload.
pub(super) struct Pending {
    pub path: PathBuf,
    pub key: String,
    attempts: u32,
    next_attempt: Instant,
}

impl Pending {
    pub fn new(path: PathBuf, key: String) -> Self {
        Self {
            path,
            key,
            attempts: 0,
            next_attempt: Instant::now(),
        }
    }
}

/// Why an upload failed.
#[derive(Debug)]
enum UploadError {
    /// The store is away or failed: the file waits and is tried again.
    Later(Failure),
    /// The file can never be uploaded as it is.
    Never(Failure),
    /// The staging file is gone (removed by hand): there is nothing to upload.
    Gone,
}

pub(super) struct Uploader {
    pub store: Arc<dyn ObjectStore>,
    pub format: Format,
    pub pending: Vec<Pending>,
    pub retry: RetryPolicy,
    pub metrics: Arc<Metrics>,
    pub rule: String,
    pub label: String,
}

/// The staging files in `dir` that earlier runs (or stopped sinks of this action) left,
/// to upload.
pub(super) async fn adopt(dir: &Path) -> Vec<Pending> {
    let mut pending = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return pending;
    };
    let mut found = Vec::new();
    while let Ok(Some(e)) = entries.next_entry().await {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "jsonl") {
            found.push(p);
        }
    }
    found.sort();
    for path in found {
        if !claim(&path) {
            continue;
        }
        let Ok(key) = std::fs::read_to_string(path.with_extension("key")) else {
            tracing::warn!(file = %path.display(), "staging file without its object name; left alone");
            continue;
        };
        tracing::info!(file = %path.display(), object = %key, "uploading a file an earlier run left");
        pending.push(Pending::new(path, key));
    }
    pending
}

impl Uploader {
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Pending>) {
        loop {
            self.upload_due().await;
            let next = self.pending.iter().map(|p| p.next_attempt).min();
            let wait = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => self.pending.push(p),
                    None => break,
                },
                _ = wait => {}
            }
        }
        // The sink is closing: one more try for everything, then leave the rest on disk.
        for p in &mut self.pending {
            p.next_attempt = Instant::now();
        }
        self.upload_due().await;
        for p in &self.pending {
            release(&p.path);
        }
        if !self.pending.is_empty() {
            tracing::warn!(rule = %self.rule, action = %self.label, files = self.pending.len(), "stopping with files not uploaded; they are uploaded at the next start");
        }
    }

    /// Uploads the rolled files whose turn it is, oldest first; failures wait with backoff.
    pub(super) async fn upload_due(&mut self) {
        let mut i = 0;
        while i < self.pending.len() {
            if self.pending[i].next_attempt > Instant::now() {
                i += 1;
                continue;
            }
            let p = &self.pending[i];
            match upload(&*self.store, &p.path, &p.key, self.format).await {
                Ok(()) => {
                    let done = self.pending.remove(i);
                    let _ = tokio::fs::remove_file(done.path.with_extension("key")).await;
                    if let Err(e) = tokio::fs::remove_file(&done.path).await {
                        tracing::warn!(file = %done.path.display(), error = %e, "cannot remove an uploaded staging file");
                    }
                    release(&done.path);
                    tracing::debug!(object = %done.key, "object written");
                }
                Err(UploadError::Later(e)) => {
                    let p = &mut self.pending[i];
                    p.attempts += 1;
                    p.next_attempt = Instant::now() + self.retry.backoff(p.attempts);
                    if p.attempts == 1 || p.attempts.is_multiple_of(10) {
                        tracing::warn!(rule = %self.rule, action = %self.label, object = %p.key, attempts = p.attempts, error = %e, "upload failed; the file waits on disk and is retried");
                    }
                    i += 1;
                }
                Err(UploadError::Never(e)) => {
                    let done = self.pending.remove(i);
                    self.reject(done, e).await;
                }
                Err(UploadError::Gone) => {
                    let gone = self.pending.remove(i);
                    release(&gone.path);
                    tracing::warn!(rule = %self.rule, action = %self.label, file = %gone.path.display(), "a staging file disappeared before its upload");
                }
            }
        }
    }

    /// Moves a file that can never be uploaded out of the way, counting its rows.
    async fn reject(&self, p: Pending, why: Failure) {
        let rows = tokio::fs::read(&p.path)
            .await
            .map(|d| d.iter().filter(|b| **b == b'\n').count())
            .unwrap_or(0);
        let moved = match rejected_path(&p.path) {
            Some(to) => move_with_key(&p.path, &to).await.map(|()| to),
            None => Err(std::io::Error::other("the staging file has no parent")),
        };
        release(&p.path);
        self.metrics
            .action_dead_lettered
            .with_label_values(&[&self.rule, &self.label, why.reason.as_str()])
            .inc_by(rows as u64);
        match moved {
            Ok(to) => {
                tracing::error!(rule = %self.rule, action = %self.label, object = %p.key, rows, file = %to.display(), error = %why, "the file can never be uploaded; it was moved aside")
            }
            Err(e) => {
                tracing::error!(rule = %self.rule, action = %self.label, object = %p.key, rows, file = %p.path.display(), error = %why, move_error = %e, "the file can never be uploaded and cannot be moved aside")
            }
        }
    }
}

/// `<staging dir>/rejected/<file name>`.
fn rejected_path(staged: &Path) -> Option<PathBuf> {
    Some(staged.parent()?.join("rejected").join(staged.file_name()?))
}

/// Moves a staging file and the `.key` file beside it.
async fn move_with_key(from: &Path, to: &Path) -> std::io::Result<()> {
    if let Some(dir) = to.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    tokio::fs::rename(from, to).await?;
    let _ = tokio::fs::rename(from.with_extension("key"), to.with_extension("key")).await;
    Ok(())
}

/// Converts a staging file to the target format and uploads it with a multipart upload.
async fn upload(
    store: &dyn ObjectStore,
    staged: &Path,
    key: &str,
    format: Format,
) -> Result<(), UploadError> {
    let data = tokio::fs::read(staged).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => UploadError::Gone,
        _ => UploadError::Later(Failure::new(
            Reason::Io,
            format!("read {}: {e}", staged.display()),
        )),
    })?;
    // A crash mid-write leaves a partial last line: it was never acknowledged.
    let keep = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if keep == 0 {
        return Ok(());
    }
    let body = match format {
        Format::Jsonl => bytes::Bytes::from(data).slice(..keep),
        Format::Parquet => {
            let lines = bytes::Bytes::from(data).slice(..keep);
            tokio::task::spawn_blocking(move || to_parquet(&lines))
                .await
                .map_err(|e| UploadError::Never(Failure::new(Reason::Parquet, e.to_string())))?
                .map_err(UploadError::Never)?
        }
    };
    let location = ObjectPath::parse(key).map_err(|e| {
        UploadError::Never(Failure::new(
            Reason::InvalidPath,
            format!("object path '{key}': {e}"),
        ))
    })?;
    let store_failed = |e: object_store::Error| {
        UploadError::Later(Failure::new(Reason::Store, format!("writing {key}: {e}")))
    };
    let upload = store.put_multipart(&location).await.map_err(store_failed)?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, 8 * 1024 * 1024);
    w.put(body);
    w.finish().await.map_err(store_failed)?;
    Ok(())
}
