//! Ingress from an external MQTT broker (Mosquitto, EMQX, HiveMQ, ...), as an MQTT 5
//! client (so that rules can read the messages' MQTT 5 properties): plain TCP or TLS (with
//! client certificates), credentials, client id, clean or persistent session, QoS, and an
//! optional `$share/<group>/` prefix so that several weir replicas split one stream.
//!
//! weir subscribes to exactly the topic filters of its enabled rules, and follows rule
//! changes: [`ExternalBroker::set_filters`] subscribes to new filters and unsubscribes from
//! those no rule uses any more. After every (re)connection all filters are subscribed
//! again, so a broker that lost the session still delivers.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish};
use rumqttc::v5::{self, AsyncClient, Event};
use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use weir_engine::{Ack, Message, MqttProperties, now_ms};

use super::Publisher;
use super::wire::{properties_from_v5, qos_v5};
use crate::metrics::Metrics;

/// How weir connects to an external broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub client_id: String,
    /// Start a clean session (true) or resume the broker's stored session (false).
    pub clean_session: bool,
    /// QoS of weir's subscriptions.
    pub qos: u8,
    /// Subscribe as `$share/<group>/<filter>` so that replicas split the stream.
    pub share_group: Option<String>,
    /// PEM file of the CA that signed the broker's certificate (else the system's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM files of weir's client certificate and key, for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub keep_alive: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    #[error("broker url '{url}': {message}")]
    Url { url: String, message: String },
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

struct Endpoint {
    host: String,
    port: u16,
    tls: bool,
}

fn parse_url(url: &str) -> Result<Endpoint, ExternalError> {
    let err = |m: &str| ExternalError::Url {
        url: url.to_owned(),
        message: m.to_owned(),
    };
    let (tls, rest) = if let Some(r) = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
    {
        (false, r)
    } else if let Some(r) = url
        .strip_prefix("mqtts://")
        .or_else(|| url.strip_prefix("ssl://"))
    {
        (true, r)
    } else {
        return Err(err("must start with mqtt:// or mqtts://"));
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') {
        return Err(err(
            "give only host and port; credentials go in --broker-username/--broker-password",
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>()
                .map_err(|_| err("port is not a number from 1 to 65535"))?,
        ),
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err(err("host is empty"));
    }
    Ok(Endpoint {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
        tls,
    })
}

impl ExternalConfig {
    /// Checks the configuration without connecting.
    pub fn validate(&self) -> Result<(), ExternalError> {
        parse_url(&self.url)?;
        if self.qos > 2 {
            return Err(ExternalError::Invalid(format!(
                "broker QoS must be 0, 1 or 2, got {}",
                self.qos
            )));
        }
        if self.client_id.is_empty() && !self.clean_session {
            return Err(ExternalError::Invalid(
                "a persistent session (clean session off) needs a client id".to_owned(),
            ));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(ExternalError::Invalid(
                "a client certificate needs its key, and a key its certificate".to_owned(),
            ));
        }
        if let Some(g) = &self.share_group
            && (g.is_empty() || g.contains(['/', '+', '#']))
        {
            return Err(ExternalError::Invalid(format!(
                "share group '{g}' must be non-empty and contain no '/', '+' or '#'"
            )));
        }
        Ok(())
    }

    /// The filter weir subscribes to for a rule's filter.
    pub fn subscription(&self, filter: &str) -> String {
        match &self.share_group {
            Some(g) => format!("$share/{g}/{filter}"),
            None => filter.to_owned(),
        }
    }

    /// Options for weir's publishing connection (MQTT 3.1.1). Its event loop needs
    /// [`no_delay`] too.
    fn options(&self) -> Result<MqttOptions, ExternalError> {
        self.validate()?;
        let ep = parse_url(&self.url)?;
        let mut o = MqttOptions::new(self.client_id.clone(), ep.host.clone(), ep.port);
        o.set_keep_alive(self.keep_alive);
        o.set_clean_session(self.clean_session);
        o.set_max_packet_size(MAX_PACKET as usize, MAX_PACKET as usize);
        if let (Some(u), p) = (&self.username, &self.password) {
            o.set_credentials(u.clone(), p.clone().unwrap_or_default());
        }
        if let Some(t) = self.transport(&ep)? {
            o.set_transport(t);
        }
        Ok(o)
    }

    /// Options for weir's subscribing connection (MQTT 5, so that rules can read the
    /// messages' properties).
    fn ingress_options(&self) -> Result<v5::MqttOptions, ExternalError> {
        self.validate()?;
        let ep = parse_url(&self.url)?;
        let mut o = v5::MqttOptions::new(self.client_id.clone(), ep.host.clone(), ep.port);
        o.set_keep_alive(self.keep_alive);
        o.set_clean_start(self.clean_session);
        // MQTT 3.1.1's persistent session lasts until the client cleans it; in MQTT 5 it
        // ends with the connection unless it is given an expiry (u32::MAX: never).
        if !self.clean_session {
            o.set_session_expiry_interval(Some(u32::MAX));
        }
        // A message is acknowledged once every action has it (delivered or on disk), not
        // on receipt: see `weir_engine::Ack`.
        o.set_manual_acks(self.qos > 0);
        o.set_max_packet_size(Some(MAX_PACKET));
        o.set_network_options(no_delay());
        if let (Some(u), p) = (&self.username, &self.password) {
            o.set_credentials(u.clone(), p.clone().unwrap_or_default());
        }
        if let Some(t) = self.transport(&ep)? {
            o.set_transport(t);
        }
        Ok(o)
    }

    fn transport(&self, ep: &Endpoint) -> Result<Option<Transport>, ExternalError> {
        if !ep.tls {
            return Ok(None);
        }
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| ExternalError::File {
                path: p.clone(),
                source,
            })
        };
        let client_auth = match (&self.client_cert, &self.client_key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        let tls = match &self.ca_file {
            Some(ca) => TlsConfiguration::Simple {
                ca: read(ca)?,
                alpn: None,
                client_auth,
            },
            None if client_auth.is_some() => {
                return Err(ExternalError::Invalid(
                    "mutual TLS needs the broker's CA file too (--broker-ca-file)".to_owned(),
                ));
            }
            None => TlsConfiguration::default(),
        };
        Ok(Some(Transport::Tls(tls)))
    }
}

/// Largest packet weir sends or accepts on an external broker connection.
const MAX_PACKET: u32 = 1024 * 1024;

/// A connection to an external broker.
pub struct ExternalBroker {
    filters: watch::Sender<BTreeSet<String>>,
    client: AsyncClient,
    pending: std::sync::Mutex<Option<(v5::EventLoop, watch::Receiver<BTreeSet<String>>)>>,
    config: Arc<ExternalConfig>,
}

/// Network options with Nagle's algorithm off: weir writes each packet as soon as it has
/// it, and with Nagle a small write waits for the previous one's ACK, which the broker's
/// delayed ACK can hold back for up to 40 ms.
pub fn no_delay() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n
}

/// The properties of a message that came without any: one shared value, not one
/// allocation per message.
fn no_properties() -> Arc<MqttProperties> {
    static NONE: std::sync::OnceLock<Arc<MqttProperties>> = std::sync::OnceLock::new();
    NONE.get_or_init(|| Arc::new(properties_from_v5(Default::default())))
        .clone()
}

impl ExternalBroker {
    /// Prepares the client without connecting: the publisher can be handed out (to the
    /// rules' actions) before [`Self::start`] begins reading messages.
    pub fn new(config: ExternalConfig) -> Result<Self, ExternalError> {
        let options = config.ingress_options()?;
        let (client, eventloop) = AsyncClient::new(options, 1024);
        let (filters, filters_rx) = watch::channel(BTreeSet::<String>::new());
        Ok(Self {
            filters,
            client,
            pending: std::sync::Mutex::new(Some((eventloop, filters_rx))),
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
        let Some((mut eventloop, mut filters_rx)) = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            tracing::warn!("the external broker client was started twice");
            return;
        };
        let client = self.client.clone();
        let config = self.config.clone();
        // Subscriptions follow the rules, and are renewed on every connection.
        let (connected_tx, mut connected_rx) = mpsc::channel::<()>(4);
        let sub_client = client.clone();
        let sub_config = config.clone();
        let sub_cancel = cancel.clone();
        tokio::spawn(async move {
            let mut subscribed: BTreeSet<String> = BTreeSet::new();
            loop {
                let resubscribe_all = tokio::select! {
                    _ = sub_cancel.cancelled() => return,
                    c = connected_rx.recv() => { if c.is_none() { return; } true }
                    changed = filters_rx.changed() => { if changed.is_err() { return; } false }
                };
                let wanted = filters_rx.borrow_and_update().clone();
                for f in wanted
                    .iter()
                    .filter(|f| resubscribe_all || !subscribed.contains(*f))
                {
                    let sub = sub_config.subscription(f);
                    match sub_client
                        .subscribe(sub.clone(), qos_v5(sub_config.qos))
                        .await
                    {
                        Ok(()) => {
                            tracing::info!(filter = %sub, broker = %sub_config.url, "subscribed")
                        }
                        Err(e) => tracing::warn!(filter = %sub, error = %e, "cannot subscribe"),
                    }
                }
                for f in subscribed.difference(&wanted) {
                    let sub = sub_config.subscription(f);
                    if let Err(e) = sub_client.unsubscribe(sub.clone()).await {
                        tracing::warn!(filter = %sub, error = %e, "cannot unsubscribe");
                    }
                }
                subscribed = wanted;
            }
        });

        // Acknowledgements come from whichever task lets go of a message last; one task
        // hands them to the client in the order they arrive.
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Publish>();
        let ack_client = client.clone();
        tokio::spawn(async move {
            while let Some(p) = ack_rx.recv().await {
                if ack_client.ack(&p).await.is_err() {
                    return;
                }
            }
        });
        let url = config.url.clone();
        tokio::spawn(async move {
            let mut failures: u32 = 0;
            loop {
                let event = tokio::select! {
                    _ = cancel.cancelled() => return,
                    e = eventloop.poll() => e,
                };
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        failures = 0;
                        tracing::info!(broker = %url, session_present = ack.session_present, "connected to broker");
                        let _ = connected_tx.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        metrics.ingress_messages.inc();
                        let Ok(topic) = String::from_utf8(p.topic.to_vec()) else {
                            tracing::warn!(broker = %url, "a message with a topic that is not UTF-8 was skipped");
                            if p.qos != QoS::AtMostOnce {
                                let _ = ack_tx.send(p);
                            }
                            continue;
                        };
                        let ack = if p.qos == QoS::AtMostOnce {
                            Ack::default()
                        } else {
                            let mut token = Publish::new("", p.qos, Vec::new(), None);
                            token.pkid = p.pkid;
                            let tx = ack_tx.clone();
                            let cancel = cancel.clone();
                            Ack::on_drop(move || {
                                // After shutdown began, nothing more is acknowledged: what
                                // is dropped then was not delivered.
                                if !cancel.is_cancelled() {
                                    let _ = tx.send(token);
                                }
                            })
                        };
                        let properties = match p.properties {
                            Some(props) => Arc::new(properties_from_v5(props)),
                            None => no_properties(),
                        };
                        let msg = Message {
                            topic,
                            client_id: None,
                            principal: None,
                            source_ip: None,
                            payload: p.payload,
                            received_at_ms: now_ms(),
                            seq: weir_engine::next_seq(),
                            // An MQTT 5 broker leaves the properties out when the publisher
                            // set none, or spoke MQTT 3.1.1: then they are all Undefined
                            // but for format_indicator.
                            properties: Some(properties),
                            ack,
                        };
                        if ingress.send(msg).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        failures += 1;
                        let wait = Duration::from_millis(100 * u64::from(failures.min(50)));
                        if failures == 1 || failures.is_multiple_of(20) {
                            tracing::warn!(broker = %url, error = %e, retry_in = ?wait, "broker connection failed");
                        }
                        tokio::select! {
                            _ = cancel.cancelled() => return,
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
        });
    }

    /// The topic filters weir should be subscribed to (those of the enabled rules).
    pub fn set_filters(&self, filters: BTreeSet<String>) {
        self.filters.send_replace(filters);
    }

    /// A publisher on the same broker, on its own connection (client id `<id>-pub`, clean
    /// session) that confirms each publish: see [`super::publisher`].
    pub fn publisher(&self, cancel: CancellationToken) -> Result<Publisher, ExternalError> {
        let mut config = (*self.config).clone();
        config.client_id = format!("{}-pub", config.client_id);
        config.share_group = None;
        let mut options = config.options()?;
        options.set_manual_acks(false);
        Ok(Publisher::External(
            super::publisher::ConfirmedPublisher::start(options, cancel),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> ExternalConfig {
        ExternalConfig {
            url: url.to_owned(),
            username: None,
            password: None,
            client_id: "weir".to_owned(),
            clean_session: false,
            qos: 1,
            share_group: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            keep_alive: Duration::from_secs(30),
        }
    }

    #[test]
    fn parses_broker_urls() {
        let e = parse_url("mqtt://broker:1884").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls), ("broker", 1884, false));
        let e = parse_url("mqtts://broker").unwrap();
        assert_eq!((e.port, e.tls), (8883, true));
        let e = parse_url("mqtt://127.0.0.1").unwrap();
        assert_eq!(e.port, 1883);
        assert!(parse_url("http://broker").is_err());
        assert!(parse_url("mqtt://broker:x").is_err());
        assert!(parse_url("mqtt://user:pw@broker:1883").is_err());
    }

    #[test]
    fn validates_and_shares() {
        let mut c = config("mqtt://localhost:1883");
        assert!(c.validate().is_ok());
        assert_eq!(c.subscription("a/+"), "a/+");
        c.share_group = Some("weir".to_owned());
        assert_eq!(c.subscription("a/+"), "$share/weir/a/+");
        c.share_group = Some("a/b".to_owned());
        assert!(c.validate().is_err());
        let mut c = config("mqtt://localhost");
        c.client_id.clear();
        assert!(c.validate().is_err());
        c.clean_session = true;
        assert!(c.validate().is_ok());
        c.client_key = Some("k.pem".into());
        assert!(c.validate().is_err());
    }
}
