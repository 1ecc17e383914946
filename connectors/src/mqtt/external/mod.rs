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

pub mod config;
mod connection;
mod ingress;
pub mod publisher;

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use weir_engine::Message;

pub use config::{ExternalConfig, ExternalError};
use connection::{Dialer, spawn_thread};
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
        };
        // A thread of its own, with a runtime of its own: see `READ_PACE`.
        spawn_thread("weir-ingress", "the external broker client", session.run());
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
