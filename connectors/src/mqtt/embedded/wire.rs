//! The embedded broker's connection to one client, in either MQTT 3.1.1 or MQTT 5: the
//! broker's session logic sees one set of packets ([`Inbound`], [`Outbound`]) and this
//! module reads and writes them with the codec of the version the client's CONNECT asked
//! for. Both codecs are rumqttc's.
//!
//! What MQTT 5 adds here: a PUBLISH's properties reach the rules (`get_mqtt_property()`,
//! `get_user_properties()`) and are forwarded to MQTT 5 subscribers; acknowledgements carry
//! reason codes; the CONNACK tells the client what this broker does not do (topic aliases,
//! shared subscriptions, subscription identifiers) and the client id it was given when it
//! sent none.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio_util::codec::{Framed, FramedParts};
use weir_engine::MqttProperties;

use crate::mqtt::packets::{properties_from_v5, qos_v4, qos_v5};

/// A client's byte stream: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    /// The stream itself, to be told apart: a plain TCP one can be parked.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any>;
}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}
pub type Stream = Box<dyn Io>;

/// A client's CONNECT, whichever version sent it.
pub struct Connect {
    pub client_id: String,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub username: Option<String>,
    /// Never logged.
    pub password: Option<String>,
    pub will: Option<Will>,
    /// How long the session outlives the connection, in seconds: MQTT 5's Session Expiry
    /// Interval (`u32::MAX`: for ever); for MQTT 3.1.1, 0 with a clean session and for
    /// ever without.
    pub session_expiry: u32,
    /// The most QoS 1 and 2 messages the client takes unacknowledged (MQTT 5's Receive
    /// Maximum; 65,535 when absent).
    pub receive_max: u16,
    /// The most topic aliases the client takes from the broker (0: none).
    pub topic_alias_max: u16,
}

/// A will message, published when its client goes without a DISCONNECT.
#[derive(Clone)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub properties: Option<Arc<MqttProperties>>,
    /// MQTT 5's Will Delay Interval, in seconds.
    pub delay: u32,
    /// MQTT 5's Message Expiry Interval of the will, in seconds.
    pub expiry: Option<u32>,
}

/// A PUBLISH from the client.
pub struct Publish {
    /// Empty when the client sent only a topic alias.
    pub topic: String,
    pub pkid: u16,
    /// 0, 1 or 2.
    pub qos: u8,
    pub retain: bool,
    pub payload: Bytes,
    pub properties: Option<Arc<MqttProperties>>,
    /// MQTT 5's Topic Alias.
    pub alias: Option<u16>,
    /// MQTT 5's Message Expiry Interval, in seconds.
    pub expiry: Option<u32>,
}

/// One filter of a SUBSCRIBE, with its options.
pub struct SubRequest {
    pub filter: String,
    pub qos: u8,
    /// MQTT 5: not sent what the client itself published.
    pub no_local: bool,
    /// MQTT 5: the retain flag as the publisher set it.
    pub retain_as_published: bool,
    /// MQTT 5: 0 send retained messages, 1 only for a new subscription, 2 never.
    pub retain_handling: u8,
}

/// A packet from the client after CONNECT.
pub enum Inbound {
    Publish(Publish),
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe {
        pkid: u16,
        filters: Vec<SubRequest>,
        /// MQTT 5's Subscription Identifier.
        id: Option<u32>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect {
        /// MQTT 5's reason 0x04: publish the will anyway.
        with_will: bool,
        /// MQTT 5: a new Session Expiry Interval.
        session_expiry: Option<u32>,
    },
}

/// A PUBLISH to the client.
pub struct OutPublish<'a> {
    /// Empty to send the alias alone.
    pub topic: &'a str,
    pub pkid: u16,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub payload: Bytes,
    pub properties: Option<&'a MqttProperties>,
    pub alias: Option<u16>,
    /// Seconds left of the message's expiry interval.
    pub expiry: Option<u32>,
    pub subscription_ids: &'a [u32],
}

/// A packet to the client.
pub enum Outbound<'a> {
    ConnAck {
        session_present: bool,
        /// The client id the broker chose, for a client that sent none.
        assigned_client_id: Option<String>,
        /// MQTT 5's Server Keep Alive: the keep-alive the client must use instead of its
        /// own.
        server_keep_alive: Option<u16>,
    },
    Publish(OutPublish<'a>),
    PubAck(u16),
    PubRec(u16),
    /// A PUBLISH the client may not send: MQTT 5 clients are told (0x87 Not authorized);
    /// MQTT 3.1.1 has no way to say so, so they get the plain acknowledgement, as from
    /// Mosquitto.
    PubAckDenied(u16),
    PubRecDenied(u16),
    PubRel(u16),
    PubComp(u16),
    /// The QoS granted per filter, or why it was refused.
    SubAck {
        pkid: u16,
        granted: Vec<Result<u8, SubRefusal>>,
    },
    UnsubAck {
        pkid: u16,
        count: usize,
    },
    PingResp,
    /// MQTT 5 only: why the broker closes the connection. MQTT 3.1.1 clients just see it
    /// close.
    Disconnect(v5::DisconnectReasonCode),
}

/// The most QoS 1 and 2 PUBLISHes an MQTT 5 client may have unacknowledged at the broker
/// (told in the CONNACK as Receive Maximum); one more closes the connection (0x93).
pub const RECEIVE_MAX: u16 = 100;
/// The most topic aliases an MQTT 5 client may set (told in the CONNACK).
pub const TOPIC_ALIAS_MAX: u16 = 10;

/// Why a connection was refused at CONNECT.
#[derive(Debug, Clone, Copy)]
pub enum Refusal {
    ProtocolVersion,
    ClientId,
    /// An unknown username or a wrong password.
    BadCredentials,
    /// No credentials where they are needed.
    NotAuthorized,
    /// The broker holds its maximum of sessions (3.1.1: 3, server unavailable; 5: 0x97).
    Quota,
}

/// Why a SUBSCRIBE filter was refused. MQTT 3.1.1 says 0x80 for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubRefusal {
    /// Not a valid topic filter (0x8F).
    Invalid,
    /// The ACL does not let the client read it (0x80).
    NotAuthorized,
    /// The client holds its maximum of subscriptions (0x97).
    Quota,
}

pub enum Wire {
    /// For the moment a connection's socket moves between tokio and the parker.
    Gone,
    /// Parked (see `park.rs`): the socket out of tokio, and what makes its codec again.
    /// (The largest packet the broker accepts is its own limit, given again on resuming;
    /// the variants are 16 bytes at most, as a parked connection holds its `Wire`.)
    Parked {
        tcp: std::net::TcpStream,
        /// 0 for MQTT 3.1.1; else the largest packet the client accepts.
        max_packet: u32,
    },
    V4(Box<Framed<Stream, v4::Codec>>),
    /// The largest packet the broker accepts from the client, told in the CONNACK, is its
    /// codec's `max_incoming_size`.
    V5 {
        framed: Box<Framed<Stream, v5::Codec>>,
        /// The largest packet this client accepts.
        max_packet: u32,
    },
}

/// How the error of [`Wire::accept`] starts when the client was refused for its protocol.
pub const UNSUPPORTED_PROTOCOL: &str = "unsupported protocol";

/// The largest packet the broker sends, where the client sets no limit of its own.
const MAX_OUTGOING: usize = 1024 * 1024;

/// What the first bytes of a connection say about its protocol.
enum Sniff {
    NeedMore,
    V5,
    /// MQTT 3.1.1, or something the 3.1.1 codec will refuse with the right error.
    Other,
}

/// Reads the protocol level out of the start of a CONNECT packet.
fn sniff(buf: &[u8]) -> Sniff {
    let Some(&first) = buf.first() else {
        return Sniff::NeedMore;
    };
    if first >> 4 != 1 {
        return Sniff::Other;
    }
    // The remaining length: 1 to 4 bytes, 7 bits each, the high bit says "more".
    let mut pos = 1;
    loop {
        let Some(&b) = buf.get(pos) else {
            return Sniff::NeedMore;
        };
        pos += 1;
        if b & 0x80 == 0 {
            break;
        }
        if pos > 4 {
            return Sniff::Other;
        }
    }
    // Protocol name ("MQTT", length-prefixed), then the level.
    match buf.get(pos..pos + 7) {
        None => Sniff::NeedMore,
        Some([0, 4, b'M', b'Q', b'T', b'T', 5]) => Sniff::V5,
        Some(_) => Sniff::Other,
    }
}

impl Wire {
    /// Reads the client's CONNECT, in whichever version it speaks. A CONNECT the broker
    /// refuses is answered (when the version allows) and returned as an error.
    pub async fn accept(
        mut stream: Stream,
        max_packet: usize,
        timeout: Duration,
    ) -> Result<(Self, Connect), String> {
        let read_connect = async {
            let mut buf = BytesMut::with_capacity(256);
            let v5 = loop {
                match sniff(&buf) {
                    Sniff::V5 => break true,
                    Sniff::Other => break false,
                    Sniff::NeedMore => {
                        if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                            return Err("closed before CONNECT".to_owned());
                        }
                    }
                }
            };
            if v5 {
                Self::accept_v5(stream, buf, max_packet).await
            } else {
                Self::accept_v4(stream, buf, max_packet).await
            }
        };
        tokio::time::timeout(timeout, read_connect)
            .await
            .map_err(|_| format!("no CONNECT within {timeout:?}"))?
    }

    async fn accept_v4(
        stream: Stream,
        buf: BytesMut,
        max_packet: usize,
    ) -> Result<(Self, Connect), String> {
        let codec = v4::Codec {
            max_incoming_size: max_packet,
            max_outgoing_size: MAX_OUTGOING.max(max_packet),
        };
        let mut parts = FramedParts::new(stream, codec);
        parts.read_buf = buf;
        let mut framed = Box::new(Framed::from_parts(parts));
        match framed.next().await {
            Some(Ok(v4::Packet::Connect(c))) => {
                let connect = Connect {
                    client_id: c.client_id,
                    clean_start: c.clean_session,
                    keep_alive: c.keep_alive,
                    username: c.login.as_ref().map(|l| l.username.clone()),
                    password: c.login.map(|l| l.password),
                    will: c.last_will.map(|w| Will {
                        topic: w.topic,
                        payload: w.message,
                        qos: w.qos as u8,
                        retain: w.retain,
                        properties: None,
                        delay: 0,
                        expiry: None,
                    }),
                    session_expiry: if c.clean_session { 0 } else { u32::MAX },
                    receive_max: u16::MAX,
                    topic_alias_max: 0,
                };
                lean(&mut framed);
                Ok((Self::V4(framed), connect))
            }
            Some(Ok(other)) => Err(format!("expected CONNECT, got {other:?}")),
            Some(Err(e)) => {
                // An MQTT 3.1 client: say which protocols this broker speaks.
                if matches!(e, rumqttc::mqttbytes::Error::InvalidProtocolLevel(_)) {
                    Self::V4(framed).refuse(Refusal::ProtocolVersion).await;
                    return Err(format!("{UNSUPPORTED_PROTOCOL}: {e}"));
                }
                Err(format!("bad CONNECT: {e}"))
            }
            None => Err("closed before CONNECT".to_owned()),
        }
    }

    async fn accept_v5(
        stream: Stream,
        buf: BytesMut,
        max_packet: usize,
    ) -> Result<(Self, Connect), String> {
        let limit = u32::try_from(max_packet).unwrap_or(u32::MAX);
        let codec = v5::Codec {
            max_incoming_size: Some(limit),
            max_outgoing_size: None,
        };
        let mut parts = FramedParts::new(stream, codec);
        parts.read_buf = buf;
        let mut framed = Box::new(Framed::from_parts(parts));
        match framed.next().await {
            Some(Ok(v5::Packet::Connect(c, will, login))) => {
                let ours = MAX_OUTGOING.max(max_packet);
                let client_max = c
                    .properties
                    .as_ref()
                    .and_then(|p| p.max_packet_size)
                    .filter(|&m| m > 0)
                    .map_or(ours, |m| (m as usize).min(ours));
                let props = c.properties.as_ref();
                let connect = Connect {
                    client_id: c.client_id,
                    clean_start: c.clean_start,
                    keep_alive: c.keep_alive,
                    username: login.as_ref().map(|l| l.username.clone()),
                    password: login.map(|l| l.password),
                    will: match will {
                        Some(w) => Some(will_v5(w)?),
                        None => None,
                    },
                    session_expiry: props.and_then(|p| p.session_expiry_interval).unwrap_or(0),
                    receive_max: props
                        .and_then(|p| p.receive_maximum)
                        .filter(|&n| n > 0)
                        .unwrap_or(u16::MAX),
                    topic_alias_max: props.and_then(|p| p.topic_alias_max).unwrap_or(0),
                };
                lean(&mut framed);
                Ok((
                    Self::V5 {
                        framed,
                        max_packet: u32::try_from(client_max).unwrap_or(u32::MAX),
                    },
                    connect,
                ))
            }
            Some(Ok(other)) => Err(format!("expected CONNECT, got {other:?}")),
            Some(Err(e)) => Err(format!("bad CONNECT: {e}")),
            None => Err("closed before CONNECT".to_owned()),
        }
    }

    /// Answers a CONNECT with a refusal; the caller then closes the connection.
    pub async fn refuse(&mut self, why: Refusal) {
        let _ = match self {
            Self::Parked { .. } | Self::Gone => Ok(()),
            Self::V4(f) => {
                let code = match why {
                    Refusal::ProtocolVersion => v4::ConnectReturnCode::RefusedProtocolVersion,
                    Refusal::ClientId => v4::ConnectReturnCode::BadClientId,
                    Refusal::BadCredentials => v4::ConnectReturnCode::BadUserNamePassword,
                    Refusal::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
                    Refusal::Quota => v4::ConnectReturnCode::ServiceUnavailable,
                };
                f.send(v4::Packet::ConnAck(v4::ConnAck::new(code, false)))
                    .await
                    .map_err(|e| e.to_string())
            }
            Self::V5 { framed, .. } => {
                let code = match why {
                    Refusal::ProtocolVersion => v5::ConnectReturnCode::UnsupportedProtocolVersion,
                    Refusal::ClientId => v5::ConnectReturnCode::ClientIdentifierNotValid,
                    Refusal::BadCredentials => v5::ConnectReturnCode::BadUserNamePassword,
                    Refusal::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
                    Refusal::Quota => v5::ConnectReturnCode::QuotaExceeded,
                };
                framed
                    .send(v5::Packet::ConnAck(v5::ConnAck {
                        session_present: false,
                        code,
                        properties: None,
                    }))
                    .await
                    .map_err(|e| e.to_string())
            }
        };
    }

    /// Whether the client speaks MQTT 5.
    pub fn is_v5(&self) -> bool {
        matches!(
            self,
            Self::V5 { .. }
                | Self::Parked {
                    max_packet: 1..,
                    ..
                }
        )
    }

    /// Whether nothing is buffered either way: the connection may be parked.
    pub fn is_quiet(&self) -> bool {
        match self {
            Self::V4(f) => f.read_buffer().is_empty() && f.write_buffer().is_empty(),
            Self::V5 { framed, .. } => {
                framed.read_buffer().is_empty() && framed.write_buffer().is_empty()
            }
            Self::Parked { .. } | Self::Gone => false,
        }
    }

    /// Takes the socket out of tokio (the stream must be plain TCP, and quiet: what is
    /// buffered either way would be lost).
    pub fn park(&mut self) -> std::io::Result<()> {
        if !self.is_quiet() {
            return Err(std::io::Error::other("bytes are buffered"));
        }
        let (io, v5) = match std::mem::replace(self, Self::Gone) {
            Self::V4(f) => (f.into_parts().io, 0),
            Self::V5 { framed, max_packet } => (framed.into_parts().io, max_packet.max(1)),
            other @ (Self::Parked { .. } | Self::Gone) => {
                *self = other;
                return Ok(());
            }
        };
        let tcp = io
            .into_any()
            .downcast::<tokio::net::TcpStream>()
            .map_err(|_| std::io::Error::other("only a plain TCP connection can be parked"))?;
        *self = Self::Parked {
            tcp: tcp.into_std()?,
            max_packet: v5,
        };
        Ok(())
    }

    /// The parked socket's descriptor.
    pub fn parked_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match self {
            Self::Parked { tcp, .. } => Some(tcp.as_raw_fd()),
            _ => None,
        }
    }

    /// Gives a parked socket back to tokio (on the current runtime), with its codec.
    pub fn resume(&mut self, max_packet: usize) -> std::io::Result<()> {
        let (tcp, v5) = match std::mem::replace(self, Self::Gone) {
            Self::Parked { tcp, max_packet } => (tcp, max_packet),
            other => {
                *self = other;
                return Ok(());
            }
        };
        let stream: Stream = Box::new(tokio::net::TcpStream::from_std(tcp)?);
        *self = match v5 {
            0 => {
                let codec = v4::Codec {
                    max_incoming_size: max_packet,
                    max_outgoing_size: MAX_OUTGOING.max(max_packet),
                };
                let mut framed = Box::new(Framed::new(stream, codec));
                lean(&mut framed);
                Self::V4(framed)
            }
            client_max => {
                let codec = v5::Codec {
                    max_incoming_size: Some(u32::try_from(max_packet).unwrap_or(u32::MAX)),
                    max_outgoing_size: None,
                };
                let mut framed = Box::new(Framed::new(stream, codec));
                lean(&mut framed);
                Self::V5 {
                    framed,
                    max_packet: client_max,
                }
            }
        };
        Ok(())
    }

    /// The next packet from the client; `None` when it closed the connection.
    pub async fn recv(&mut self) -> Option<Result<Inbound, String>> {
        match self {
            Self::Parked { .. } | Self::Gone => Some(Err("the connection is parked".to_owned())),
            Self::V4(f) => Some(f.next().await?.map_err(|e| e.to_string()).and_then(from_v4)),
            Self::V5 { framed, .. } => Some(
                framed
                    .next()
                    .await?
                    .map_err(|e| e.to_string())
                    .and_then(from_v5),
            ),
        }
    }

    /// Sends a packet. A PUBLISH larger than the client accepts is not sent (`Ok(false)`).
    pub async fn send(&mut self, packet: Outbound<'_>) -> Result<bool, String> {
        match self {
            Self::Parked { .. } | Self::Gone => Err("the connection is parked".to_owned()),
            Self::V4(f) => match to_v4(packet) {
                Some(p) => f.send(p).await.map(|()| true).map_err(|e| e.to_string()),
                None => Ok(true),
            },
            Self::V5 { framed, max_packet } => {
                let max_incoming = framed.codec().max_incoming_size.unwrap_or(u32::MAX);
                let p = to_v5(packet, max_incoming);
                if p.size() > *max_packet as usize {
                    return Ok(false);
                }
                framed
                    .send(p)
                    .await
                    .map(|()| true)
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// Gives back the 8 KiB read and 8 KiB write buffers `Framed` sets aside for every
/// connection: an idle device then holds what its packets need (the buffers grow with
/// them), not 16 KiB. Bytes the client already sent after its CONNECT are kept.
fn lean<T, U>(framed: &mut Framed<T, U>) {
    let unread = BytesMut::from(&framed.read_buffer()[..]);
    *framed.read_buffer_mut() = unread;
    *framed.write_buffer_mut() = BytesMut::new();
}

fn will_v5(w: v5::LastWill) -> Result<Will, String> {
    let topic =
        String::from_utf8(w.topic.to_vec()).map_err(|_| "will topic is not UTF-8".to_owned())?;
    let (properties, delay, expiry) = match w.properties {
        Some(p) => (
            Some(Arc::new(MqttProperties {
                payload_format_indicator: p.payload_format_indicator,
                content_type: p.content_type,
                response_topic: p.response_topic,
                correlation_data: p.correlation_data,
                user_properties: p.user_properties,
            })),
            p.delay_interval.unwrap_or(0),
            p.message_expiry_interval,
        ),
        None => (None, 0, None),
    };
    Ok(Will {
        topic,
        payload: w.message,
        qos: w.qos as u8,
        retain: w.retain,
        properties,
        delay,
        expiry,
    })
}

fn from_v4(p: v4::Packet) -> Result<Inbound, String> {
    Ok(match p {
        v4::Packet::Publish(p) => Inbound::Publish(Publish {
            topic: p.topic,
            pkid: p.pkid,
            qos: p.qos as u8,
            retain: p.retain,
            payload: p.payload,
            properties: None,
            alias: None,
            expiry: None,
        }),
        v4::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
        v4::Packet::PubRec(a) => Inbound::PubRec(a.pkid),
        v4::Packet::PubRel(r) => Inbound::PubRel(r.pkid),
        v4::Packet::PubComp(a) => Inbound::PubComp(a.pkid),
        v4::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| SubRequest {
                    filter: f.path,
                    qos: f.qos as u8,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: 0,
                })
                .collect(),
            id: None,
        },
        v4::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.topics,
        },
        v4::Packet::PingReq => Inbound::PingReq,
        v4::Packet::Disconnect => Inbound::Disconnect {
            with_will: false,
            session_expiry: None,
        },
        other => return Err(format!("unexpected packet {other:?}")),
    })
}

fn from_v5(p: v5::Packet) -> Result<Inbound, String> {
    Ok(match p {
        v5::Packet::Publish(p) => {
            let mut props = p.properties.unwrap_or_default();
            let topic = String::from_utf8(p.topic.to_vec())
                .map_err(|_| "topic name is not UTF-8".to_owned())?;
            let alias = props.topic_alias.take();
            let expiry = props.message_expiry_interval.take();
            Inbound::Publish(Publish {
                topic,
                pkid: p.pkid,
                qos: p.qos as u8,
                retain: p.retain,
                payload: p.payload,
                properties: Some(Arc::new(properties_from_v5(props))),
                alias,
                expiry,
            })
        }
        v5::Packet::PubAck(a) => Inbound::PubAck(a.pkid),
        v5::Packet::PubRec(a) => Inbound::PubRec(a.pkid),
        v5::Packet::PubRel(r) => Inbound::PubRel(r.pkid),
        v5::Packet::PubComp(a) => Inbound::PubComp(a.pkid),
        v5::Packet::Subscribe(s) => Inbound::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| SubRequest {
                    filter: f.path,
                    qos: f.qos as u8,
                    no_local: f.nolocal,
                    retain_as_published: f.preserve_retain,
                    retain_handling: match f.retain_forward_rule {
                        v5::RetainForwardRule::OnEverySubscribe => 0,
                        v5::RetainForwardRule::OnNewSubscribe => 1,
                        v5::RetainForwardRule::Never => 2,
                    },
                })
                .collect(),
            id: s
                .properties
                .and_then(|p| p.id)
                .map(|id| u32::try_from(id).unwrap_or(u32::MAX)),
        },
        v5::Packet::Unsubscribe(u) => Inbound::Unsubscribe {
            pkid: u.pkid,
            filters: u.filters,
        },
        v5::Packet::PingReq(_) => Inbound::PingReq,
        v5::Packet::Disconnect(d) => Inbound::Disconnect {
            with_will: d.reason_code == v5::DisconnectReasonCode::DisconnectWithWillMessage,
            session_expiry: d.properties.and_then(|p| p.session_expiry_interval),
        },
        other => return Err(format!("unexpected packet {other:?}")),
    })
}

fn to_v4(p: Outbound<'_>) -> Option<v4::Packet> {
    Some(match p {
        Outbound::ConnAck {
            session_present, ..
        } => v4::Packet::ConnAck(v4::ConnAck::new(
            v4::ConnectReturnCode::Success,
            session_present,
        )),
        Outbound::Publish(o) => {
            let mut p = v4::Publish::from_bytes(o.topic, qos_v4(o.qos), o.payload);
            p.pkid = o.pkid;
            p.retain = o.retain;
            p.dup = o.dup;
            v4::Packet::Publish(p)
        }
        Outbound::PubAck(pkid) | Outbound::PubAckDenied(pkid) => {
            v4::Packet::PubAck(v4::PubAck::new(pkid))
        }
        Outbound::PubRec(pkid) | Outbound::PubRecDenied(pkid) => {
            v4::Packet::PubRec(v4::PubRec::new(pkid))
        }
        Outbound::PubRel(pkid) => v4::Packet::PubRel(v4::PubRel::new(pkid)),
        Outbound::PubComp(pkid) => v4::Packet::PubComp(v4::PubComp::new(pkid)),
        Outbound::SubAck { pkid, granted } => v4::Packet::SubAck(v4::SubAck::new(
            pkid,
            granted
                .into_iter()
                .map(|g| match g {
                    Ok(q) => v4::SubscribeReasonCode::Success(qos_v4(q)),
                    Err(_) => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )),
        Outbound::UnsubAck { pkid, .. } => v4::Packet::UnsubAck(v4::UnsubAck::new(pkid)),
        Outbound::PingResp => v4::Packet::PingResp,
        Outbound::Disconnect(_) => return None,
    })
}

fn to_v5(p: Outbound<'_>, max_incoming: u32) -> v5::Packet {
    match p {
        Outbound::ConnAck {
            session_present,
            assigned_client_id,
            server_keep_alive,
        } => v5::Packet::ConnAck(v5::ConnAck {
            session_present,
            code: v5::ConnectReturnCode::Success,
            properties: Some(v5::ConnAckProperties {
                session_expiry_interval: None,
                receive_max: Some(RECEIVE_MAX),
                // QoS 2 and retained messages are available: absent says so.
                max_qos: None,
                retain_available: None,
                max_packet_size: Some(max_incoming),
                assigned_client_identifier: assigned_client_id,
                topic_alias_max: Some(TOPIC_ALIAS_MAX),
                reason_string: None,
                user_properties: Vec::new(),
                // Wildcards, subscription identifiers and shared subscriptions are
                // available: absent says so.
                wildcard_subscription_available: None,
                subscription_identifiers_available: None,
                shared_subscription_available: None,
                server_keep_alive,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            }),
        }),
        Outbound::Publish(o) => {
            let properties = o.properties;
            let props = v5::PublishProperties {
                payload_format_indicator: properties.and_then(|m| m.payload_format_indicator),
                message_expiry_interval: o.expiry,
                topic_alias: o.alias,
                response_topic: properties.and_then(|m| m.response_topic.clone()),
                correlation_data: properties.and_then(|m| m.correlation_data.clone()),
                user_properties: properties
                    .map(|m| m.user_properties.clone())
                    .unwrap_or_default(),
                subscription_identifiers: o.subscription_ids.iter().map(|&i| i as usize).collect(),
                content_type: properties.and_then(|m| m.content_type.clone()),
            };
            let empty = props == v5::PublishProperties::default();
            let mut p =
                v5::Publish::new(o.topic, qos_v5(o.qos), o.payload, (!empty).then_some(props));
            p.pkid = o.pkid;
            p.retain = o.retain;
            p.dup = o.dup;
            v5::Packet::Publish(p)
        }
        Outbound::PubAck(pkid) => v5::Packet::PubAck(v5::PubAck::new(pkid, None)),
        Outbound::PubRec(pkid) => v5::Packet::PubRec(v5::PubRec::new(pkid, None)),
        Outbound::PubAckDenied(pkid) => v5::Packet::PubAck(v5::PubAck {
            pkid,
            reason: v5::PubAckReason::NotAuthorized,
            properties: None,
        }),
        Outbound::PubRecDenied(pkid) => v5::Packet::PubRec(v5::PubRec {
            pkid,
            reason: v5::PubRecReason::NotAuthorized,
            properties: None,
        }),
        Outbound::PubRel(pkid) => v5::Packet::PubRel(v5::PubRel::new(pkid, None)),
        Outbound::PubComp(pkid) => v5::Packet::PubComp(v5::PubComp::new(pkid, None)),
        Outbound::SubAck { pkid, granted } => v5::Packet::SubAck(v5::SubAck {
            pkid,
            return_codes: granted
                .into_iter()
                .map(|g| match g {
                    Ok(q) => v5::SubscribeReasonCode::Success(qos_v5(q)),
                    Err(SubRefusal::Invalid) => v5::SubscribeReasonCode::TopicFilterInvalid,
                    // 0x80 rather than 0x87, as the Paho suite and Mosquitto expect: some
                    // clients take nothing else for a refusal.
                    Err(SubRefusal::NotAuthorized) => v5::SubscribeReasonCode::Unspecified,
                    Err(SubRefusal::Quota) => v5::SubscribeReasonCode::QuotaExceeded,
                })
                .collect(),
            properties: None,
        }),
        Outbound::UnsubAck { pkid, count } => v5::Packet::UnsubAck(v5::UnsubAck {
            pkid,
            reasons: vec![v5::UnsubAckReason::Success; count],
            properties: None,
        }),
        Outbound::PingResp => v5::Packet::PingResp(v5::PingResp),
        Outbound::Disconnect(reason_code) => v5::Packet::Disconnect(v5::Disconnect {
            reason_code,
            properties: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_the_protocol_level() {
        // CONNECT, remaining length 16, "MQTT", level 5.
        let v5 = [0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 5, 2];
        assert!(matches!(sniff(&v5), Sniff::V5));
        let v4 = [0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 2];
        assert!(matches!(sniff(&v4), Sniff::Other));
        // MQTT 3.1 ("MQIsdp") goes to the 3.1.1 codec, which refuses it.
        let v3 = [0x10, 18, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3];
        assert!(matches!(sniff(&v3), Sniff::Other));
        // A two-byte remaining length.
        let long = [0x10, 0x80, 0x01, 0, 4, b'M', b'Q', b'T', b'T', 5];
        assert!(matches!(sniff(&long), Sniff::V5));
        assert!(matches!(sniff(&v5[..5]), Sniff::NeedMore));
        assert!(matches!(sniff(&[]), Sniff::NeedMore));
        assert!(matches!(sniff(&[0x30, 1, 2]), Sniff::Other));
    }
}
