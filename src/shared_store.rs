//! The shared store of a fleet (`--rule-store postgres://...`): several weir replicas
//! keep their rules, named connections and API tokens in one PostgreSQL database, in one
//! table (`weir_objects`: kind, name, the object as JSON, its version). A trigger on the
//! table announces every change (`NOTIFY weir_changes, '<kind>/<name>'`), whoever made
//! it; each replica listens and brings its running pipeline in step within moments,
//! without a restart. A replica that lost the announcements (its listening connection
//! dropped) compares everything once it is back, and every 30 s in any case.
//!
//! The table `weir_members` is the fleet's roll of replicas reading one shared
//! subscription: see [`crate::fleet`].
//!
//! Changes are optimistic: a write names the version it replaces (none for a new
//! object) and is refused when the database holds another, so two replicas changing one
//! rule at once cannot lose either change unseen.

use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::pg::Target;

/// What is kept: one kind per store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Rule,
    Connection,
    Token,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rule => "rule",
            Self::Connection => "connection",
            Self::Token => "token",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "rule" => Some(Self::Rule),
            "connection" => Some(Self::Connection),
            "token" => Some(Self::Token),
            _ => None,
        }
    }
}

/// One stored object: its name, itself as JSON text, and its version (1 when created, one
/// more per change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub name: String,
    pub body: String,
    pub version: u64,
}

/// What a replica hears from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This object changed (or went).
    One(Kind, String),
    /// Announcements may have been missed: compare everything.
    All,
}

/// A write the database refused: the object is not at the version the write replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conflict;

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
CREATE TABLE IF NOT EXISTS weir_members (
    client_id text PRIMARY KEY,
    share_group text NOT NULL,
    lock_key bigint NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now()
);
";

/// How often a replica compares everything, announcements or not.
const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// The database, for reads and writes. Its connection is re-established when it drops.
pub struct SharedStore {
    target: Target,
    /// The URL without its password, for errors.
    shown: String,
    client: tokio::sync::Mutex<Option<Client>>,
}

/// The URL as logs may show it: without a password.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:<redacted>{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

async fn connect(target: &Target, shown: &str) -> anyhow::Result<Client> {
    let (client, connection) = target
        .connect()
        .await
        .with_context(|| format!("cannot connect to the rule store {shown}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "the rule store's connection dropped");
        }
    });
    Ok(client)
}

impl SharedStore {
    /// How to reach the database, for the connections of others (listening, the fleet).
    pub fn target(&self) -> Target {
        self.target.clone()
    }

    /// Connects and makes the schema if it is not there.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        let target = Target::parse(url).context("--rule-store")?;
        let shown = redact_url(url);
        let mut client = connect(&target, &shown).await?;
        let tx = client.transaction().await?;
        tx.batch_execute(SCHEMA)
            .await
            .context("cannot create the rule store's table")?;
        tx.commit().await?;
        Ok(Self {
            target,
            shown,
            client: tokio::sync::Mutex::new(Some(client)),
        })
    }

    /// The client, connected again if the connection dropped.
    async fn client(&self) -> anyhow::Result<tokio::sync::MappedMutexGuard<'_, Client>> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(connect(&self.target, &self.shown).await?);
        }
        Ok(tokio::sync::MutexGuard::map(guard, |c| {
            c.as_mut().expect("connected above")
        }))
    }

    /// Every object of a kind.
    pub async fn all(&self, kind: Kind) -> anyhow::Result<Vec<Row>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT name, body::text, version FROM weir_objects WHERE kind = $1 ORDER BY name",
                &[&kind.as_str()],
            )
            .await
            .context("reading the rule store")?;
        Ok(rows
            .iter()
            .map(|r| Row {
                name: r.get(0),
                body: r.get(1),
                version: r.get::<_, i64>(2) as u64,
            })
            .collect())
    }

    /// The version of every object of a kind, by name.
    pub async fn versions(&self, kind: Kind) -> anyhow::Result<Vec<(String, u64)>> {
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

    pub async fn get(&self, kind: Kind, name: &str) -> anyhow::Result<Option<Row>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT name, body::text, version FROM weir_objects WHERE kind = $1 AND name = $2",
                &[&kind.as_str(), &name],
            )
            .await
            .context("reading the rule store")?;
        Ok(row.map(|r| Row {
            name: r.get(0),
            body: r.get(1),
            version: r.get::<_, i64>(2) as u64,
        }))
    }

    /// Writes an object as `version`, over version `version - 1` (none when `version` is
    /// 1); `Conflict` when the database holds another.
    pub async fn put(
        &self,
        kind: Kind,
        name: &str,
        body: &str,
        version: u64,
    ) -> anyhow::Result<Result<(), Conflict>> {
        let client = self.client().await?;
        let v = version as i64;
        let changed = if version <= 1 {
            client
                .execute(
                    "INSERT INTO weir_objects (kind, name, body, version) VALUES ($1, $2, $3::text::jsonb, $4::bigint) \
                     ON CONFLICT (kind, name) DO NOTHING",
                    &[&kind.as_str(), &name, &body, &v],
                )
                .await
        } else {
            client
                .execute(
                    "UPDATE weir_objects SET body = $3::text::jsonb, version = $4::bigint, updated_at = now() \
                     WHERE kind = $1 AND name = $2 AND version = $4::bigint - 1",
                    &[&kind.as_str(), &name, &body, &v],
                )
                .await
        }
        .context("writing the rule store")?;
        Ok(if changed == 1 { Ok(()) } else { Err(Conflict) })
    }

    /// Writes an object whatever version it is at (the last writer wins: connections and
    /// tokens, which have no versions of their own); returns its new version.
    pub async fn upsert(&self, kind: Kind, name: &str, body: &str) -> anyhow::Result<u64> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "INSERT INTO weir_objects (kind, name, body, version) VALUES ($1, $2, $3::text::jsonb, 1) \
                 ON CONFLICT (kind, name) DO UPDATE SET body = EXCLUDED.body, \
                 version = weir_objects.version + 1, updated_at = now() RETURNING version",
                &[&kind.as_str(), &name, &body],
            )
            .await
            .context("writing the rule store")?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Removes an object whatever its version; whether there was one.
    pub async fn delete_any(&self, kind: Kind, name: &str) -> anyhow::Result<bool> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "DELETE FROM weir_objects WHERE kind = $1 AND name = $2",
                &[&kind.as_str(), &name],
            )
            .await
            .context("writing the rule store")?;
        Ok(changed == 1)
    }

    /// Removes an object at `version`; `Conflict` when the database holds another (or
    /// none).
    pub async fn remove(
        &self,
        kind: Kind,
        name: &str,
        version: u64,
    ) -> anyhow::Result<Result<(), Conflict>> {
        let client = self.client().await?;
        let changed = client
            .execute(
                "DELETE FROM weir_objects WHERE kind = $1 AND name = $2 AND version = $3::bigint",
                &[&kind.as_str(), &name, &(version as i64)],
            )
            .await
            .context("writing the rule store")?;
        Ok(if changed == 1 { Ok(()) } else { Err(Conflict) })
    }
}

/// Listens for the store's announcements until `stop`: each change, and `All` whenever
/// announcements may have been missed (at the start, after the listening connection was
/// lost, every 30 s).
pub fn listen(target: Target, stop: CancellationToken) -> mpsc::UnboundedReceiver<Change> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut listening = false;
            let listened = async {
                let (client, connection) = target.connect().await?;
                let (mut notes, driver) =
                    crate::pg::notifications(connection, "the rule store's listening connection");
                client.batch_execute("LISTEN weir_changes").await?;
                listening = true;
                // Listening: whatever changed before now is found by comparing.
                let _ = tx.send(Change::All);
                let mut resync = tokio::time::interval(RESYNC_EVERY);
                resync.tick().await;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = resync.tick() => {
                            let _ = tx.send(Change::All);
                        }
                        note = notes.recv() => {
                            let Some(note) = note else { break };
                            let change = note
                                .split_once('/')
                                .and_then(|(k, n)| Some(Change::One(Kind::parse(k)?, n.to_owned())));
                            if let Some(c) = change {
                                let _ = tx.send(c);
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
            if stop.is_cancelled() || tx.is_closed() {
                return;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            // Backing off grows only while connecting fails.
            backoff = if listening {
                Duration::from_millis(100)
            } else {
                (backoff * 2).min(Duration::from_secs(5))
            };
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_in_logs() {
        assert_eq!(
            redact_url("postgres://weir:s3cret@db:5432/weir"),
            "postgres://weir:<redacted>@db:5432/weir"
        );
        assert_eq!(redact_url("postgres://db/weir"), "postgres://db/weir");
    }
}
