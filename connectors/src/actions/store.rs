//! The object-storage action: outputs as JSON lines or Parquet files, on the local disk
//! (`file://`) or in S3 and S3-compatible stores (`s3://`), through the `object_store`
//! crate.
//!
//! Outputs are first appended to a staging file in weir's data directory
//! (`<data dir>/staging/<rule>/<action>/`), one per partition (the rendered path template),
//! and handed to the operating system at the end of each batch: from then on the output is
//! durable and the source message may be acknowledged. A staging file is rolled when it
//! reaches `max_rows` or `max_bytes`, when it is older than `max_age`, and when the action
//! stops: it is converted to the target format (Parquet: one Arrow batch per 64 Ki rows,
//! schema inferred from the rows, snappy-compressed) and uploaded with a multipart upload,
//! which makes the object visible only once it is complete. The staging file is deleted
//! after the upload. An upload that fails (the store is down) is retried every tick with
//! backoff, and the staging files wait on disk meanwhile; files a crashed or stopped run
//! left are uploaded at the next start. An object's name derives from its staging file,
//! so an upload repeated after a crash overwrites the same object instead of adding one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::time::Instant;
use weir_engine::template::{Template, TemplateExprs};

use super::{ActionContext, ConfigError, Delivery, DeliveryError, claimed, render};
use crate::retry::{RetryPolicy, humantime_serde_compat};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Jsonl,
    Parquet,
}

impl Format {
    fn extension(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Parquet => "parquet",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreConfig {
    /// `s3://bucket/prefix` (also `gs://`, `az://`, `abfss://`) or `file:///absolute/path`;
    /// the path may use `${...}` templates to partition the files
    /// (`s3://lake/facility=${topic(3)}/`). Without a URL,
    /// files go to `<output dir>/<rule name>/` (`--output-dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub format: Format,
    /// Roll the file after this many rows.
    #[serde(default = "default_max_rows")]
    pub max_rows: u64,
    /// Roll the file once it holds this many bytes (of JSON lines, before conversion).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Roll the file when it is this old.
    #[serde(default = "default_max_age", with = "humantime_serde_compat")]
    pub max_age: Duration,
    /// `object_store` settings of the store: for S3 `endpoint`, `region`,
    /// `access_key_id`, `secret_access_key`, `allow_http`, `virtual_hosted_style_request`,
    /// ...; for GCS and Azure their own keys. The standard `AWS_*`, `GOOGLE_*` and
    /// `AZURE_*` environment variables apply too. None apply to `file://`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
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

/// Where the files go: a store, and a path template under it.
enum Target {
    /// A local directory (`file://` or the output directory).
    Local(PathBuf),
    /// A cloud store: `<scheme>://<bucket or container>`.
    Cloud { kind: Cloud, base: String },
}

/// The cloud stores this build reaches, by URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cloud {
    /// `s3://`, `s3a://`: Amazon S3 and S3-compatible stores.
    S3,
    /// `gs://`: Google Cloud Storage.
    Gcs,
    /// `az://`, `azure://`, `abfs://`, `abfss://`: Azure Blob Storage / ADLS Gen2.
    Azure,
}

impl Cloud {
    fn from_scheme(scheme: &str) -> Option<Self> {
        match scheme {
            "s3" | "s3a" => Some(Self::S3),
            "gs" => Some(Self::Gcs),
            "az" | "azure" | "abfs" | "abfss" => Some(Self::Azure),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::S3 => "S3",
            Self::Gcs => "Google Cloud Storage",
            Self::Azure => "Azure",
        }
    }

    /// Whether `key` is one of this store's `object_store` settings.
    fn knows(self, key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        match self {
            Self::S3 => key.parse::<AmazonS3ConfigKey>().is_ok(),
            Self::Gcs => key.parse::<GoogleConfigKey>().is_ok(),
            Self::Azure => key.parse::<AzureConfigKey>().is_ok(),
        }
    }

    fn examples(self) -> &'static str {
        match self {
            Self::S3 => {
                "endpoint, region, access_key_id, secret_access_key, allow_http, \
                 virtual_hosted_style_request"
            }
            Self::Gcs => "service_account_path, service_account_key, application_credentials",
            Self::Azure => "account_name, access_key, sas_key, use_emulator, endpoint",
        }
    }

    /// The store for `base` (`<scheme>://<bucket>`), from the environment and `options`.
    fn build(
        self,
        base: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<Arc<dyn ObjectStore>, String> {
        // weir retries failed uploads itself, with the files waiting on disk; the client
        // only smooths over a blip.
        let retry = object_store::RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let key = |k: &str| k.to_ascii_lowercase();
        let unknown = |k: &str| format!("unknown {} option '{k}'", self.name());
        Ok(match self {
            Self::S3 => {
                let mut b = AmazonS3Builder::from_env().with_url(base).with_retry(retry);
                for (k, v) in options {
                    b = b.with_config(key(k).parse().map_err(|_| unknown(k))?, v);
                }
                Arc::new(b.build().map_err(|e| e.to_string())?)
            }
            Self::Gcs => {
                let mut b = GoogleCloudStorageBuilder::from_env()
                    .with_url(base)
                    .with_retry(retry);
                for (k, v) in options {
                    b = b.with_config(key(k).parse().map_err(|_| unknown(k))?, v);
                }
                Arc::new(b.build().map_err(|e| e.to_string())?)
            }
            Self::Azure => {
                let mut b = MicrosoftAzureBuilder::from_env()
                    .with_url(base)
                    .with_retry(retry);
                for (k, v) in options {
                    b = b.with_config(key(k).parse().map_err(|_| unknown(k))?, v);
                }
                Arc::new(b.build().map_err(|e| e.to_string())?)
            }
        })
    }
}

struct Parsed {
    target: Target,
    /// The path under the store's root; `${...}` templates allowed.
    path: String,
}

impl ObjectStoreConfig {
    fn parse(&self, output_dir: Option<&Path>) -> Result<Parsed, ConfigError> {
        let bad = |m: String| ConfigError::invalid("object_store", m);
        let Some(url) = &self.url else {
            if let Some(k) = self.options.keys().next() {
                return Err(bad(format!(
                    "option '{k}' does not apply to the local output directory"
                )));
            }
            return Ok(Parsed {
                target: Target::Local(output_dir.map(Path::to_path_buf).unwrap_or_default()),
                path: String::new(),
            });
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(bad(format!(
                    "url '{url}' must be an absolute path: file:///dir"
                )));
            }
            if let Some(k) = self.options.keys().next() {
                return Err(bad(format!("option '{k}' does not apply to file:// URLs")));
            }
            // The fixed part is the directory; templates may only follow it.
            let fixed_end = path
                .find("${")
                .map_or(path.len(), |i| path[..i].rfind('/').map_or(0, |j| j + 1));
            return Ok(Parsed {
                target: Target::Local(PathBuf::from(&path[..fixed_end])),
                path: path[fixed_end..].to_owned(),
            });
        }
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let Some(kind) = Cloud::from_scheme(scheme) else {
            return Err(bad(format!(
                "url '{url}': scheme '{scheme}' is not supported; use s3://, gs://, az://, \
                 abfss:// or file:///"
            )));
        };
        let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || bucket.contains("${") {
            return Err(bad(format!(
                "url '{url}': the bucket must be named literally: {scheme}://bucket/prefix"
            )));
        }
        if let Some(k) = self.options.keys().find(|k| !kind.knows(k)) {
            return Err(bad(format!(
                "unknown {} option '{k}' (examples: {})",
                kind.name(),
                kind.examples()
            )));
        }
        Ok(Parsed {
            target: Target::Cloud {
                kind,
                base: format!("{scheme}://{bucket}"),
            },
            path: path.to_owned(),
        })
    }

    /// Checks the configuration and registers the path's templates.
    pub(crate) fn validate(
        &self,
        exprs: &mut TemplateExprs,
    ) -> Result<Option<Template>, ConfigError> {
        let bad = |m: &str| ConfigError::invalid("object_store", m);
        if self.max_rows == 0 || self.max_bytes == 0 || self.max_age.is_zero() {
            return Err(bad("max_rows, max_bytes and max_age must be more than 0"));
        }
        let parsed = self.parse(None)?;
        let t = Template::parse(&parsed.path, exprs)?;
        Ok((!t.is_literal()).then_some(t))
    }

    fn store(&self, ctx: &ActionContext) -> Result<(Arc<dyn ObjectStore>, String), ConfigError> {
        let bad = |m: String| ConfigError::invalid("object_store", m);
        let parsed = self.parse(Some(&ctx.output_dir.join(&ctx.rule)))?;
        let store: Arc<dyn ObjectStore> = match &parsed.target {
            Target::Local(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
                Arc::new(
                    LocalFileSystem::new_with_prefix(dir)
                        .map_err(|e| bad(format!("{}: {e}", dir.display())))?,
                )
            }
            Target::Cloud { kind, base } => kind
                .build(base, &self.options)
                .map_err(|e| bad(format!("{} store {base}: {e}", kind.name())))?,
        };
        Ok((store, parsed.path))
    }
}

/// One staging file: the rows of one future object.
struct Staged {
    /// `<staging dir>/<id>.jsonl`, with `<id>.key` beside it naming the object.
    path: PathBuf,
    /// The object's path under the store's root.
    key: String,
    file: BufWriter<tokio::fs::File>,
    rows: u64,
    bytes: u64,
    opened: Instant,
}

/// A rolled staging file waiting for its upload.
struct Pending {
    path: PathBuf,
    key: String,
    attempts: u32,
    next_attempt: Instant,
}

pub struct ObjectSink {
    store: Arc<dyn ObjectStore>,
    path: Option<Template>,
    /// The literal path prefix when `path` has no templates.
    prefix: String,
    format: Format,
    max_rows: u64,
    max_bytes: u64,
    max_age: Duration,
    staging: PathBuf,
    /// `<rule>-<action>-<owner>`: the start of every object name this sink writes.
    name_prefix: String,
    seq: u64,
    open: HashMap<String, Staged>,
    /// Rolled files, to the uploader task.
    uploads: Option<tokio::sync::mpsc::UnboundedSender<Pending>>,
    uploader: Option<tokio::task::JoinHandle<()>>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> DeliveryError {
    DeliveryError::retryable("io", format!("{what} {}: {e}", path.display()))
}

/// A rendered partition path as object path segments: empty, `.` and `..` segments are
/// dropped, so a value cannot climb out of the prefix.
fn clean_key(path: &str) -> String {
    path.split('/')
        .filter(|s| !s.is_empty() && *s != "." && *s != "..")
        .collect::<Vec<_>>()
        .join("/")
}

impl ObjectSink {
    pub(crate) async fn open(
        c: &ObjectStoreConfig,
        exprs: &mut TemplateExprs,
        ctx: &ActionContext,
    ) -> Result<Self, ConfigError> {
        let path = c.validate(exprs)?;
        let (store, prefix) = c.store(ctx)?;
        let staging = ctx.state_dir.join("staging");
        tokio::fs::create_dir_all(&staging).await.map_err(|e| {
            ConfigError::invalid(
                "object_store",
                format!("cannot create {}: {e}", staging.display()),
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
        let mut sink = Self {
            store,
            path,
            prefix: clean_key(&prefix),
            format: c.format,
            max_rows: c.max_rows,
            max_bytes: c.max_bytes,
            max_age: c.max_age,
            staging,
            name_prefix: format!("{safe}-{}", super::unique_owner()),
            seq: 0,
            open: HashMap::new(),
            uploads: None,
            uploader: None,
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let uploader = Uploader {
            store: sink.store.clone(),
            format: sink.format,
            pending: sink.adopt().await,
            retry: RetryPolicy::default(),
            label: format!("{}/{}", ctx.rule, ctx.label),
        };
        sink.uploads = Some(tx);
        sink.uploader = Some(tokio::spawn(uploader.run(rx)));
        Ok(sink)
    }

    /// The staging files that earlier runs (or stopped sinks of this action) left, to
    /// upload.
    async fn adopt(&self) -> Vec<Pending> {
        let mut pending = Vec::new();
        let Ok(mut entries) = tokio::fs::read_dir(&self.staging).await else {
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
        let mut claimed = claimed().lock().unwrap_or_else(|p| p.into_inner());
        for path in found {
            if !claimed.insert(path.clone()) {
                continue;
            }
            let Ok(key) = std::fs::read_to_string(path.with_extension("key")) else {
                tracing::warn!(file = %path.display(), "staging file without its object name; left alone");
                continue;
            };
            tracing::info!(file = %path.display(), object = %key, "uploading a file an earlier run left");
            pending.push(Pending {
                path,
                key,
                attempts: 0,
                next_attempt: Instant::now(),
            });
        }
        pending
    }

    /// The object path for a delivery (prefix and rendered partition, no file name).
    fn partition(&self, d: &Delivery) -> String {
        match &self.path {
            None => self.prefix.clone(),
            Some(t) => clean_key(&render(t, d)),
        }
    }

    /// Appends every delivery to its partition's staging file, then hands the bytes to the
    /// operating system: a crash of weir after this returns loses none of them. A file
    /// that reaches `max_rows` or `max_bytes` is rolled at once, mid-batch if need be.
    pub(crate) async fn deliver_batch(
        &mut self,
        batch: &[Delivery],
    ) -> Vec<Result<(), DeliveryError>> {
        let mut results: Vec<Result<(), DeliveryError>> = Vec::with_capacity(batch.len());
        // Per open partition, the batch positions written to it and not yet flushed.
        let mut unflushed: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, d) in batch.iter().enumerate() {
            let part = self.partition(d);
            let r = self.append(&part, d).await;
            let ok = r.is_ok();
            results.push(r);
            if !ok {
                continue;
            }
            unflushed.entry(part.clone()).or_default().push(i);
            let full = self
                .open
                .get(&part)
                .is_some_and(|s| s.rows >= self.max_rows || s.bytes >= self.max_bytes);
            if full {
                let written = unflushed.remove(&part).unwrap_or_default();
                self.settle(&part, &written, &mut results).await;
                self.roll(&part).await;
            }
        }
        for (part, written) in unflushed {
            self.settle(&part, &written, &mut results).await;
        }
        results
    }

    /// Flushes a partition's staging file; if that fails, its rows of this batch failed.
    async fn settle(
        &mut self,
        part: &str,
        written: &[usize],
        results: &mut [Result<(), DeliveryError>],
    ) {
        let Some(s) = self.open.get_mut(part) else {
            return;
        };
        if let Err(e) = s.file.flush().await {
            let err = io_err("flush", &s.path, e);
            for &i in written {
                results[i] = Err(err.clone());
            }
        }
    }

    async fn append(&mut self, part: &str, d: &Delivery) -> Result<(), DeliveryError> {
        if !self.open.contains_key(part) {
            self.seq += 1;
            let id = format!("{}-{:06}", self.name_prefix, self.seq);
            let path = self.staging.join(format!("{id}.jsonl"));
            let name = format!("{id}.{}", self.format.extension());
            let key = if part.is_empty() {
                name
            } else {
                format!("{part}/{name}")
            };
            claimed()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(path.clone());
            let key_path = path.with_extension("key");
            tokio::fs::write(&key_path, &key)
                .await
                .map_err(|e| io_err("write", &key_path, e))?;
            let file = tokio::fs::File::create(&path)
                .await
                .map_err(|e| io_err("create", &path, e))?;
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
            .map_err(|e| io_err("write", &s.path, e))?;
        s.file
            .write_all(b"\n")
            .await
            .map_err(|e| io_err("write", &s.path, e))?;
        s.rows += 1;
        s.bytes += d.payload.len() as u64 + 1;
        Ok(())
    }

    /// Closes a partition's staging file and uploads it.
    async fn roll(&mut self, part: &str) {
        let Some(mut s) = self.open.remove(part) else {
            return;
        };
        if let Err(e) = s.file.flush().await {
            tracing::warn!(file = %s.path.display(), error = %e, "cannot flush a staging file");
        }
        if let Err(e) = s.file.get_ref().sync_all().await {
            tracing::warn!(file = %s.path.display(), error = %e, "cannot sync a staging file");
        }
        let p = Pending {
            path: s.path,
            key: s.key,
            attempts: 0,
            next_attempt: Instant::now(),
        };
        if let Some(tx) = &self.uploads
            && tx.send(p).is_err()
        {
            tracing::error!("the uploader stopped early; the file waits for the next start");
        }
    }

    /// Periodic: roll files past their age.
    pub(crate) async fn tick(&mut self) -> Result<(), DeliveryError> {
        let old: Vec<String> = self
            .open
            .iter()
            .filter(|(_, s)| s.opened.elapsed() >= self.max_age)
            .map(|(k, _)| k.clone())
            .collect();
        for part in old {
            self.roll(&part).await;
        }
        Ok(())
    }

    /// Rolls every open file and waits for the uploader to try every pending upload once
    /// more; what still fails stays on disk for the next start.
    pub(crate) async fn close(&mut self) -> Result<(), DeliveryError> {
        let parts: Vec<String> = self.open.keys().cloned().collect();
        for part in parts {
            self.roll(&part).await;
        }
        self.uploads = None;
        if let Some(h) = self.uploader.take() {
            let _ = h.await;
        }
        Ok(())
    }
}

/// Uploads rolled files in the background, so that a slow or absent store never holds up
/// the action's deliveries (they go to staging files meanwhile).
struct Uploader {
    store: Arc<dyn ObjectStore>,
    format: Format,
    pending: Vec<Pending>,
    retry: RetryPolicy,
    label: String,
}

impl Uploader {
    async fn run(mut self, mut rx: tokio::sync::mpsc::UnboundedReceiver<Pending>) {
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
        let mut claimed = claimed().lock().unwrap_or_else(|p| p.into_inner());
        for p in &self.pending {
            claimed.remove(&p.path);
        }
        if !self.pending.is_empty() {
            tracing::warn!(action = %self.label, files = self.pending.len(), "stopping with files not uploaded; they are uploaded at the next start");
        }
    }

    /// Uploads the rolled files whose turn it is, oldest first; failures wait with backoff.
    async fn upload_due(&mut self) {
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
                    claimed()
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&done.path);
                    tracing::debug!(object = %done.key, "object written");
                }
                Err(e) => {
                    let p = &mut self.pending[i];
                    p.attempts += 1;
                    p.next_attempt = Instant::now() + self.retry.backoff(p.attempts);
                    if p.attempts == 1 || p.attempts.is_multiple_of(10) {
                        tracing::warn!(action = %self.label, object = %p.key, attempts = p.attempts, error = %e, "upload failed; the file waits on disk and is retried");
                    }
                    i += 1;
                }
            }
        }
    }
}

/// Converts a staging file to the target format and uploads it with a multipart upload.
async fn upload(
    store: &dyn ObjectStore,
    staged: &Path,
    key: &str,
    format: Format,
) -> Result<(), DeliveryError> {
    let data = tokio::fs::read(staged)
        .await
        .map_err(|e| io_err("read", staged, e))?;
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
                .map_err(|e| DeliveryError::fatal("parquet", e.to_string()))??
        }
    };
    let location = ObjectPath::parse(key)
        .map_err(|e| DeliveryError::fatal("invalid_path", format!("object path '{key}': {e}")))?;
    let upload = store
        .put_multipart(&location)
        .await
        .map_err(|e| store_err(key, e))?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, 8 * 1024 * 1024);
    w.put(body);
    w.finish().await.map_err(|e| store_err(key, e))?;
    Ok(())
}

fn store_err(key: &str, e: object_store::Error) -> DeliveryError {
    DeliveryError::retryable("store", format!("writing {key}: {e}"))
}

/// JSON lines to a Parquet file: the schema is inferred from all the rows. Public for the
/// encoding benchmark.
pub fn to_parquet(lines: &[u8]) -> Result<bytes::Bytes, DeliveryError> {
    use weir_engine::arrow::json::ReaderBuilder;
    use weir_engine::arrow::json::reader::infer_json_schema_from_seekable;
    let fail = |m: String| DeliveryError::fatal("parquet", m);
    let (schema, _) = infer_json_schema_from_seekable(std::io::Cursor::new(lines), None)
        .map_err(|e| fail(format!("inferring the schema: {e}")))?;
    let schema = Arc::new(schema);
    let reader = ReaderBuilder::new(schema.clone())
        .with_batch_size(64 * 1024)
        .with_coerce_primitive(true)
        .build(std::io::Cursor::new(lines))
        .map_err(|e| fail(format!("reading rows: {e}")))?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut out = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut out, schema, Some(props))
        .map_err(|e| fail(format!("starting the file: {e}")))?;
    for batch in reader {
        let batch = batch.map_err(|e| fail(format!("reading rows: {e}")))?;
        writer
            .write(&batch)
            .map_err(|e| fail(format!("writing rows: {e}")))?;
    }
    writer
        .close()
        .map_err(|e| fail(format!("finishing the file: {e}")))?;
    Ok(bytes::Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: serde_json::Value) -> ObjectStoreConfig {
        serde_json::from_value(json).expect("parses")
    }

    #[test]
    fn urls_options_and_templates_are_checked() {
        let mut exprs = TemplateExprs::default();
        let c = config(
            serde_json::json!({"url": "s3://lake/raw/facility=${topic(3)}/", "format": "parquet",
            "options": {"endpoint": "http://127.0.0.1:9000", "allow_http": "true", "region": "us-east-1"}}),
        );
        assert!(c.validate(&mut exprs).unwrap().is_some());
        assert_eq!(exprs.as_slice().len(), 1);
        assert!(
            config(serde_json::json!({"url": "file:///tmp/x"}))
                .validate(&mut TemplateExprs::default())
                .unwrap()
                .is_none()
        );
        for (json, needle) in [
            (
                serde_json::json!({"url": "ftp://b/p"}),
                "scheme 'ftp' is not supported",
            ),
            (
                serde_json::json!({"url": "gs://b/p", "options": {"region": "x"}}),
                "unknown Google Cloud Storage option 'region'",
            ),
            (
                serde_json::json!({"url": "file://rel/dir"}),
                "absolute path",
            ),
            (
                serde_json::json!({"url": "s3://${topic(1)}/p"}),
                "bucket must be named literally",
            ),
            (
                serde_json::json!({"url": "s3://b/p", "options": {"colour": "red"}}),
                "unknown S3 option 'colour'",
            ),
            (
                serde_json::json!({"url": "file:///tmp", "options": {"region": "x"}}),
                "does not apply",
            ),
            (
                serde_json::json!({"url": "file:///tmp", "max_rows": 0}),
                "more than 0",
            ),
        ] {
            let err = config(json)
                .validate(&mut TemplateExprs::default())
                .unwrap_err();
            assert!(
                err.to_string().contains(needle),
                "{err} should mention {needle}"
            );
        }
    }

    #[test]
    fn partition_values_cannot_climb_out_of_the_prefix() {
        assert_eq!(clean_key("a/../b//./c/"), "a/b/c");
        assert_eq!(clean_key(""), "");
    }

    #[test]
    fn json_lines_become_parquet_with_an_inferred_schema() {
        let lines = b"{\"a\":1,\"b\":\"x\",\"n\":{\"c\":1.5}}\n{\"a\":2,\"b\":null}\n";
        let bytes = to_parquet(lines).unwrap();
        assert_eq!(&bytes[..4], b"PAR1");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        let batches: Vec<_> = reader.map(Result::unwrap).collect();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 2);
        let schema = batches[0].schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["a", "b", "n"]);
    }
}
