//! What survives a restart, as the broker uses it: at start the saved sessions, their
//! subscriptions, the retained messages and (after a clean stop) the queues are loaded,
//! held to today's limits; while weir runs, changed sessions and retained messages are
//! saved in the background; when it stops, everything, queues included. The files and
//! their format are `store.rs`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use weir_engine::topic::validate_filter;

use super::broker::{Broker, lock};
use super::session::{Offered, Session};
use super::store::{self, SavedMessage, SavedQueue, SavedSession, SavedSub, Store};
use super::subscription::{Sub, shared};

impl Broker {
    /// Loads what an earlier run saved in `dir` (persistent sessions, retained messages,
    /// and, after a clean stop, the messages queued for the sessions), and from then on
    /// saves sessions and retained messages there as they change, until `cancel`.
    pub fn open_store(&self, dir: PathBuf, cancel: CancellationToken) {
        let store = Store::new(dir);
        let mut corrupt = 0;
        let sessions: Vec<SavedSession> = store
            .read("sessions.json", &mut corrupt)
            .unwrap_or_default();
        let retained: Vec<SavedMessage> = store
            .read("retained.json", &mut corrupt)
            .unwrap_or_default();
        let queues: Vec<SavedQueue> = store.read("queues.json", &mut corrupt).unwrap_or_default();
        store.remove("queues.json");
        self.inner.metrics.broker_state_corrupt.inc_by(corrupt);
        let max_sessions = self.inner.limits.max_sessions;
        if sessions.len() > max_sessions {
            tracing::warn!(
                saved = sessions.len(),
                max = max_sessions,
                "more sessions were saved than --mqtt-max-sessions allows: the rest are dropped"
            );
        }
        let (restored, kept) = (sessions.len().min(max_sessions), retained.len());
        {
            let mut map = lock(&self.inner.sessions);
            let mut subs = self.trie_mut();
            for saved in sessions.into_iter().take(max_sessions) {
                let client: Arc<str> = Arc::from(saved.client_id.as_str());
                let mut s = Session::new(client.clone());
                s.expiry = saved.expiry;
                for sub in saved.subscriptions {
                    let opts = sub.options();
                    let full: Arc<str> = Arc::from(sub.filter.as_str());
                    let (group, inner) = match shared(&sub.filter) {
                        Ok(Some((g, f))) => (Some(Arc::from(g)), f.to_owned()),
                        Ok(None) => (None, sub.filter.clone()),
                        Err(()) => continue,
                    };
                    if validate_filter(&inner).is_err() {
                        continue;
                    }
                    s.subscriptions.insert(full.clone(), opts);
                    subs.insert(
                        &inner,
                        Sub {
                            client: client.clone(),
                            filter: full,
                            group,
                            opts,
                        },
                    );
                }
                let session = Arc::new(Mutex::new(s));
                // The client has the whole of its expiry from this start to come back.
                self.expire_later(&client, &session, 0, saved.expiry);
                map.insert(client, session);
            }
            self.inner.metrics.broker_sessions.set(map.len() as i64);
            let total = &self.inner.metrics.broker_queued_bytes;
            for q in queues {
                let Some(session) = map.get(q.client_id.as_str()) else {
                    continue;
                };
                let mut s = lock(session);
                for (pkid, m) in q.inflight {
                    s.restore_in_flight(pkid, m.and_then(SavedMessage::into_delivery), total);
                }
                for m in q
                    .pending
                    .into_iter()
                    .filter_map(SavedMessage::into_delivery)
                {
                    // Within the same bounds as while running: a queues.json larger
                    // than them (edited, or from a run with larger limits) is cut.
                    let limits = &self.inner.limits;
                    if s.offer(
                        m,
                        limits.max_queued_bytes,
                        total,
                        limits.max_total_queued_bytes,
                    ) == Offered::Full
                    {
                        self.dropped("queue_full");
                    }
                }
            }
        }
        {
            let mut retained_store = lock(&self.inner.retained);
            for m in retained {
                if let Some((topic, r)) = m.into_retained() {
                    retained_store.set(&topic, r, self.inner.limits.max_retained_bytes);
                }
            }
            self.inner
                .metrics
                .broker_retained
                .set(retained_store.len() as i64);
        }
        if restored + kept > 0 {
            tracing::info!(
                sessions = restored,
                retained = kept,
                dir = %store.dir().display(),
                "the embedded broker's saved state is loaded"
            );
        }
        let _ = self.inner.store.set(store);
        let broker = self.clone();
        tokio::spawn(async move {
            let mut retained_saved = Instant::now();
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(store::AUTOSAVE) => {}
                }
                let b = broker.clone();
                let due = retained_saved.elapsed() >= store::RETAINED_AUTOSAVE;
                let wrote_retained = tokio::task::spawn_blocking(move || b.autosave(due))
                    .await
                    .unwrap_or(false);
                if wrote_retained {
                    retained_saved = Instant::now();
                }
            }
        });
    }

    /// Writes what changed; returns whether it wrote the retained messages.
    pub(super) fn autosave(&self, retained_due: bool) -> bool {
        if self.inner.sessions_dirty.swap(false, Ordering::AcqRel) {
            self.save_sessions();
        }
        if retained_due && self.inner.retained_dirty.swap(false, Ordering::AcqRel) {
            self.save_retained();
            return true;
        }
        false
    }

    pub(super) fn save_sessions(&self) {
        let Some(store) = self.inner.store.get() else {
            return;
        };
        let sessions: Vec<SavedSession> = lock(&self.inner.sessions)
            .values()
            .filter_map(|s| {
                let s = lock(s);
                (s.expiry > 0).then(|| SavedSession {
                    client_id: s.client_id.to_string(),
                    expiry: s.expiry,
                    subscriptions: s
                        .subscriptions
                        .iter()
                        .map(|(f, o)| SavedSub::new(f, o))
                        .collect(),
                })
            })
            .collect();
        if let Err(e) = store.write("sessions.json", &sessions) {
            self.inner.sessions_dirty.store(true, Ordering::Release);
            tracing::error!(error = %e, "cannot save the embedded broker's sessions");
        }
    }

    pub(super) fn save_retained(&self) {
        let Some(store) = self.inner.store.get() else {
            return;
        };
        let retained: Vec<SavedMessage> = lock(&self.inner.retained)
            .all()
            .map(|(t, r)| SavedMessage::from_retained(t, r))
            .collect();
        if let Err(e) = store.write("retained.json", &retained) {
            self.inner.retained_dirty.store(true, Ordering::Release);
            tracing::error!(error = %e, "cannot save the embedded broker's retained messages");
        }
    }

    /// Saves everything, with the messages queued and in flight for each persistent
    /// session, once its clients are gone (weir stops). Waits up to `grace` for the
    /// connections to close first.
    pub async fn save(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while self.inner.metrics.broker_connections.get() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let Some(store) = self.inner.store.get().cloned() else {
            return;
        };
        let b = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            b.save_sessions();
            b.save_retained();
            let queues: Vec<SavedQueue> = lock(&b.inner.sessions)
                .values()
                .filter_map(|s| {
                    let s = lock(s);
                    (s.expiry > 0).then(|| s.saved_queue())
                })
                .filter(|q| !q.inflight.is_empty() || !q.pending.is_empty())
                .collect();
            if let Err(e) = store.write("queues.json", &queues) {
                tracing::error!(
                    error = %e,
                    "cannot save the messages queued for the embedded broker's sessions"
                );
            }
        })
        .await;
    }
}
