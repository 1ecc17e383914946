//! The store of a fleet (`--rule-store postgres://...`): several weir replicas keep their
//! objects in one PostgreSQL database, in one table (`weir_objects`: kind, name, the object
//! as JSON, its version). A trigger on the table announces every change (`NOTIFY
//! weir_changes, '<kind>/<name>'`), whoever made it; each replica listens and brings its
//! running pipeline in step within moments, without a restart. A replica that lost the
//! announcements (its listening connection dropped) compares everything once it is back,
//! and every 30 s in any case.
//!
//! A write names the version it replaces: `UPDATE ... WHERE version = <it>` (or an insert
//! that does nothing when the row exists), so a replica whose copy was stale changes no row
//! and is told [`StoreError::Conflict`].

use std::time::Duration;

use anyhow::Context;
use futures_util::future::BoxFuture;
use serde_json::value::RawValue;
use tokio::sync::broadcast;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::backend::{Backend, Change, Expect, Kind, Object, StoreError};
use crate::fleet::pg::{Database, Target, notifications};

/// The schema, made once by whichever replica comes first (the advisory lock keeps
/// replicas starting together from racing on it).
const SCHEMA: &str = "
SELECT pg_advisory_xact_lock(7265697201);
CREATE TABLE IF NOT EXISTS weir_objects (
    kind text NOT NULL,
    name text NOT NULL,
    body jsonb NOT NULL,
    version bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);
CREATE OR REPLACE FUNCTION weir_objects_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('weir_changes', COALESCE(NEW.kind, OLD.kind) || '/' || COALESCE(NEW.name, OLD.name));
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS weir_objects_changed ON weir_objects;
CREATE TRIGGER weir_objects_changed AFTER INSERT OR UPDATE OR DELETE ON weir_objects
    FOR EACH ROW EXECUTE FUNCTION weir_objects_notify();
";

/// How long opening waits for the feed to listen.
const LISTEN_WAIT: Duration = Duration::from_secs(10);

/// How often a replica compares everything, announcements or not.
const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// The database, for reads and writes. Its connection is re-established when it drops.
pub struct Postgres {
    db: Database,
    feed: broadcast::Sender<Change>,
}

fn row(r: &tokio_postgres::Row) -> anyhow::Result<Object> {
    let body: String = r.get(1);
    Ok(Object {
        name: r.get(0),
        version: r.get::<_, i64>(2) as u64,
        body: RawValue::from_string(body).context("a row's body is not JSON")?,
    })
}

impl Postgres {
    /// Connects, makes the schema if it is not there, and listens for changes until
    /// `stop`.
    pub async fn open(url: &str, stop: CancellationToken) -> anyhow::Result<Self> {
        let db = Database::open(url, "--rule-store", "the rule store").await?;
        {
            let mut client = db.client().await?;
            let tx = client.transaction().await?;
            tx.batch_execute(SCHEMA)
                .await
                .context("cannot create the rule store's table")?;
            tx.commit().await?;
        }
        let feed = broadcast::channel(super::FEED_CAPACITY).0;
        // Opened once the feed is live: changes made from then on are announced one by
        // one (those before are found by comparing, as after any lost connection).
        let (listening, live) = tokio::sync::oneshot::channel();
        listen(db.target().clone(), feed.clone(), stop, listening);
        if tokio::time::timeout(LISTEN_WAIT, live).await.is_err() {
            tracing::warn!(store = %db.shown(), "not listening to the rule store's changes yet; trying on");
        }
        Ok(Self { db, feed })
    }

    /// How to reach the database, for the connections of others (the fleet's).
    pub fn target(&self) -> Target {
        self.db.target().clone()
    }

    /// The URL as logs may show it.
    pub fn shown(&self) -> &str {
        self.db.shown()
    }

    async fn client(&self) -> anyhow::Result<tokio::sync::MappedMutexGuard<'_, Client>> {
        self.db.client().await
    }

    async fn list_kind(&self, kind: Kind) -> anyhow::Result<Vec<Object>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT name, body::text, version FROM weir_objects WHERE kind = $1 ORDER BY name",
                &[&kind.as_str()],
            )
            .await
            .context("reading the rule store")?;
        rows.iter().map(row).collect()
    }

    async fn versions_of(&self, kind: Kind) -> anyhow::Result<Vec<(String, u64)>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT name, version FROM weir_objects WHERE kind = $1",
                &[&kind.as_str()],
            )
            .await
            .context("reading the rule store")?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    async fn get_one(&self, kind: Kind, name: &str) -> anyhow::Result<Option<Object>> {
        let client = self.client().await?;
        let found = client
            .query_opt(
                "SELECT name, body::text, version FROM weir_objects WHERE kind = $1 AND name = $2",
                &[&kind.as_str(), &name],
            )
            .await
            .context("reading the rule store")?;
        found.as_ref().map(row).transpose()
    }

    async fn put_one(
        &self,
        kind: Kind,
        name: &str,
        body: &RawValue,
        expect: Expect,
    ) -> Result<(), StoreError> {
        let client = self.client().await?;
        let next = expect.next() as i64;
        let body = body.get();
        let changed = match expect {
            Expect::Absent => {
                client
                    .execute(
                        "INSERT INTO weir_objects (kind, name, body, version) VALUES ($1, $2, $3::text::jsonb, $4::bigint) \
                         ON CONFLICT (kind, name) DO NOTHING",
                        &[&kind.as_str(), &name, &body, &next],
                    )
                    .await
            }
            Expect::Version(v) => {
                client
                    .execute(
                        "UPDATE weir_objects SET body = $3::text::jsonb, version = $4::bigint, updated_at = now() \
                         WHERE kind = $1 AND name = $2 AND version = $5::bigint",
                        &[&kind.as_str(), &name, &body, &next, &(v as i64)],
                    )
                    .await
            }
        }
        .context("writing the rule store")?;
        one_row(changed, kind, name)
    }

    async fn delete_one(&self, kind: Kind, name: &str, version: u64) -> Result<(), StoreError> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "DELETE FROM weir_objects WHERE kind = $1 AND name = $2 AND version = $3::bigint",
                &[&kind.as_str(), &name, &(version as i64)],
            )
            .await
            .context("writing the rule store")?;
        one_row(changed, kind, name)
    }
}

/// A write that changed no row met another version than it replaces.
fn one_row(changed: u64, kind: Kind, name: &str) -> Result<(), StoreError> {
    if changed == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            kind,
            name: name.to_owned(),
        })
    }
}

impl Backend for Postgres {
    fn list(&self, kind: Kind) -> BoxFuture<'_, anyhow::Result<Vec<Object>>> {
        Box::pin(self.list_kind(kind))
    }

    fn versions(&self, kind: Kind) -> BoxFuture<'_, anyhow::Result<Vec<(String, u64)>>> {
        Box::pin(self.versions_of(kind))
    }

    fn get<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
    ) -> BoxFuture<'a, anyhow::Result<Option<Object>>> {
        Box::pin(self.get_one(kind, name))
    }

    fn put<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
        body: &'a RawValue,
        expect: Expect,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.put_one(kind, name, body, expect))
    }

    fn delete<'a>(
        &'a self,
        kind: Kind,
        name: &'a str,
        version: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.delete_one(kind, name, version))
    }

    fn feed(&self) -> &broadcast::Sender<Change> {
        &self.feed
    }
}

/// Listens for the store's announcements until `stop`, and announces each change on
/// `feed`, and `All` whenever announcements may have been missed (at the start, after the
/// listening connection was lost, every 30 s). `listening` is told when it first listens.
fn listen(
    target: Target,
    feed: broadcast::Sender<Change>,
    stop: CancellationToken,
    listening: tokio::sync::oneshot::Sender<()>,
) {
    let mut listening = Some(listening);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut is_listening = false;
            let listened = async {
                let (client, connection) = target.connect().await?;
                let (mut notes, driver) =
                    notifications(connection, "the rule store's listening connection");
                client.batch_execute("LISTEN weir_changes").await?;
                is_listening = true;
                if let Some(l) = listening.take() {
                    let _ = l.send(());
                }
                // Listening: whatever changed before now is found by comparing.
                let _ = feed.send(Change::All);
                let mut resync = tokio::time::interval(RESYNC_EVERY);
                resync.tick().await;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = resync.tick() => {
                            let _ = feed.send(Change::All);
                        }
                        note = notes.recv() => {
                            let Some(note) = note else { break };
                            let change = note
                                .split_once('/')
                                .and_then(|(k, n)| Some(Change::One(Kind::parse(k)?, n.to_owned())));
                            if let Some(c) = change {
                                let _ = feed.send(c);
                            }
                        }
                    }
                }
                driver.abort();
                Ok::<(), tokio_postgres::Error>(())
            };
            if let Err(e) = listened.await {
                tracing::warn!(error = %e, "cannot listen to the rule store; trying again");
            }
            if stop.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            // Backing off grows only while connecting fails.
            backoff = if is_listening {
                Duration::from_millis(100)
            } else {
                (backoff * 2).min(Duration::from_secs(5))
            };
        }
    });
}
