//! The broker's sessions (each a [`Session`]): a connection attached to its client's
//! session (taking it over from a connection that had it; a clean start ends the old
//! one), detached when the connection ends, the session ended at once or after its
//! expiry; and the client's will, published when it goes without DISCONNECT (after its
//! will delay, unless it comes back first).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir_engine::Ack;
use weir_engine::topic::validate_topic;

use super::access::Want;
use super::broker::{Broker, lock};
use super::client::Peer;
use super::error::ClientError;
use super::limits::FOREVER_SECS;
use super::publishing::{Incoming, expires_at};
use super::session::{ConnId, Link, Session};
use super::signals::EndSignal;
use super::wire::Will;

impl Broker {
    /// Gives the connection its session: the one the client had, unless it asked for a
    /// clean start, or a new one. A connection the session had is kicked off. Returns
    /// the session and whether it was there before; `None` when a new session would be
    /// one more than [`Limits::max_sessions`](super::Limits::max_sessions).
    pub(super) fn attach(
        &self,
        client_id: &Arc<str>,
        clean_start: bool,
        link: Link,
        principal: Option<Arc<str>>,
        expiry: u32,
    ) -> Option<(Arc<Mutex<Session>>, bool)> {
        let mut sessions = lock(&self.inner.sessions);
        let existing = sessions.get(client_id).cloned();
        if existing.is_none() && sessions.len() >= self.inner.limits.max_sessions {
            return None;
        }
        if let Some(old) = &existing {
            let mut s = lock(old);
            // MQTT 3.1.1 §3.1.4: a second connection with the same client id takes over.
            if let Some(l) = s.link.take() {
                l.signals.end(EndSignal::Kicked);
            }
            if clean_start {
                self.end_session(&mut s);
            }
        }
        let (session, present) = match existing {
            Some(s) if !clean_start => (s, true),
            _ => {
                let s = Arc::new(Mutex::new(Session::new(client_id.clone())));
                sessions.insert(client_id.clone(), s.clone());
                (s, false)
            }
        };
        {
            let mut s = lock(&session);
            s.link = Some(link);
            s.generation = s.generation.wrapping_add(1);
            s.principal = principal;
            if expiry > 0 || s.expiry > 0 {
                self.inner.sessions_dirty.store(true, Ordering::Release);
            }
            s.expiry = expiry;
        }
        self.inner
            .metrics
            .broker_sessions
            .set(sessions.len() as i64);
        Some((session, present))
    }

    /// Lets go of the session when connection `conn` ends (unless another connection
    /// took it over): it ends now if its expiry is 0, or is set to end after its expiry.
    /// Returns its generation and expiry when the session was this connection's.
    pub(super) fn detach(
        &self,
        client_id: &Arc<str>,
        session: &Arc<Mutex<Session>>,
        conn: ConnId,
        new_expiry: Option<u32>,
    ) -> Option<(u32, u32)> {
        let mut sessions = lock(&self.inner.sessions);
        let mut s = lock(session);
        if s.link.as_ref().map(|l| l.conn) != Some(conn) {
            return None;
        }
        s.link = None;
        if let Some(e) = new_expiry {
            if s.expiry > 0 || e > 0 {
                self.inner.sessions_dirty.store(true, Ordering::Release);
            }
            s.expiry = if e >= FOREVER_SECS { u32::MAX } else { e };
        }
        let left = (s.generation, s.expiry);
        if s.expiry == 0 {
            self.end_session(&mut s);
            if sessions
                .get(client_id)
                .is_some_and(|x| Arc::ptr_eq(x, session))
            {
                sessions.remove(client_id);
            }
        } else {
            self.expire_later(client_id, session, s.generation, s.expiry);
        }
        self.inner
            .metrics
            .broker_sessions
            .set(sessions.len() as i64);
        Some(left)
    }

    /// Sets the session to end after `expiry` seconds unless its client comes back.
    pub(super) fn expire_later(
        &self,
        client_id: &Arc<str>,
        session: &Arc<Mutex<Session>>,
        generation: u32,
        expiry: u32,
    ) {
        if expiry == u32::MAX {
            return;
        }
        let broker = self.clone();
        let (client_id, session) = (client_id.clone(), session.clone());
        let after = Duration::from_secs(u64::from(expiry));
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            broker.expire(&client_id, &session, generation);
        });
    }

    /// Ends a session whose client has stayed away past its expiry.
    pub(super) fn expire(
        &self,
        client_id: &Arc<str>,
        session: &Arc<Mutex<Session>>,
        generation: u32,
    ) {
        let mut sessions = lock(&self.inner.sessions);
        if !sessions
            .get(client_id)
            .is_some_and(|x| Arc::ptr_eq(x, session))
        {
            return;
        }
        let mut s = lock(session);
        if s.link.is_some() || s.generation != generation {
            return;
        }
        self.end_session(&mut s);
        sessions.remove(client_id);
        self.inner
            .metrics
            .broker_sessions
            .set(sessions.len() as i64);
    }

    /// Forgets a session's subscriptions, queue and messages in flight.
    pub(super) fn end_session(&self, s: &mut Session) {
        self.changed(s);
        self.drop_subscriptions(s);
        s.clear(&self.inner.metrics.broker_queued_bytes);
    }

    /// The client went away without DISCONNECT (or asked for its will): publishes its
    /// will now, or after its will delay unless the session is resumed meanwhile (MQTT 5:
    /// at the latest when the session ends).
    pub(super) fn will_due(
        &self,
        will: Will,
        peer: Peer,
        session: Arc<Mutex<Session>>,
        generation: u32,
        expiry: u32,
    ) {
        let broker = self.clone();
        let delay = will.delay.min(expiry);
        tokio::spawn(async move {
            if delay > 0 {
                tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
                let resumed = {
                    let s = lock(&session);
                    s.generation != generation
                };
                if resumed {
                    return;
                }
            }
            if let Err(e) = broker.publish_will(&will, &peer).await {
                tracing::debug!(client_id = %peer.client_id, error = %e, "will not published");
            }
        });
    }

    pub(super) async fn publish_will(&self, will: &Will, peer: &Peer) -> Result<(), ClientError> {
        if validate_topic(&will.topic).is_err() {
            return Err(ClientError::InvalidWillTopic(will.topic.as_str().into()));
        }
        if !self.allows(
            peer.principal.as_deref(),
            &peer.client_id,
            Want::Write,
            &will.topic,
        ) {
            self.dropped("not_authorized");
            return Err(ClientError::WillNotAuthorized);
        }
        let m = Incoming {
            topic: &will.topic,
            payload: will.payload.clone(),
            qos: will.qos,
            retain: will.retain,
            properties: will.properties.clone(),
            expires_at: expires_at(will.expiry),
            publisher: Some(&peer.client_id),
            will: true,
        };
        self.accept_publish(peer, &m, Ack::default()).await
    }
}
