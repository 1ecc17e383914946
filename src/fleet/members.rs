//! Replicas that split an external broker's stream through a shared subscription take
//! over each other's broker sessions while their owner is away, so that a dead replica's
//! share of the stream is processed by the others and not only when it comes back.
//!
//! Why weir does it and not the broker: each replica keeps a persistent session (so that
//! a replica that dies loses nothing it had not acknowledged), and a broker such as
//! Mosquitto 2 keeps giving an away member of a share group its share, queued in its
//! session until it connects again. A replica that never comes back under its client id
//! (a Deployment's pod replaced by one with another name) would keep its share forever.
//!
//! How, with the fleet's shared store (PostgreSQL):
//! - every replica holds a session-level advisory lock keyed by its client id, on a
//!   connection of its own, and keeps a row in `weir_members` (client id, share group,
//!   when it was last seen). PostgreSQL releases the lock the moment the replica's process
//!   or connection dies.
//! - every second each replica looks at the other members of its share group; one whose
//!   lock has been free for `--broker-adopt-after` is away, and the first replica to take
//!   its lock adopts its session ([`ExternalBroker::adopt`]): it connects under that client
//!   id and processes what the broker queued for it, and its share from then on.
//! - the owner that comes back connects to the broker at once (the broker hands it the
//!   session and disconnects the adopter, which ends the adoption and never reconnects
//!   under that id) and asks for its lock with `NOTIFY weir_members`; the adopter stops,
//!   if it had not, and releases the lock.
//! - a member away for longer than `--broker-retire-after` is retired by its adopter:
//!   it unsubscribes (the broker gives the session no more of the stream), takes what
//!   the broker still had queued until nothing comes for 2 s, disconnects, ends the
//!   session at the broker (a clean start) and deletes the member's row.
//!
//! Every step is at least once: messages the adopter held but had not acknowledged when
//! the session was handed back are delivered again to the owner.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use weir_connectors::metrics::Metrics;
use weir_connectors::mqtt::{AdoptedSession, ExternalBroker};
use weir_engine::Message;

use super::pg::{Target, notifications};

/// When a replica's session is taken over, and when it is ended for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetSettings {
    /// How long a member's lock must be free before its session is adopted; `None`: never.
    pub adopt_after: Option<Duration>,
    /// How long a member may be away before its adopted session is drained and ended;
    /// `None`: never.
    pub retire_after: Option<Duration>,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self {
            adopt_after: Some(Duration::from_secs(15)),
            retire_after: Some(Duration::from_secs(600)),
        }
    }
}

/// How often a replica looks at the other members.
const TURN: Duration = Duration::from_secs(1);
/// A retiring session is drained once nothing came for this long.
const DRAINED_AFTER: Duration = Duration::from_secs(2);
/// The longest a retiring session is drained.
const DRAIN_AT_MOST: Duration = Duration::from_secs(60);

/// The advisory lock of a client id: a 63-bit FNV-1a hash, so that two client ids share
/// one only by a chance of one in billions.
pub fn lock_key(client_id: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in client_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h & i64::MAX as u64) as i64
}

/// The fleet's roll, made once by whichever replica comes first (the advisory lock, the
/// store's, keeps replicas starting together from racing on it).
const MEMBERS: &str = "
BEGIN;
SELECT pg_advisory_xact_lock(7265697201);
CREATE TABLE IF NOT EXISTS weir_members (
    client_id text PRIMARY KEY,
    share_group text NOT NULL,
    lock_key bigint NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now()
);
COMMIT;
";

/// Whether the advisory lock of the member's `lock_key` is held by anyone, in this
/// database.
const SCAN: &str = "
SELECT m.client_id,
       EXTRACT(EPOCH FROM now() - m.seen_at)::float8,
       EXISTS (SELECT 1 FROM pg_locks l
               WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND l.classid = (m.lock_key >> 32)::oid
                 AND l.objid = (m.lock_key & 4294967295)::oid)
FROM weir_members m
WHERE m.share_group = $1 AND m.client_id <> $2";

/// What the replica needs to adopt sessions.
pub struct Fleet {
    pub store: Target,
    pub broker: Arc<ExternalBroker>,
    pub client_id: String,
    pub share_group: String,
    pub settings: FleetSettings,
    pub ingress: mpsc::Sender<Message>,
    pub metrics: Arc<Metrics>,
}

/// This replica's part in the fleet, on one connection to the store.
struct Member {
    fleet: Arc<Fleet>,
    stop: CancellationToken,
    own_lock: bool,
    /// Sessions adopted, by client id; their locks are held on this connection.
    adopted: HashMap<String, AdoptedSession>,
    /// Members whose lock was found free, since when.
    free_since: HashMap<String, Instant>,
    /// Members whose owner took their session back from this replica: not adopted again
    /// until their lock has been seen held (else an owner cut off from the store but
    /// connected to the broker would be fought over).
    returned: HashSet<String>,
    warned_own_lock: bool,
}

/// Takes part in the fleet until `stop`: holds this replica's place, adopts away members'
/// sessions and retires those away too long. A lost connection to the store ends every
/// adoption (their locks went with it) and is made again.
pub fn start(fleet: Fleet, stop: CancellationToken) {
    let fleet = Arc::new(fleet);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut member = Member {
                fleet: fleet.clone(),
                stop: stop.clone(),
                own_lock: false,
                adopted: HashMap::new(),
                free_since: HashMap::new(),
                returned: HashSet::new(),
                warned_own_lock: false,
            };
            let result = member.run().await;
            let held_lock = member.own_lock;
            member.release_all().await;
            if stop.is_cancelled() {
                return;
            }
            if let Err(e) = result {
                tracing::warn!(error = %format!("{e:#}"), "the fleet's connection to the store failed; trying again");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = if held_lock {
                Duration::from_millis(100)
            } else {
                (backoff * 2).min(Duration::from_secs(5))
            };
        }
    });
}

impl Member {
    async fn run(&mut self) -> anyhow::Result<()> {
        let (client, connection) = self
            .fleet
            .store
            .connect()
            .await
            .context("cannot connect to the rule store")?;
        let (mut notes, driver) = notifications(connection, "the fleet's connection to the store");
        let result = async {
            client.batch_execute(MEMBERS).await?;
            client.batch_execute("LISTEN weir_members").await?;
            let mut turn = tokio::time::interval(TURN);
            loop {
                tokio::select! {
                    _ = self.stop.cancelled() => return Ok(()),
                    _ = turn.tick() => self.turn(&client).await?,
                    note = notes.recv() => match note {
                        Some(id) => self.hand_back(&client, &id).await?,
                        None => anyhow::bail!("the connection closed"),
                    },
                }
            }
        }
        .await;
        driver.abort();
        result
    }

    /// One look at the fleet: this replica's own place, adoptions that ended, and every
    /// other member of the share group.
    async fn turn(&mut self, client: &Client) -> anyhow::Result<()> {
        let fleet = self.fleet.clone();
        let me = fleet.client_id.as_str();
        if !self.own_lock {
            self.own_lock = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&lock_key(me)])
                .await?
                .get(0);
            if self.own_lock {
                tracing::info!(client_id = %me, group = %fleet.share_group, "this replica holds its place in the fleet");
            } else {
                // An adopter holds it: ask for it back.
                client
                    .execute("SELECT pg_notify('weir_members', $1)", &[&me])
                    .await?;
                if !self.warned_own_lock {
                    self.warned_own_lock = true;
                    tracing::info!(client_id = %me, "another replica holds this client id's place (it adopted the session, or it is a replica with the same --broker-client-id): asking for it");
                }
            }
        }
        if self.own_lock {
            client
                .execute(
                    "INSERT INTO weir_members (client_id, share_group, lock_key, seen_at) \
                     VALUES ($1, $2, $3, now()) ON CONFLICT (client_id) DO UPDATE SET \
                     share_group = EXCLUDED.share_group, lock_key = EXCLUDED.lock_key, seen_at = now()",
                    &[&me, &fleet.share_group, &lock_key(me)],
                )
                .await?;
        }
        // Adoptions whose owner took the session back.
        let ended: Vec<String> = self
            .adopted
            .iter()
            .filter(|(_, s)| s.has_ended())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ended {
            self.adopted.remove(&id);
            self.unlock(client, &id).await?;
            self.returned.insert(id);
        }
        let rows = client
            .query(SCAN, &[&fleet.share_group, &me])
            .await
            .context("reading the fleet's members")?;
        let now = Instant::now();
        let mut present = HashSet::new();
        for row in rows {
            let (id, away_secs, held): (String, f64, bool) = (row.get(0), row.get(1), row.get(2));
            present.insert(id.clone());
            if self.adopted.contains_key(&id) {
                if fleet
                    .settings
                    .retire_after
                    .is_some_and(|r| away_secs >= r.as_secs_f64())
                {
                    self.retire(client, &id, away_secs).await?;
                }
                continue;
            }
            if held {
                self.free_since.remove(&id);
                self.returned.remove(&id);
                continue;
            }
            let Some(adopt_after) = fleet.settings.adopt_after else {
                continue;
            };
            if self.returned.contains(&id) {
                continue;
            }
            let since = *self.free_since.entry(id.clone()).or_insert(now);
            if now.duration_since(since) < adopt_after {
                continue;
            }
            self.adopt(client, &id, away_secs).await?;
        }
        self.free_since.retain(|id, _| present.contains(id));
        self.returned.retain(|id| present.contains(id));
        fleet
            .metrics
            .fleet_adopted_sessions
            .set(self.adopted.len() as i64);
        Ok(())
    }

    /// Adopts the session of `id`, away and unclaimed, if this replica takes its lock first.
    async fn adopt(&mut self, client: &Client, id: &str, away_secs: f64) -> anyhow::Result<()> {
        let key = lock_key(id);
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await?
            .get(0);
        if !got {
            // Another replica adopted it a moment ago.
            return Ok(());
        }
        // Retired meanwhile by another replica: its session is gone, adopting would make
        // a new one that no one retires.
        let still = client
            .query_opt("SELECT 1 FROM weir_members WHERE client_id = $1", &[&id])
            .await?;
        if still.is_none() {
            return self.unlock(client, id).await;
        }
        self.free_since.remove(id);
        let f = &self.fleet;
        let session = f
            .broker
            .adopt(id, f.ingress.clone(), f.metrics.clone(), &self.stop);
        tracing::warn!(client_id = %id, away_s = away_secs.round() as i64, "adopted the broker session of an away replica: its share of the stream is processed here until it comes back");
        f.metrics.fleet_adoptions.inc();
        self.adopted.insert(id.to_owned(), session);
        Ok(())
    }

    /// `id` asks for its place back (its owner is back, or starting): stops its adopted
    /// session, if this replica holds it, and releases the lock.
    async fn hand_back(&mut self, client: &Client, id: &str) -> anyhow::Result<()> {
        let Some(session) = self.adopted.remove(id) else {
            return Ok(());
        };
        session.stop().await;
        tracing::info!(client_id = %id, "handed an adopted session back to its owner");
        self.unlock(client, id).await?;
        self.returned.insert(id.to_owned());
        self.fleet
            .metrics
            .fleet_adopted_sessions
            .set(self.adopted.len() as i64);
        Ok(())
    }

    /// Ends the session of a member away too long: unsubscribes, drains what the broker
    /// had queued for it, ends the session at the broker and forgets the member.
    async fn retire(&mut self, client: &Client, id: &str, away_secs: f64) -> anyhow::Result<()> {
        let Some(session) = self.adopted.get(id) else {
            return Ok(());
        };
        session.unsubscribe();
        let started = Instant::now();
        let (mut last, _) = session.activity();
        let mut quiet_since = Instant::now();
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            let (received, unsubscribed) = session.activity();
            if received != last {
                last = received;
                quiet_since = Instant::now();
            }
            if session.has_ended() {
                // Its owner came back meanwhile: the next turn sees it.
                return Ok(());
            }
            if unsubscribed && quiet_since.elapsed() >= DRAINED_AFTER {
                break;
            }
            if started.elapsed() >= DRAIN_AT_MOST {
                tracing::warn!(client_id = %id, "an away replica's session was still receiving after {DRAIN_AT_MOST:?} of draining; ending it anyway");
                break;
            }
        }
        let session = self.adopted.remove(id).expect("looked up above");
        session.stop().await;
        if let Err(e) = self.fleet.broker.discard_session(id).await {
            // Left as it is: adopted again after --broker-adopt-after, retired again.
            tracing::warn!(client_id = %id, error = %e, "could not end an away replica's session at the broker");
            return self.unlock(client, id).await;
        }
        client
            .execute("DELETE FROM weir_members WHERE client_id = $1", &[&id])
            .await?;
        self.unlock(client, id).await?;
        self.fleet.metrics.fleet_retired.inc();
        tracing::warn!(client_id = %id, away_s = away_secs.round() as i64, "retired the broker session of a replica away longer than --broker-retire-after");
        Ok(())
    }

    async fn unlock(&self, client: &Client, id: &str) -> anyhow::Result<()> {
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&lock_key(id)])
            .await?;
        Ok(())
    }

    /// Ends every adoption: their locks are gone with the connection, or about to be.
    async fn release_all(&mut self) {
        for (id, session) in self.adopted.drain() {
            session.stop().await;
            tracing::info!(client_id = %id, "stopped an adopted session");
        }
        self.fleet.metrics.fleet_adopted_sessions.set(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_positive() {
        // The key is stored in the table and compared by other replicas: it must not
        // change between builds.
        assert_eq!(lock_key(""), 0x4bf2_9ce4_8422_2325);
        assert_eq!(lock_key("weir-0"), lock_key("weir-0"));
        assert_ne!(lock_key("weir-0"), lock_key("weir-1"));
        for id in ["a", "weir-fleet-1", "\u{1F600}"] {
            assert!(lock_key(id) >= 0);
        }
    }
}
