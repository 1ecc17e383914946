//! Shadows in the fleet's PostgreSQL (`--rule-store postgres://...`): one table,
//! `weir_shadows(thing, shadow, version, doc, updated_at)`, beside the rules. Every replica
//! serves every shadow; a batch's writes are one transaction, each an `UPDATE ... WHERE
//! version = <loaded>` (and the same liveness) or an insert that does nothing when the row
//! exists, so two replicas cannot both accept version N: the one that lost commits nothing
//! and runs its batch again. A write over a live shadow also needs it still live (a delete
//! keeps the version); one over a tombstone needs only its version, since a tombstone
//! changes only by being made again, one version on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures_util::future::BoxFuture;
use tokio_postgres::Client;

use super::{Expect, ShadowBackend, Write};
use crate::fleet::pg::Database;
use crate::shadow::document::{Record, TOMBSTONE_SECS};
use crate::shadow::topic::ShadowId;

const SCHEMA: &str = "
SELECT pg_advisory_xact_lock(7265697202);
CREATE TABLE IF NOT EXISTS weir_shadows (
    thing text NOT NULL,
    shadow text NOT NULL,
    version bigint NOT NULL,
    doc jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (thing, shadow)
);
";

pub struct Postgres {
    db: Database,
    url: String,
    /// The thread that reads for [`ShadowBackend::load_now`], once one was asked for.
    reader: std::sync::OnceLock<std::sync::mpsc::SyncSender<Ask>>,
    /// Rows as of the last count, with this replica's inserts since.
    count: AtomicU64,
    /// The table's size as of the last count.
    bytes: AtomicU64,
}

fn name(id: &ShadowId) -> &str {
    id.name.as_deref().unwrap_or("")
}

/// The table's rows and bytes.
async fn count(client: &Client) -> anyhow::Result<(u64, u64)> {
    let row = client
        .query_one(
            "SELECT count(*), pg_total_relation_size('weir_shadows') FROM weir_shadows",
            &[],
        )
        .await?;
    Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
}

impl Postgres {
    /// Connects and makes the table if it is not there.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let db = Database::open(url, "--rule-store", "the shadow store").await?;
        let (n, bytes) = {
            let mut client = db.client().await?;
            let tx = client.transaction().await?;
            tx.batch_execute(SCHEMA)
                .await
                .context("cannot create the shadow store's table")?;
            tx.commit().await?;
            count(&client).await?
        };
        Ok(Self {
            db,
            url: url.to_owned(),
            reader: Default::default(),
            count: AtomicU64::new(n),
            bytes: AtomicU64::new(bytes),
        })
    }

    pub(super) async fn client(&self) -> anyhow::Result<tokio::sync::MappedMutexGuard<'_, Client>> {
        self.db.client().await
    }

    async fn load_all(&self, ids: &[ShadowId]) -> anyhow::Result<HashMap<ShadowId, Record>> {
        let things: Vec<&str> = ids.iter().map(|i| i.thing.as_str()).collect();
        let names: Vec<&str> = ids.iter().map(name).collect();
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT s.thing, s.shadow, s.doc::text, s.version FROM weir_shadows s \
                 JOIN unnest($1::text[], $2::text[]) AS k(thing, shadow) \
                 ON s.thing = k.thing AND s.shadow = k.shadow",
                &[&things, &names],
            )
            .await
            .context("reading the shadow store")?;
        let mut found = HashMap::new();
        for r in rows {
            let (thing, shadow, doc): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            let id = ShadowId {
                thing,
                name: (!shadow.is_empty()).then_some(shadow),
            };
            let record = serde_json::from_str::<Record>(&doc).unwrap_or_else(|e| {
                tracing::error!(shadow = %id, error = %e, "a stored shadow cannot be read; it is treated as absent");
                // Read as a long-expired tombstone of the row's version: absent to the
                // requests, and a write over it is guarded by that version alone.
                Record {
                    version: r.get::<_, i64>(3) as u64,
                    deleted_at: Some(0),
                    ..Record::default()
                }
            });
            found.insert(id, record);
        }
        Ok(found)
    }

    async fn commit_all(&self, writes: &[Write]) -> anyhow::Result<bool> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut added = 0;
        for w in writes {
            let doc = serde_json::to_string(&w.record)?;
            let version = w.record.version as i64;
            let changed = match w.expect {
                Expect::Absent => {
                    added += 1;
                    tx.execute(
                        "INSERT INTO weir_shadows (thing, shadow, version, doc) \
                         VALUES ($1, $2, $3, $4::text::jsonb) ON CONFLICT DO NOTHING",
                        &[&w.id.thing, &name(&w.id), &version, &doc],
                    )
                    .await?
                }
                Expect::Was { version: old, live } => {
                    tx.execute(
                        "UPDATE weir_shadows SET version = $3, doc = $4::text::jsonb, updated_at = now() \
                         WHERE thing = $1 AND shadow = $2 AND version = $5 \
                         AND ($6 OR NOT (doc ? 'deleted_at'))",
                        &[&w.id.thing, &name(&w.id), &version, &doc, &(old as i64), &!live],
                    )
                    .await?
                }
            };
            if changed == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        tx.commit()
            .await
            .context("cannot commit the shadow store")?;
        self.count.fetch_add(added, Ordering::Relaxed);
        Ok(true)
    }

    async fn list_names(
        &self,
        thing: &str,
        after: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<(Vec<String>, bool)> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT shadow FROM weir_shadows WHERE thing = $1 AND shadow COLLATE \"C\" > $2 \
                 AND NOT (doc ? 'deleted_at') ORDER BY shadow COLLATE \"C\" LIMIT $3",
                &[&thing, &after.unwrap_or(""), &(limit as i64 + 1)],
            )
            .await
            .context("reading the shadow store")?;
        let mut names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let more = names.len() > limit;
        names.truncate(limit);
        Ok((names, more))
    }

    async fn sweep_old(&self, now: u64) -> anyhow::Result<u64> {
        let client = self.client().await?;
        let before = now.saturating_sub(TOMBSTONE_SECS) as i64;
        let n = client
            .execute(
                "DELETE FROM weir_shadows WHERE doc ? 'deleted_at' \
                 AND (doc->>'deleted_at')::bigint <= $1",
                &[&before],
            )
            .await
            .context("sweeping the shadow store")?;
        let (rows, bytes) = count(&client).await?;
        self.count.store(rows, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
        Ok(n)
    }
}

/// A read asked of the reader thread, and where its answer goes.
struct Ask {
    ids: Vec<ShadowId>,
    reply: std::sync::mpsc::Sender<anyhow::Result<HashMap<ShadowId, Record>>>,
}

/// The longest a rule waits for the reader thread before its batch fails.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads for rules on a thread of its own, with a runtime and a connection of its own:
/// a rule evaluated on a thread of the service's runtime (a `POST /v1/test`) can then
/// block on it without waiting for that runtime, which it holds.
fn start_reader(url: String) -> std::sync::mpsc::SyncSender<Ask> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Ask>(64);
    let spawned = std::thread::Builder::new()
        .name("weir-shadow-reader".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "the shadow reader cannot start a runtime");
                    return;
                }
            };
            let mut store: Option<Postgres> = None;
            while let Ok(ask) = rx.recv() {
                let answer = runtime.block_on(async {
                    let s = match store.take() {
                        Some(s) => s,
                        None => Postgres::open(&url).await?,
                    };
                    let found = s.load_all(&ask.ids).await;
                    store = Some(s);
                    found
                });
                let _ = ask.reply.send(answer);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "the shadow reader's thread cannot start");
    }
    tx
}

impl ShadowBackend for Postgres {
    fn load<'a>(
        &'a self,
        ids: &'a [ShadowId],
    ) -> BoxFuture<'a, anyhow::Result<HashMap<ShadowId, Record>>> {
        Box::pin(self.load_all(ids))
    }

    fn load_now(&self, ids: &[ShadowId]) -> anyhow::Result<HashMap<ShadowId, Record>> {
        let reader = self.reader.get_or_init(|| start_reader(self.url.clone()));
        let (reply, answer) = std::sync::mpsc::channel();
        reader
            .send(Ask {
                ids: ids.to_vec(),
                reply,
            })
            .map_err(|_| anyhow::anyhow!("the shadow reader stopped"))?;
        answer.recv_timeout(READ_TIMEOUT).map_err(|_| {
            anyhow::anyhow!("the shadow store did not answer within {READ_TIMEOUT:?}")
        })?
    }

    fn commit<'a>(&'a self, writes: &'a [Write]) -> BoxFuture<'a, anyhow::Result<bool>> {
        Box::pin(self.commit_all(writes))
    }

    fn list<'a>(
        &'a self,
        thing: &'a str,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, anyhow::Result<(Vec<String>, bool)>> {
        Box::pin(self.list_names(thing, after, limit))
    }

    fn sweep(&self, now: u64) -> BoxFuture<'_, anyhow::Result<u64>> {
        Box::pin(self.sweep_old(now))
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}
