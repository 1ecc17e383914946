//! One MQTT 5 connection to an external broker, without an event loop around it: weir's
//! ingress and its publisher each drive one from a thread of their own.
//!
//! Why not rumqttc's client: its event loop hands over one packet per poll, reads at most
//! ten packets per wake-up from an 8 KB buffer, and writes and flushes every request on
//! its own. At 200,000 messages a second that machinery cost more CPU than the rules did.
//! Here a read takes whatever the socket holds (up to [`READ_BUFFER`]), every complete
//! packet in it is decoded at once, and the packets to send are queued in one buffer and
//! written with one call. The packets themselves are encoded and decoded by rumqttc's
//! MQTT 5 codec.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::TlsConfiguration;
use rumqttc::tokio_rustls::TlsConnector;
use rumqttc::tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use rumqttc::v5::mqttbytes;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, Connect, ConnectProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode,
    Login, Packet, PingReq,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::{Endpoint, ExternalConfig};
use super::error::{ExternalError, LinkError};

/// Bytes a read may take from the socket at once.
pub(super) const READ_BUFFER: usize = 64 * 1024;

/// The least time between two reads of the ingress connection, and of the publisher's
/// while it waits for PUBACKs (each one, written by the broker on its own, would wake a
/// thread parked in `epoll_wait`). A message that arrives after a quiet spell is read at
/// once; under load, each read takes what a millisecond brought (about 200 messages at
/// 200,000 a second) instead of the few that came since the last one, and the rules get
/// batches instead of trickles. At 200,000 messages a second, reading as soon as
/// anything arrived cost one `recvfrom`, one `epoll_wait` and a context switch per 9
/// messages.
///
/// The pause is a sleep of the connection's own thread (it runs nothing else), not of
/// its task: a thread parked in `epoll_wait` (as a tokio timer parks it) is woken by
/// every segment that arrives on a socket registered there, and the broker pays for each
/// wake-up on its side of the write. A thread in `nanosleep` is not woken; the next read
/// finds what came meanwhile.
pub(super) const READ_PACE: Duration = Duration::from_millis(1);

/// Runs `task` on a thread named `name` with a current-thread runtime of its own, so
/// that the thread can pause between reads with a sleep (see [`READ_PACE`]). `what`
/// names it in the error if the thread cannot start.
pub(super) fn spawn_thread(
    name: &str,
    what: &'static str,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(task),
                Err(e) => tracing::error!("{what} cannot start: {e}"),
            }
        });
    if let Err(e) = spawned {
        tracing::error!("{what} cannot start: {e}");
    }
}

/// Largest packet weir sends or accepts on an external broker connection.
pub(super) const MAX_PACKET: u32 = 1024 * 1024;

/// Time allowed for TCP, TLS and the CONNECT/CONNACK exchange together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// How to reach the broker: resolved once, used for every (re)connection.
pub(super) struct Dialer {
    endpoint: Endpoint,
    tls: Option<TlsConnector>,
}

impl Dialer {
    /// Reads the TLS files now, so that a wrong path or a bad PEM file stops weir at
    /// startup instead of failing every connection attempt.
    pub(super) fn new(config: &ExternalConfig) -> Result<Self, ExternalError> {
        let endpoint = config.endpoint()?;
        let tls = if endpoint.tls {
            Some(TlsConnector::from(tls_config(config)?))
        } else {
            None
        };
        Ok(Self { endpoint, tls })
    }

    /// Connects, sends CONNECT and waits for a successful CONNACK.
    pub(super) async fn connect(
        &self,
        connect: Connect,
        login: Option<Login>,
    ) -> Result<(Link, ConnAck), LinkError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.connect_inner(connect, login))
            .await
            .map_err(|_| LinkError::NoConnAck(CONNECT_TIMEOUT))?
    }

    async fn connect_inner(
        &self,
        connect: Connect,
        login: Option<Login>,
    ) -> Result<(Link, ConnAck), LinkError> {
        let ep = &self.endpoint;
        let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .map_err(|source| LinkError::Connect {
                host: ep.host.clone(),
                port: ep.port,
                source,
            })?;
        // Each packet goes out as soon as it is written: with Nagle's algorithm a small
        // write waits for the previous one's ACK, which a delayed ACK holds up to 40 ms.
        tcp.set_nodelay(true).map_err(LinkError::NoDelay)?;
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some(connector) => {
                let name = ServerName::try_from(ep.host.clone()).map_err(|source| {
                    LinkError::ServerName {
                        host: ep.host.clone(),
                        source,
                    }
                })?;
                Box::new(connector.connect(name, tcp).await.map_err(|source| {
                    LinkError::TlsHandshake {
                        host: ep.host.clone(),
                        source,
                    }
                })?)
            }
        };
        let mut link = Link {
            io,
            rbuf: BytesMut::with_capacity(READ_BUFFER),
            wbuf: BytesMut::with_capacity(4096),
        };
        link.queue(&Packet::Connect(connect, None, login))?;
        link.flush().await?;
        loop {
            if let Some(packet) = link.next_packet()? {
                return match packet {
                    Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success => {
                        Ok((link, ack))
                    }
                    Packet::ConnAck(ack) => Err(LinkError::Refused {
                        code: ack.code,
                        reason: ack.properties.and_then(|p| p.reason_string),
                    }),
                    other => Err(LinkError::NotConnAck(format!("{other:?}"))),
                };
            }
            if link.read().await? == 0 {
                return Err(LinkError::ClosedBeforeConnAck);
            }
        }
    }
}

/// The CONNECT packet for `config`, and its login.
pub(super) fn connect_packet(
    config: &ExternalConfig,
    client_id: &str,
    clean_start: bool,
) -> (Connect, Option<Login>) {
    let properties = ConnectProperties {
        // MQTT 3.1.1's persistent session lasts until the client cleans it; in MQTT 5 it
        // ends with the connection unless it is given an expiry (u32::MAX: never).
        session_expiry_interval: (!clean_start).then_some(u32::MAX),
        max_packet_size: Some(MAX_PACKET),
        ..ConnectProperties::new()
    };
    let connect = Connect {
        keep_alive: config.keep_alive.as_secs().min(u64::from(u16::MAX)) as u16,
        client_id: client_id.to_owned(),
        clean_start,
        properties: Some(properties),
    };
    let login = config
        .username
        .as_ref()
        .map(|u| Login::new(u.clone(), config.password.clone().unwrap_or_default()));
    (connect, login)
}

fn tls_config(config: &ExternalConfig) -> Result<Arc<ClientConfig>, ExternalError> {
    let read = |p: &std::path::PathBuf| {
        std::fs::read(p).map_err(|source| ExternalError::File {
            path: p.clone(),
            source,
        })
    };
    let bad = |what: &str, p: &std::path::PathBuf, e: &dyn std::fmt::Display| {
        ExternalError::Invalid(format!("{what} {}: {e}", p.display()))
    };
    let Some(ca_file) = &config.ca_file else {
        if config.client_cert.is_some() {
            return Err(ExternalError::Invalid(
                "mutual TLS needs the broker's CA file too (--broker-ca-file)".to_owned(),
            ));
        }
        // The system's roots.
        return match TlsConfiguration::default() {
            TlsConfiguration::Rustls(c) => Ok(c),
            _ => Err(ExternalError::Invalid(
                "no TLS configuration for the system's roots".to_owned(),
            )),
        };
    };
    let mut roots = RootCertStore::empty();
    let ca = read(ca_file)?;
    for cert in CertificateDer::pem_slice_iter(&ca) {
        let cert = cert.map_err(|e| bad("CA file", ca_file, &e))?;
        roots.add(cert).map_err(|e| bad("CA file", ca_file, &e))?;
    }
    if roots.is_empty() {
        return Err(bad("CA file", ca_file, &"holds no certificate"));
    }
    let builder = ClientConfig::builder().with_root_certificates(roots);
    let tls = match (&config.client_cert, &config.client_key) {
        (Some(cert_file), Some(key_file)) => {
            let pem = read(cert_file)?;
            let chain = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad("client certificate", cert_file, &e))?;
            if chain.is_empty() {
                return Err(bad(
                    "client certificate",
                    cert_file,
                    &"holds no certificate",
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(&read(key_file)?)
                .map_err(|e| bad("client key", key_file, &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("client certificate", cert_file, &e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(tls))
}

/// An established connection: a read buffer, a write buffer and the stream.
pub(super) struct Link {
    io: Box<dyn Io>,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl Link {
    /// Reads what the socket has (at least one byte) into the read buffer; 0 when the
    /// broker closed the connection. Cancel safe: a read that did not finish took nothing.
    pub(super) async fn read(&mut self) -> Result<usize, LinkError> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_BUFFER / 4 {
            // Decoded packets were split off the front; what is left is a partial packet.
            self.rbuf.reserve(READ_BUFFER);
        }
        self.io
            .read_buf(&mut self.rbuf)
            .await
            .map_err(LinkError::Read)
    }

    /// The next complete packet in the read buffer, if there is one.
    pub(super) fn next_packet(&mut self) -> Result<Option<Packet>, LinkError> {
        match Packet::read(&mut self.rbuf, Some(MAX_PACKET)) {
            Ok(p) => Ok(Some(p)),
            Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(LinkError::Malformed(e)),
        }
    }

    /// Queues a packet; [`Self::flush`] writes what is queued.
    pub(super) fn queue(&mut self, packet: &Packet) -> Result<(), LinkError> {
        packet
            .write(&mut self.wbuf, Some(MAX_PACKET))
            .map(|_| ())
            .map_err(|source| LinkError::Encode {
                packet: format!("{packet:?}"),
                source,
            })
    }

    /// Says goodbye (DISCONNECT, normal) when weir stops; gives up after a second.
    pub(super) async fn goodbye(&mut self) {
        let bye = Packet::Disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection));
        if self.queue(&bye).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.flush()).await;
        }
    }

    /// Writes everything queued, in one write where the socket takes it.
    pub(super) async fn flush(&mut self) -> Result<(), LinkError> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.io
            .write_all(&self.wbuf)
            .await
            .map_err(LinkError::Write)?;
        self.wbuf.clear();
        self.io.flush().await.map_err(LinkError::Write)
    }
}

/// Keeps a connection alive: a PINGREQ every keep-alive interval (none if it is zero).
/// The connection is dead when nothing at all came from the broker between one PINGREQ
/// and the next: a PINGRESP may be queued behind messages, but anything that arrived
/// shows that the broker is there.
pub(super) struct KeepAlive {
    interval: Duration,
    due: Instant,
    sent: Option<Instant>,
    last_heard: Instant,
}

impl KeepAlive {
    pub(super) fn new(interval: Duration) -> Self {
        let now = Instant::now();
        Self {
            interval,
            due: now + interval,
            sent: None,
            last_heard: now,
        }
    }

    pub(super) fn enabled(&self) -> bool {
        !self.interval.is_zero()
    }

    /// When the next PINGREQ is due.
    pub(super) fn due(&self) -> Instant {
        self.due
    }

    /// Something came from the broker.
    pub(super) fn heard(&mut self) {
        self.last_heard = Instant::now();
    }

    /// A PINGRESP came.
    pub(super) fn answered(&mut self) {
        self.sent = None;
    }

    /// Queues a PINGREQ, or fails if the broker said nothing since the last one.
    pub(super) fn ping(&mut self, link: &mut Link) -> Result<(), LinkError> {
        if self.sent.is_some_and(|sent| self.last_heard < sent) {
            return Err(LinkError::NoPingResp(self.interval));
        }
        link.queue(&Packet::PingReq(PingReq))?;
        let now = Instant::now();
        self.sent = Some(now);
        self.due = now + self.interval;
        Ok(())
    }
}

/// Connections to the broker, one after the other: a new one after each failure, with a
/// wait that grows with the failures in a row (100 ms more per failure, at most 5 s) and a
/// log line for the first failure and every 20th.
pub(super) struct Reconnect {
    connect: Connect,
    login: Option<Login>,
    /// What the connection is for, in log lines: `broker`, `publisher`.
    what: &'static str,
    failures: u32,
}

impl Reconnect {
    pub(super) fn new(connect: Connect, login: Option<Login>, what: &'static str) -> Self {
        Self {
            connect,
            login,
            what,
            failures: 0,
        }
    }

    /// The next connection, once one is made; `None` if weir stops meanwhile.
    pub(super) async fn connect(
        &mut self,
        dialer: &Dialer,
        url: &str,
        cancel: &CancellationToken,
    ) -> Option<(Link, ConnAck)> {
        loop {
            let connected = tokio::select! {
                _ = cancel.cancelled() => return None,
                c = dialer.connect(self.connect.clone(), self.login.clone()) => c,
            };
            match connected {
                Ok((link, ack)) => {
                    self.failures = 0;
                    tracing::info!(broker = %url, session_present = ack.session_present, "{} connected", self.what);
                    return Some((link, ack));
                }
                Err(e) => {
                    if !self.lost(url, cancel, &e).await {
                        return None;
                    }
                }
            }
        }
    }

    /// A connection failed with `error`: logs it and waits before the next attempt; false
    /// if weir stops meanwhile.
    pub(super) async fn lost(
        &mut self,
        url: &str,
        cancel: &CancellationToken,
        error: &LinkError,
    ) -> bool {
        self.failures += 1;
        let wait = Duration::from_millis(100 * u64::from(self.failures.min(50)));
        if self.failures == 1 || self.failures.is_multiple_of(20) {
            tracing::warn!(broker = %url, error = %error, retry_in = ?wait, "{} connection failed", self.what);
        }
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }
}
