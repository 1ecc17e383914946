//! Where messages come in: the embedded broker on its listeners (plain, TLS, WebSocket),
//! or an external broker (with, in a fleet, the takeover of away replicas' sessions), and
//! Kafka topics. Prepared before the rules start (the pipeline needs the publisher), and
//! opened after them, so that nothing a broker has queued arrives before the rule that
//! wants it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use weir_connectors::metrics::Metrics;
use weir_connectors::mqtt::embedded::tls::ListenerOptions;
use weir_connectors::mqtt::{Broker, ExternalBroker, Publisher};
use weir_engine::Message;

use super::listeners::Listeners;
use crate::config::Settings;
use crate::fleet::{self, pg::Target};
use crate::tls::mqtt_tls_config;

/// The embedded broker and the listeners it will serve on.
pub struct Embedded {
    broker: Broker,
    plain: TcpListener,
    tls: Option<(TcpListener, TlsAcceptor, ListenerOptions)>,
    ws: Option<(TcpListener, ListenerOptions)>,
}

/// The ingress, prepared.
pub enum Ingress {
    Embedded(Embedded),
    External(Arc<ExternalBroker>),
}

impl Ingress {
    /// Makes the embedded broker (its saved sessions read from the data directory) or the
    /// external broker's client; returns it with the publisher republish actions use.
    /// `publisher_stop` ends the external publisher (after the pipeline drained).
    pub fn prepare(
        settings: &Settings,
        listeners: &mut Listeners,
        to_rules: mpsc::Sender<Message>,
        metrics: &Arc<Metrics>,
        publisher_stop: CancellationToken,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<(Self, Publisher)> {
        if let Some(config) = &settings.ingress.broker {
            let ext = ExternalBroker::new(config.clone())
                .with_context(|| format!("external broker {}", config.url))?;
            let ext = Arc::new(ext);
            let publisher = Publisher::External(ext.publisher(publisher_stop));
            return Ok((Self::External(ext), publisher));
        }
        let mqtt = &settings.mqtt;
        let plain = listeners
            .mqtt
            .take()
            .context("the embedded broker needs an MQTT listener")?;
        let tls = match (&mqtt.tls, listeners.mqtts.take()) {
            (Some(t), Some(listener)) => {
                let config = mqtt_tls_config(&t.cert, &t.key, t.client_ca.as_deref())?;
                Some((listener, TlsAcceptor::from(config), t.options))
            }
            (Some(_), None) => anyhow::bail!("--mqtts-listen needs a listener"),
            (None, _) => None,
        };
        let ws = match (&mqtt.ws, listeners.mqtt_ws.take()) {
            (Some((_, options)), Some(listener)) => Some((listener, *options)),
            (Some(_), None) => anyhow::bail!("--mqtt-ws-listen needs a listener"),
            (None, _) => None,
        };
        let broker =
            Broker::with_access(to_rules, metrics.clone(), mqtt.limits, mqtt.access.clone());
        // Its sessions and retained messages, saved under the data directory.
        broker.open_store(settings.storage.data_dir.join("broker"), shutdown.clone());
        let publisher = Publisher::Embedded(broker.clone());
        Ok((
            Self::Embedded(Embedded {
                broker,
                plain,
                tls,
                ws,
            }),
            publisher,
        ))
    }

    /// The external broker, for the actions that publish through its connection.
    pub fn external(&self) -> Option<Arc<ExternalBroker>> {
        match self {
            Self::External(e) => Some(e.clone()),
            Self::Embedded(_) => None,
        }
    }

    /// The embedded broker, to save its sessions at the end.
    pub fn embedded(&self) -> Option<Broker> {
        match self {
            Self::Embedded(e) => Some(e.broker.clone()),
            Self::External(_) => None,
        }
    }

    /// Lets messages in: the embedded broker's listeners accept clients, or the external
    /// broker's subscriptions start (and, in a fleet, the takeover of away replicas'
    /// sessions); Kafka topics are consumed. Returns the embedded broker's address.
    pub fn open(
        self,
        settings: &Settings,
        fleet_db: Option<Target>,
        to_rules: mpsc::Sender<Message>,
        metrics: Arc<Metrics>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<SocketAddr>> {
        if let Some(source) = &settings.ingress.source {
            weir_connectors::kafka_ingress::start(
                source,
                to_rules.clone(),
                settings.mqtt.limits.max_packet,
                metrics.clone(),
                shutdown.clone(),
            )
            .map_err(anyhow::Error::msg)?;
        }
        match self {
            Self::Embedded(e) => {
                let addr = e.plain.local_addr()?;
                if let Some((tls, acceptor, options)) = e.tls {
                    tracing::info!(mqtts = %tls.local_addr()?, "the embedded broker's TLS listener is open");
                    let serving =
                        e.broker
                            .clone()
                            .serve_tls(tls, acceptor, options, shutdown.clone());
                    tokio::spawn(serving);
                }
                if let Some((ws, options)) = e.ws {
                    tracing::info!(mqtt_ws = %ws.local_addr()?, "the embedded broker's WebSocket listener is open");
                    let serving = e
                        .broker
                        .clone()
                        .serve_websocket(ws, options, shutdown.clone());
                    tokio::spawn(serving);
                }
                tokio::spawn(e.broker.serve(e.plain, shutdown.clone()));
                Ok(Some(addr))
            }
            Self::External(ext) => {
                ext.start(to_rules.clone(), metrics.clone(), shutdown.clone());
                // Replicas sharing a subscription and a store take over each other's
                // sessions while their owner is away.
                if let (Some(db), Some(config)) = (fleet_db, &settings.ingress.broker)
                    && let Some(group) = &config.share_group
                    && !config.clean_session
                {
                    let member = fleet::Fleet {
                        store: db,
                        broker: ext,
                        client_id: config.client_id.clone(),
                        share_group: group.clone(),
                        settings: settings.ingress.fleet,
                        ingress: to_rules,
                        metrics,
                    };
                    fleet::start(member, shutdown.clone());
                }
                Ok(None)
            }
        }
    }
}

/// Saves the embedded broker's sessions, for at most this long, at the end.
pub const SAVE_AT_MOST: Duration = Duration::from_secs(2);
