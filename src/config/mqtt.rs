//! The embedded MQTT broker: its listeners (plain, TLS, WebSocket), what each client may
//! hold, and who may connect and do what.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use weir_connectors::mqtt::embedded::Limits;
use weir_connectors::mqtt::embedded::access::{Access, Acl, PasswordFile};
use weir_connectors::mqtt::embedded::tls::ListenerOptions;

#[derive(Debug, Clone, Args)]
pub struct MqttArgs {
    /// Address of the embedded MQTT broker. Unused with --broker.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt_listen: SocketAddr,
    /// Largest MQTT packet a client of the embedded broker may send, in bytes; a larger
    /// one closes its connection.
    #[arg(long, default_value_t = Limits::default().max_packet)]
    pub mqtt_max_packet_size: usize,
    /// Most clients connected to the embedded broker at once; one more is closed at once.
    #[arg(long, default_value_t = Limits::default().max_connections)]
    pub mqtt_max_connections: usize,
    /// Most subscriptions one client of the embedded broker may hold.
    #[arg(long, default_value_t = Limits::default().max_subscriptions)]
    pub mqtt_max_subscriptions: usize,
    /// Most sessions the embedded broker holds, of connected clients and of away
    /// clients whose session has not expired; a client that would start one more is
    /// refused.
    #[arg(long, default_value_t = Limits::default().max_sessions)]
    pub mqtt_max_sessions: usize,
    /// Most bytes queued for one subscriber of the embedded broker; one that falls
    /// further behind is disconnected.
    #[arg(long, default_value_t = Limits::default().max_queued_bytes)]
    pub mqtt_max_queued_bytes: usize,
    /// The longest keep-alive an MQTT 5 client of the embedded broker may use: one that
    /// asks for more, or for none, is told this one in the CONNACK (from 1s to 65535s).
    #[arg(long, default_value = "60s")]
    pub mqtt_max_keep_alive: humantime::Duration,
    /// Address of the embedded broker's TLS listener (MQTT over TLS, usually port 8883);
    /// needs --mqtt-tls-cert and --mqtt-tls-key [default: none].
    #[arg(long)]
    pub mqtts_listen: Option<SocketAddr>,
    /// PEM certificate chain of the TLS listener.
    #[arg(long)]
    pub mqtt_tls_cert: Option<PathBuf>,
    /// PEM private key of --mqtt-tls-cert.
    #[arg(long)]
    pub mqtt_tls_key: Option<PathBuf>,
    /// PEM certificates of the CA that signs client certificates: a client that presents
    /// one is identified by its subject's common name, which principal() returns and the
    /// ACL's `user` lines match; clients without one authenticate as on --mqtt-listen
    /// [default: none, no client certificates].
    #[arg(long)]
    pub mqtt_tls_client_ca: Option<PathBuf>,
    /// Refuse a client whose client id is not its certificate's common name
    /// [default: false].
    #[arg(long, value_name = "BOOL")]
    pub mqtt_tls_require_client_id: Option<bool>,
    /// Address of the embedded broker's WebSocket listener (MQTT over WebSocket, for
    /// browser dashboards; the `mqtt` subprotocol, any path) [default: none].
    #[arg(long)]
    pub mqtt_ws_listen: Option<SocketAddr>,
    /// Users of the embedded broker and their password hashes, in Mosquitto's
    /// `mosquitto_passwd` format; a client that sends a username must match it
    /// [default: none].
    #[arg(long)]
    pub mqtt_password_file: Option<PathBuf>,
    /// What each client of the embedded broker may publish and read, in Mosquitto's
    /// `acl_file` syntax [default: none, every client may publish and read every topic].
    #[arg(long)]
    pub mqtt_acl_file: Option<PathBuf>,
    /// Let clients without a username connect to the embedded broker [default: true
    /// when --mqtt-listen is a loopback address, false otherwise].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub mqtt_allow_anonymous: Option<bool>,
}

/// The embedded broker, as its settings resolve.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub listen: SocketAddr,
    /// What each client may hold.
    pub limits: Limits,
    /// Who may connect, and what each client may do.
    pub access: Access,
    /// The TLS listener, if any.
    pub tls: Option<MqttTlsSettings>,
    /// The WebSocket listener, if any, and its rules for clients.
    pub ws: Option<(SocketAddr, ListenerOptions)>,
}

/// The embedded broker's TLS listener (`--mqtts-listen`).
#[derive(Debug, Clone)]
pub struct MqttTlsSettings {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub options: ListenerOptions,
}

impl MqttArgs {
    pub fn resolve(&self) -> anyhow::Result<MqttSettings> {
        let max_packet = self.mqtt_max_packet_size;
        // MQTT's own bound: the remaining length has at most 4 bytes.
        if !(1024..=268_435_455).contains(&max_packet) {
            bail!("--mqtt-max-packet-size must be from 1024 to 268435455 bytes, got {max_packet}");
        }
        let keep_alive: std::time::Duration = self.mqtt_max_keep_alive.into();
        let max_keep_alive = match u16::try_from(keep_alive.as_secs()) {
            Ok(s) if s > 0 && keep_alive.subsec_nanos() == 0 => s,
            _ => bail!(
                "--mqtt-max-keep-alive must be whole seconds from 1s to 65535s, got {}",
                self.mqtt_max_keep_alive
            ),
        };
        let at_least_one = super::values::at_least_one;
        let limits = Limits {
            max_packet,
            max_connections: at_least_one("mqtt-max-connections", self.mqtt_max_connections)?,
            max_subscriptions: at_least_one("mqtt-max-subscriptions", self.mqtt_max_subscriptions)?,
            max_sessions: at_least_one("mqtt-max-sessions", self.mqtt_max_sessions)?,
            max_queued_bytes: at_least_one("mqtt-max-queued-bytes", self.mqtt_max_queued_bytes)?,
            max_keep_alive,
            ..Limits::default()
        };
        // As Mosquitto 2: anonymous clients only where only this host can connect.
        let anonymous_on = |listen: SocketAddr| {
            self.mqtt_allow_anonymous
                .unwrap_or(listen.ip().is_loopback())
        };
        let access = Access {
            passwords: self
                .mqtt_password_file
                .as_deref()
                .map(PasswordFile::load)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--mqtt-password-file: {e}"))?,
            acl: self
                .mqtt_acl_file
                .as_deref()
                .map(Acl::load)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--mqtt-acl-file: {e}"))?,
            allow_anonymous: anonymous_on(self.mqtt_listen),
        };
        let tls = match (&self.mqtts_listen, &self.mqtt_tls_cert, &self.mqtt_tls_key) {
            (None, None, None) => {
                if self.mqtt_tls_client_ca.is_some() || self.mqtt_tls_require_client_id.is_some() {
                    bail!(
                        "--mqtt-tls-client-ca and --mqtt-tls-require-client-id need --mqtts-listen"
                    );
                }
                None
            }
            (Some(listen), Some(cert), Some(key)) => Some(MqttTlsSettings {
                listen: *listen,
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.mqtt_tls_client_ca.clone(),
                options: ListenerOptions {
                    allow_anonymous: anonymous_on(*listen),
                    require_client_id: match (
                        self.mqtt_tls_require_client_id,
                        &self.mqtt_tls_client_ca,
                    ) {
                        (Some(true), None) => {
                            bail!("--mqtt-tls-require-client-id needs --mqtt-tls-client-ca")
                        }
                        (r, _) => r.unwrap_or(false),
                    },
                },
            }),
            _ => bail!("--mqtts-listen, --mqtt-tls-cert and --mqtt-tls-key go together"),
        };
        Ok(MqttSettings {
            listen: self.mqtt_listen,
            limits,
            access,
            tls,
            ws: self.mqtt_ws_listen.map(|listen| {
                let options = ListenerOptions {
                    allow_anonymous: anonymous_on(listen),
                    require_client_id: false,
                };
                (listen, options)
            }),
        })
    }
}
