//! weir as a client of an external MQTT broker (Mosquitto, EMQX, HiveMQ, ...), as an
//! MQTT 5 client (so that rules can read the messages' MQTT 5 properties): plain TCP or TLS
//! (with client certificates), credentials, client id, clean or persistent session, QoS,
//! and an optional `$share/<group>/` prefix so that several weir replicas split one stream.
//!
//! weir subscribes to exactly the topic filters of its enabled rules, and follows rule
//! changes: [`ExternalBroker::set_filters`] subscribes to new filters and unsubscribes from
//! those no rule uses any more. After every (re)connection all filters are subscribed
//! again, so a broker that lost the session still delivers.
//!
//! * [`config`]: how to reach the broker, checked without connecting.
//! * [`connection`]: one MQTT 5 connection, read and written in batches, with keep-alive
//!   and reconnection backoff; each of the two below drives one on a thread of its own.
//! * [`ingress`]: the subscribing connection, which hands messages to the router.
//! * [`publisher`]: the publishing connection of the republish action, which confirms
//!   each publish.
//! * `error.rs`: what can go wrong: the configuration ([`ExternalError`]), a connection
//!   ([`LinkError`]), a publish ([`PublishError`]).

pub mod config;
mod connection;
mod error;
mod ingress;
pub mod publisher;

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use weir_engine::Message;

pub use config::ExternalConfig;
use connection::{Dialer, spawn_thread};
pub use error::{ExternalError, LinkError, PublishError};
pub use publisher::ConfirmedPublisher;

use crate::metrics::Metrics;

/// A connection to an external broker.
pub struct ExternalBroker {
    filters: watch::Sender<BTreeSet<String>>,
    pending: std::sync::Mutex<Option<watch::Receiver<BTreeSet<String>>>>,
    dialer: Arc<Dialer>,
    config: Arc<ExternalConfig>,
}

/// rumqttc network options with Nagle's algorithm off (weir's own connections set it in
/// [`connection`]; weir-load's clients use this): with Nagle a small write waits for the
/// previous one's ACK, which the broker's delayed ACK can hold back for up to 40 ms.
pub fn no_delay() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n
}

impl ExternalBroker {
    /// Prepares the client without connecting: the publisher can be handed out (to the
    /// rules' actions) before [`Self::start`] begins reading messages. TLS files are read
    /// here, so that a bad one stops weir at startup.
    pub fn new(config: ExternalConfig) -> Result<Self, ExternalError> {
        config.validate()?;
        let dialer = Dialer::new(&config)?;
        let (filters, filters_rx) = watch::channel(BTreeSet::<String>::new());
        Ok(Self {
            filters,
            pending: std::sync::Mutex::new(Some(filters_rx)),
            dialer: Arc::new(dialer),
            config: Arc::new(config),
        })
    }

    /// Connects and starts delivering received messages to `ingress`. Call once, after the
    /// rules are running, so that nothing the broker has queued arrives before its rule.
    pub fn start(
        &self,
        ingress: mpsc::Sender<Message>,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) {
        let Some(filters_rx) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            tracing::warn!("the external broker client was started twice");
            return;
        };
        let session = ingress::Session {
            config: self.config.clone(),
            dialer: self.dialer.clone(),
            ingress,
            metrics,
            cancel,
            filters_rx,
            awaiting_release: Default::default(),
            adopted: None,
        };
        // A thread of its own, with a runtime of its own: see `READ_PACE`.
        spawn_thread("weir-ingress", "the external broker client", session.run());
    }

    /// Takes over the persistent session of another replica, `client_id`, that is away:
    /// connects under its client id without cleaning its session, so that the broker
    /// delivers here what it queued for that replica and the share of the stream it keeps
    /// giving it. The adopted session subscribes to the rules' filters like weir's own;
    /// it ends when its owner connects again (the broker hands the session over), when
    /// [`AdoptedSession::stop`] is called, or when `cancel` is.
    pub fn adopt(
        &self,
        client_id: &str,
        ingress: mpsc::Sender<Message>,
        metrics: Arc<Metrics>,
        cancel: &CancellationToken,
    ) -> AdoptedSession {
        let mut config = (*self.config).clone();
        config.client_id = client_id.to_owned();
        config.clean_session = false;
        let stop = cancel.child_token();
        let activity = Arc::new(ingress::Activity::default());
        // The rules' filters, until the session is retired.
        let (filters_tx, filters_rx) = watch::channel(self.filters.borrow().clone());
        let filters_tx = Arc::new(filters_tx);
        let retiring = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (mut rules_rx, forward_to, retired, until) = (
            self.filters.subscribe(),
            filters_tx.clone(),
            retiring.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = until.cancelled() => return,
                    changed = rules_rx.changed() => {
                        if changed.is_err() || retired.load(std::sync::atomic::Ordering::Acquire) {
                            return;
                        }
                        forward_to.send_replace(rules_rx.borrow_and_update().clone());
                    }
                }
            }
        });
        let session = ingress::Session {
            config: Arc::new(config),
            dialer: self.dialer.clone(),
            ingress,
            metrics,
            cancel: stop.clone(),
            filters_rx,
            awaiting_release: Default::default(),
            adopted: Some(activity.clone()),
        };
        let (ended_tx, ended) = watch::channel(false);
        spawn_thread("weir-adopted", "an adopted session", async move {
            session.run().await;
            ended_tx.send_replace(true);
        });
        AdoptedSession {
            stop,
            ended,
            activity,
            filters: filters_tx,
            retiring,
        }
    }

    /// Ends the broker's session of `client_id` for good: connects under it with a clean
    /// start and no session expiry, and disconnects. What the broker still queued for it
    /// is dropped: retire an adopted session with [`AdoptedSession::unsubscribe`] and
    /// wait for it to drain first.
    pub async fn discard_session(&self, client_id: &str) -> Result<(), LinkError> {
        let (connect, login) = connection::connect_packet(&self.config, client_id, true);
        let (mut link, _) = self.dialer.connect(connect, login).await?;
        link.goodbye().await;
        Ok(())
    }

    /// The topic filters weir should be subscribed to (those of the enabled rules).
    pub fn set_filters(&self, filters: BTreeSet<String>) {
        self.filters.send_replace(filters);
    }

    /// A publisher on the same broker, on its own connection (client id `<id>-pub`, clean
    /// session) that confirms each publish: see [`publisher`].
    pub fn publisher(&self, cancel: CancellationToken) -> ConfirmedPublisher {
        ConfirmedPublisher::start(
            self.config.clone(),
            self.dialer.clone(),
            format!("{}-pub", self.config.client_id),
            cancel,
        )
    }
}

/// The session of another replica that this one took over: see [`ExternalBroker::adopt`].
pub struct AdoptedSession {
    stop: CancellationToken,
    ended: watch::Receiver<bool>,
    activity: Arc<ingress::Activity>,
    filters: Arc<watch::Sender<BTreeSet<String>>>,
    retiring: Arc<std::sync::atomic::AtomicBool>,
}

impl AdoptedSession {
    /// Whether the session has ended (its owner took it back, or it was stopped).
    pub fn has_ended(&self) -> bool {
        *self.ended.borrow()
    }

    /// Disconnects, leaving the session on the broker for its owner, and waits until the
    /// connection is closed.
    pub async fn stop(mut self) {
        self.stop.cancel();
        let _ = self.ended.wait_for(|ended| *ended).await;
    }

    /// Unsubscribes from every filter, so that the broker gives this session no more of
    /// the shared stream; what it queued before still arrives.
    pub fn unsubscribe(&self) {
        self.retiring
            .store(true, std::sync::atomic::Ordering::Release);
        self.filters.send_replace(BTreeSet::new());
    }

    /// Messages received so far, and whether the session is unsubscribed from everything
    /// with the broker's acknowledgement.
    pub fn activity(&self) -> (u64, bool) {
        use std::sync::atomic::Ordering::Relaxed;
        let a = &self.activity;
        (
            a.received.load(Relaxed),
            a.pending_changes.load(Relaxed) == 0 && a.subscribed.load(Relaxed) == 0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_tls_files_stop_weir_at_startup() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ExternalConfig::for_test("mqtts://localhost:8883");
        c.ca_file = Some(dir.path().join("missing.pem"));
        let e = ExternalBroker::new(c.clone())
            .err()
            .expect("a missing CA file fails");
        assert!(matches!(e, ExternalError::File { .. }), "{e}");
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "this is not a certificate").unwrap();
        c.ca_file = Some(not_pem);
        let e = ExternalBroker::new(c)
            .err()
            .expect("a CA file without certificates fails");
        assert!(e.to_string().contains("holds no certificate"), "{e}");
    }
}
