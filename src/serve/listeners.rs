//! The sockets weir serves on, bound from the settings (`run`) or by the caller (`serve`:
//! tests bind port 0).

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::config::Settings;

/// A listener could not be opened. Printed as one line that names the setting to change
/// (the system's reason is in it, not chained after it, so that it is said once).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for {what}: {reason} (change it with {flag} or {env})")]
pub struct BindError {
    pub addr: SocketAddr,
    pub what: &'static str,
    pub flag: &'static str,
    pub env: &'static str,
    pub reason: std::io::Error,
}

async fn bind(
    addr: SocketAddr,
    what: &'static str,
    flag: &'static str,
    env: &'static str,
) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|reason| BindError {
        addr,
        what,
        flag,
        env,
        reason,
    })
}

/// The sockets weir serves on.
pub struct Listeners {
    /// The HTTP API.
    pub http: TcpListener,
    /// The embedded MQTT broker; `None` with an external broker.
    pub mqtt: Option<TcpListener>,
    /// The embedded broker's TLS listener, when `--mqtts-listen` names one.
    pub mqtts: Option<TcpListener>,
    /// The embedded broker's WebSocket listener, when `--mqtt-ws-listen` names one.
    pub mqtt_ws: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses `settings` name: the HTTP API, and the embedded broker unless
    /// weir reads from an external one.
    pub async fn bind(settings: &Settings) -> Result<Self, BindError> {
        let http = bind(
            settings.http.listen,
            "the HTTP API",
            "--http-listen",
            "WEIR_HTTP_LISTEN",
        )
        .await?;
        if settings.ingress.broker.is_some() {
            return Ok(Self {
                http,
                mqtt: None,
                mqtts: None,
                mqtt_ws: None,
            });
        }
        let mqtt = &settings.mqtt;
        let plain = bind(
            mqtt.listen,
            "the embedded MQTT broker",
            "--mqtt-listen",
            "WEIR_MQTT_LISTEN",
        )
        .await?;
        let mqtts = match &mqtt.tls {
            Some(t) => Some(
                bind(
                    t.listen,
                    "the embedded MQTT broker's TLS listener",
                    "--mqtts-listen",
                    "WEIR_MQTTS_LISTEN",
                )
                .await?,
            ),
            None => None,
        };
        let mqtt_ws = match &mqtt.ws {
            Some((listen, _)) => Some(
                bind(
                    *listen,
                    "the embedded MQTT broker's WebSocket listener",
                    "--mqtt-ws-listen",
                    "WEIR_MQTT_WS_LISTEN",
                )
                .await?,
            ),
            None => None,
        };
        Ok(Self {
            http,
            mqtt: Some(plain),
            mqtts,
            mqtt_ws,
        })
    }

    /// The addresses of every listener, for the policy that keeps rules' webhooks off
    /// them.
    pub fn addrs(&self) -> std::io::Result<Vec<SocketAddr>> {
        [
            Some(&self.http),
            self.mqtt.as_ref(),
            self.mqtts.as_ref(),
            self.mqtt_ws.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(TcpListener::local_addr)
        .collect()
    }
}
