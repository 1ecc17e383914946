//! The running object-store sink: each output appended to its partition's staging file,
//! files rolled by size and age and handed to the uploader.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use tokio::sync::mpsc;
use weir_engine::template::Template;

use super::format::Format;
use super::staging::{Staging, clean_key};
use super::store::{StoreError, Target};
use super::upload::{self, Pending, Uploader};
use crate::delivery::{ConfigError, Delivery, Outcome, RetryPolicy, Sink, SinkContext};

/// An object-store action, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub(super) target: Target,
    pub(super) options: BTreeMap<String, String>,
    /// The path under the store's root when it has templates.
    pub(super) path: Option<Template>,
    /// The literal path under the store's root when it has none.
    pub(super) prefix: String,
    pub(super) format: Format,
    pub(super) max_rows: u64,
    pub(super) max_bytes: u64,
    pub(super) max_age: Duration,
}

pub struct ObjectStoreSink {
    settings: Settings,
    /// The literal path under the store's root, cleaned, when the path has no templates.
    prefix: String,
    staging: Staging,
    /// Rolled files, to the uploader task.
    uploads: Option<mpsc::UnboundedSender<Pending>>,
    uploader: Option<tokio::task::JoinHandle<()>>,
}

impl Sink for ObjectStoreSink {
    type Settings = Settings;
    /// Staging files outlive a run: those an earlier run left are uploaded at once.
    const KEEPS_STATE: bool = true;

    async fn build(settings: &Settings, ctx: &SinkContext) -> Result<Self, ConfigError> {
        let bad = |m: String| ConfigError::invalid("object_store", m);
        let store = open_store(settings, ctx).map_err(|e| bad(e.to_string()))?;
        let staging = Staging::open(
            ctx.state_dir.join("staging"),
            settings.format,
            &ctx.rule,
            &ctx.label,
        )
        .await
        .map_err(|e| {
            bad(format!(
                "cannot create {}: {e}",
                ctx.state_dir.join("staging").display()
            ))
        })?;
        let (tx, rx) = mpsc::unbounded_channel();
        let uploader = Uploader {
            store,
            format: settings.format,
            pending: upload::adopt(staging.dir()).await,
            retry: RetryPolicy::default(),
            metrics: ctx.metrics.clone(),
            rule: ctx.rule.clone(),
            label: ctx.label.clone(),
        };
        Ok(Self {
            prefix: clean_key(&settings.prefix),
            settings: settings.clone(),
            staging,
            uploads: Some(tx),
            uploader: Some(tokio::spawn(uploader.run(rx))),
        })
    }

    /// Appends every delivery to its partition's staging file, then hands the bytes to the
    /// operating system: a crash of weir after this returns loses none of them. A file
    /// that reaches `max_rows` or `max_bytes` is rolled at once, mid-batch if need be.
    async fn deliver_batch(&mut self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(batch.len());
        // Per open partition, the batch positions written to it and not yet flushed.
        let mut unflushed: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, d) in batch.iter().enumerate() {
            let part = self.partition(d);
            if let Err(o) = self.staging.append(&part, d).await {
                outcomes.push(o);
                continue;
            }
            outcomes.push(Outcome::Delivered);
            unflushed.entry(part.clone()).or_default().push(i);
            let s = &self.settings;
            let full = self
                .staging
                .get(&part)
                .is_some_and(|f| f.rows >= s.max_rows || f.bytes >= s.max_bytes);
            if full {
                let written = unflushed.remove(&part).unwrap_or_default();
                self.settle(&part, &written, &mut outcomes).await;
                self.roll(&part).await;
            }
        }
        for (part, written) in unflushed {
            self.settle(&part, &written, &mut outcomes).await;
        }
        outcomes
    }

    fn tick_interval(&self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }

    /// Rolls the files past their age.
    async fn tick(&mut self) {
        for part in self.staging.older_than(self.settings.max_age) {
            self.roll(&part).await;
        }
    }

    /// Rolls every open file and waits for the uploader to try every pending upload once
    /// more; what still fails stays on disk for the next start.
    async fn close(&mut self) {
        for part in self.staging.partitions() {
            self.roll(&part).await;
        }
        self.uploads = None;
        if let Some(h) = self.uploader.take() {
            let _ = h.await;
        }
    }
}

impl ObjectStoreSink {
    /// The object path for a delivery (prefix and rendered partition, no file name).
    fn partition(&self, d: &Delivery) -> String {
        match &self.settings.path {
            None => self.prefix.clone(),
            Some(t) => clean_key(&d.render(t)),
        }
    }

    /// Flushes a partition's staging file; if that fails, its rows of this batch failed.
    async fn settle(&mut self, part: &str, written: &[usize], outcomes: &mut [Outcome]) {
        if let Err(o) = self.staging.flush(part).await {
            for &i in written {
                outcomes[i] = o.clone();
            }
        }
    }

    /// Closes a partition's staging file and hands it to the uploader.
    async fn roll(&mut self, part: &str) {
        let Some(s) = self.staging.roll(part).await else {
            return;
        };
        if let Some(tx) = &self.uploads
            && tx.send(Pending::new(s.path, s.key)).is_err()
        {
            tracing::error!("the uploader stopped early; the file waits for the next start");
        }
    }
}

/// The store the action writes to.
fn open_store(settings: &Settings, ctx: &SinkContext) -> Result<Arc<dyn ObjectStore>, StoreError> {
    let local = |dir: &std::path::Path| -> Result<Arc<dyn ObjectStore>, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            dir: dir.to_owned(),
            source,
        })?;
        Ok(Arc::new(LocalFileSystem::new_with_prefix(dir).map_err(
            |source| StoreError::Local {
                dir: dir.to_owned(),
                source,
            },
        )?))
    };
    match &settings.target {
        Target::OutputDir => local(&ctx.output_dir.join(&ctx.rule)),
        Target::Local(dir) => local(dir),
        Target::Cloud { kind, base } => kind.build(
            base,
            &settings.options,
            ctx.policy.allow_ambient_credentials,
        ),
    }
}
