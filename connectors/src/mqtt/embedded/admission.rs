//! Who gets in, and what each client may do: the listeners (plain TCP, TLS, WebSocket)
//! and their handshakes, the limit on connections, a client's CONNECT (the rules on
//! client ids, authentication by password file or client certificate, the limit on
//! sessions), and the ACL's answer for each topic a client writes, reads or subscribes
//! to ([`Broker::allows`]). The password and ACL files themselves are in
//! [`access`](super::access).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::access::{Denied, Want};
use super::broker::Broker;
use super::client::{Admitted, Conn, Peer};
use super::error::ClientError;
use super::limits::{CONNECT_TIMEOUT, FOREVER_SECS};
use super::session::{Link, MAX_INFLIGHT};
use super::signals::Signals;
use super::tls::{self, ListenerOptions};
use super::wire::{Outbound, Refusal, Stream, Wire, WireError};
use super::ws;

/// How a listener's connections carry MQTT.
#[derive(Clone)]
enum Transport {
    Tcp,
    Tls(rumqttc::tokio_rustls::TlsAcceptor),
    WebSocket,
}

impl Broker {
    /// Accepts connections on `listener` until `cancel` fires.
    pub async fn serve(self, listener: TcpListener, cancel: CancellationToken) {
        let options = ListenerOptions {
            allow_anonymous: self.inner.access.allow_anonymous,
            require_client_id: false,
        };
        self.accept_loop(listener, Transport::Tcp, options, cancel)
            .await;
    }

    /// Accepts MQTT over WebSocket on `listener` until `cancel` fires (`--mqtt-ws-listen`).
    pub async fn serve_websocket(
        self,
        listener: TcpListener,
        options: ListenerOptions,
        cancel: CancellationToken,
    ) {
        self.accept_loop(listener, Transport::WebSocket, options, cancel)
            .await;
    }

    /// Accepts TLS connections on `listener` until `cancel` fires (`--mqtts-listen`). A
    /// client whose certificate the acceptor verified is identified by the certificate.
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        acceptor: rumqttc::tokio_rustls::TlsAcceptor,
        options: ListenerOptions,
        cancel: CancellationToken,
    ) {
        self.accept_loop(listener, Transport::Tls(acceptor), options, cancel)
            .await;
    }

    async fn accept_loop(
        self,
        listener: TcpListener,
        transport: Transport,
        options: ListenerOptions,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    // Parked connections are served again, to be told weir is stopping.
                    if let Some(Some((parker, _))) = self.inner.parker.get() {
                        parker.stop();
                    }
                    return;
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Ok(permit) = self.inner.connection_permits.clone().try_acquire_owned() else {
                            self.refused("max_connections");
                            tracing::debug!(%peer, "mqtt connection refused: {} clients are connected", self.inner.limits.max_connections);
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let broker = self.clone();
                        let cancel = cancel.clone();
                        let transport = transport.clone();
                        tokio::spawn(async move {
                            // The task holds only these and one boxed future at a time:
                            // the handshake's (a TLS session holds kilobytes) until it is
                            // done, then the connection's. Thousands of idle devices each
                            // hold a task.
                            let parkable = matches!(transport, Transport::Tcp);
                            let result = async {
                                let (io, identity) = Box::pin(broker.handshake(stream, &transport)).await?;
                                let mut client = Box::pin(broker.admit(io, peer, identity, options)).await?;
                                client.conn.parkable = parkable;
                                Box::pin(broker.serve_client(client, cancel, permit)).await
                            }
                            .await;
                            if let Err(e) = result {
                                tracing::debug!(%peer, error = %e, "mqtt connection closed");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "mqtt accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }

    /// The transport's handshake on a new connection: the byte stream MQTT runs over and,
    /// with a client certificate, its common name.
    async fn handshake(
        &self,
        stream: TcpStream,
        transport: &Transport,
    ) -> Result<(Stream, Option<String>), ClientError> {
        match transport {
            Transport::Tcp => Ok((Box::new(stream), None)),
            Transport::WebSocket => {
                let max = self.inner.limits.max_packet;
                match tokio::time::timeout(CONNECT_TIMEOUT, ws::accept(stream, max)).await {
                    Ok(Ok(ws)) => Ok((Box::new(ws), None)),
                    Ok(Err(e)) => {
                        self.refused("websocket");
                        Err(ClientError::WebSocket(Box::new(e)))
                    }
                    Err(_) => {
                        self.refused("websocket");
                        Err(ClientError::NoWebSocketHandshake(CONNECT_TIMEOUT))
                    }
                }
            }
            Transport::Tls(acceptor) => {
                match tokio::time::timeout(CONNECT_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let identity = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| tls::common_name(c));
                        Ok((Box::new(tls), identity))
                    }
                    Ok(Err(e)) => {
                        self.refused("tls");
                        Err(ClientError::Tls(e))
                    }
                    Err(_) => {
                        self.refused("tls");
                        Err(ClientError::NoTlsHandshake(CONNECT_TIMEOUT))
                    }
                }
            }
        }
    }

    /// Reads a client's CONNECT and lets it in (its CONNACK yet to be sent), or refuses
    /// it.
    pub(super) async fn admit(
        &self,
        stream: Stream,
        peer: SocketAddr,
        certificate: Option<String>,
        options: ListenerOptions,
    ) -> Result<Admitted, ClientError> {
        let (mut wire, mut connect) = Box::pin(Wire::accept(
            stream,
            self.inner.limits.max_packet,
            CONNECT_TIMEOUT,
        ))
        .await
        .inspect_err(|e| {
            if matches!(e, WireError::UnsupportedProtocol(_)) {
                self.refused("protocol");
            }
        })?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        if options.require_client_id
            && certificate
                .as_deref()
                .is_some_and(|cn| cn != connect.client_id)
        {
            self.refused("client_id");
            tracing::info!(
                %peer,
                client_id = connect.client_id,
                certificate = certificate.as_deref().unwrap_or(""),
                "mqtt client refused: its client id is not its certificate's name"
            );
            Box::pin(wire.refuse(Refusal::ClientId)).await;
            return Err(ClientError::NotTheCertificatesName);
        }
        let authenticated = match certificate {
            // A certificate the client CA signed is proof enough.
            Some(cn) => Ok(Some(cn)),
            None => self.inner.access.authenticate(
                connect.username.as_deref(),
                connect.password.as_deref().map(str::as_bytes),
                options.allow_anonymous,
            ),
        };
        let principal = match authenticated {
            Ok(principal) => principal.map(Arc::<str>::from),
            Err(denied) => {
                self.refused(denied.reason());
                // The username helps an operator find the device; the password is never
                // logged.
                tracing::info!(
                    %peer,
                    client_id = connect.client_id,
                    username = connect.username.as_deref().unwrap_or(""),
                    reason = denied.reason(),
                    "mqtt client refused"
                );
                Box::pin(wire.refuse(match denied {
                    Denied::Anonymous => Refusal::NotAuthorized,
                    Denied::BadCredentials => Refusal::BadCredentials,
                }))
                .await;
                return Err(ClientError::Refused(denied));
            }
        };
        let (client_id, assigned) = if connect.client_id.is_empty() {
            // MQTT 3.1.1 allows an empty id only with a clean session; MQTT 5 always, and
            // the CONNACK tells the client the id it got.
            if !connect.clean_start && !wire.is_v5() {
                self.refused("client_id");
                Box::pin(wire.refuse(Refusal::ClientId)).await;
                return Err(ClientError::EmptyClientId);
            }
            let assigned = format!("weir-anon-{id}");
            (assigned.clone(), wire.is_v5().then_some(assigned))
        } else {
            (connect.client_id.clone(), None)
        };
        let client_id: Arc<str> = Arc::from(client_id);
        let signals = Arc::new(Signals::default());
        let link = Link {
            conn: id,
            signals: signals.clone(),
        };
        let session_expiry = if connect.session_expiry >= FOREVER_SECS {
            u32::MAX
        } else {
            connect.session_expiry
        };
        let Some((session, present)) = self.attach(
            &client_id,
            connect.clean_start,
            link,
            principal.clone(),
            session_expiry,
        ) else {
            self.refused("max_sessions");
            tracing::warn!(
                %peer,
                %client_id,
                max = self.inner.limits.max_sessions,
                "mqtt client refused: the broker holds its maximum of sessions (--mqtt-max-sessions)"
            );
            Box::pin(wire.refuse(Refusal::Quota)).await;
            return Err(ClientError::MaxSessions);
        };
        tracing::debug!(%peer, %client_id, v5 = wire.is_v5(), present, "mqtt client connected");
        let peer = Peer {
            client_id: client_id.clone(),
            principal,
            source_ip: peer.ip(),
        };
        let max_keep_alive = self.inner.limits.max_keep_alive;
        let capped =
            wire.is_v5() && (connect.keep_alive == 0 || connect.keep_alive > max_keep_alive);
        let keep_alive = if capped {
            max_keep_alive
        } else {
            connect.keep_alive
        };
        let conn = Conn {
            v5: wire.is_v5(),
            wire,
            id,
            peer,
            session,
            signals,
            quota: connect.receive_max.min(MAX_INFLIGHT),
            alias_max: connect.topic_alias_max,
            aliases: None,
            acks: None,
            parkable: false,
        };
        Ok(Admitted {
            conn,
            // Only the will is needed from here on, not the rest of the CONNECT.
            will: connect.will.take(),
            keep_alive,
            connack: Outbound::ConnAck {
                session_present: present,
                assigned_client_id: assigned,
                server_keep_alive: capped.then_some(keep_alive),
            },
        })
    }

    /// Whether the ACL, if there is one, lets the client (`principal`, `None` when
    /// anonymous) do `want` with `topic`.
    pub(super) fn allows(
        &self,
        principal: Option<&str>,
        client_id: &str,
        want: Want,
        topic: &str,
    ) -> bool {
        self.inner
            .access
            .acl
            .as_ref()
            .is_none_or(|acl| acl.allows(principal, client_id, want, topic))
    }
}
