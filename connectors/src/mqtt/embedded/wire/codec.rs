//! [`Wire`]: one client's byte stream with the codec of its protocol level (both are
//! rumqttc's), which reads [`Inbound`] and writes [`Outbound`] packets; and the
//! connection's socket taken out of tokio while it is parked (see `park.rs`), and given
//! back with a fresh codec when it is served again.

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use super::error::{CodecError, WireError};
use super::packets::{Inbound, Outbound, Refusal};
use super::v4::{from_v4, to_v4};
use super::v5::{from_v5, to_v5};

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

/// One client's connection: its stream, read and written with the codec of its protocol
/// level, or its bare socket while it is parked.
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

/// The largest packet the broker sends, where the client sets no limit of its own.
pub(super) const MAX_OUTGOING: usize = 1024 * 1024;

impl Wire {
    /// Answers a CONNECT with a refusal; the caller then closes the connection.
    pub async fn refuse(&mut self, why: Refusal) {
        match self {
            Self::Parked { .. } | Self::Gone => {}
            Self::V4(f) => {
                let code = match why {
                    Refusal::ProtocolVersion => v4::ConnectReturnCode::RefusedProtocolVersion,
                    Refusal::ClientId => v4::ConnectReturnCode::BadClientId,
                    Refusal::BadCredentials => v4::ConnectReturnCode::BadUserNamePassword,
                    Refusal::NotAuthorized => v4::ConnectReturnCode::NotAuthorized,
                    Refusal::Quota => v4::ConnectReturnCode::ServiceUnavailable,
                };
                let _ = f
                    .send(v4::Packet::ConnAck(v4::ConnAck::new(code, false)))
                    .await;
            }
            Self::V5 { framed, .. } => {
                let code = match why {
                    Refusal::ProtocolVersion => v5::ConnectReturnCode::UnsupportedProtocolVersion,
                    Refusal::ClientId => v5::ConnectReturnCode::ClientIdentifierNotValid,
                    Refusal::BadCredentials => v5::ConnectReturnCode::BadUserNamePassword,
                    Refusal::NotAuthorized => v5::ConnectReturnCode::NotAuthorized,
                    Refusal::Quota => v5::ConnectReturnCode::QuotaExceeded,
                };
                let _ = framed
                    .send(v5::Packet::ConnAck(v5::ConnAck {
                        session_present: false,
                        code,
                        properties: None,
                    }))
                    .await;
            }
        }
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
    pub async fn recv(&mut self) -> Option<Result<Inbound, WireError>> {
        match self {
            Self::Parked { .. } | Self::Gone => Some(Err(WireError::Parked)),
            Self::V4(f) => Some(
                f.next()
                    .await?
                    .map_err(|e| CodecError::from(e).into())
                    .and_then(from_v4),
            ),
            Self::V5 { framed, .. } => Some(
                framed
                    .next()
                    .await?
                    .map_err(|e| CodecError::from(e).into())
                    .and_then(from_v5),
            ),
        }
    }

    /// Sends a packet. A PUBLISH larger than the client accepts is not sent (`Ok(false)`).
    pub async fn send(&mut self, packet: Outbound<'_>) -> Result<bool, WireError> {
        match self {
            Self::Parked { .. } | Self::Gone => Err(WireError::Parked),
            Self::V4(f) => match to_v4(packet) {
                Some(p) => f
                    .send(p)
                    .await
                    .map(|()| true)
                    .map_err(|e| CodecError::from(e).into()),
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
                    .map_err(|e| CodecError::from(e).into())
            }
        }
    }
}

/// Gives back the 8 KiB read and 8 KiB write buffers `Framed` sets aside for every
/// connection: an idle device then holds what its packets need (the buffers grow with
/// them), not 16 KiB. Bytes the client already sent after its CONNECT are kept.
pub(super) fn lean<T, U>(framed: &mut Framed<T, U>) {
    let unread = BytesMut::from(&framed.read_buffer()[..]);
    *framed.read_buffer_mut() = unread;
    *framed.write_buffer_mut() = BytesMut::new();
}
