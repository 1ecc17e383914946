//! A new connection's CONNECT: the protocol level sniffed from its first bytes picks the
//! codec ([`Wire::accept`]), which reads the CONNECT, in MQTT 3.1.1 or MQTT 5, into one
//! [`Connect`]. An MQTT 3.1 client is told which protocols the broker speaks.

use std::time::Duration;

use bytes::BytesMut;
use futures_util::StreamExt;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;
use tokio::io::AsyncReadExt;
use tokio_util::codec::{Framed, FramedParts};

use super::codec::{MAX_OUTGOING, Stream, Wire, lean};
use super::error::WireError;
use super::packets::{Connect, Refusal, Will};
use super::v5::will_v5;

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
    ) -> Result<(Self, Connect), WireError> {
        let read_connect = async {
            let mut buf = BytesMut::with_capacity(256);
            let v5 = loop {
                match sniff(&buf) {
                    Sniff::V5 => break true,
                    Sniff::Other => break false,
                    Sniff::NeedMore => {
                        if stream.read_buf(&mut buf).await? == 0 {
                            return Err(WireError::ClosedBeforeConnect);
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
            .map_err(|_| WireError::NoConnect(timeout))?
    }

    async fn accept_v4(
        stream: Stream,
        buf: BytesMut,
        max_packet: usize,
    ) -> Result<(Self, Connect), WireError> {
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
            Some(Ok(other)) => Err(WireError::NotConnect(format!("{other:?}"))),
            Some(Err(e)) => {
                // An MQTT 3.1 client: say which protocols this broker speaks.
                if matches!(e, rumqttc::mqttbytes::Error::InvalidProtocolLevel(_)) {
                    Self::V4(framed).refuse(Refusal::ProtocolVersion).await;
                    return Err(WireError::UnsupportedProtocol(e));
                }
                Err(WireError::BadConnect(e.into()))
            }
            None => Err(WireError::ClosedBeforeConnect),
        }
    }

    async fn accept_v5(
        stream: Stream,
        buf: BytesMut,
        max_packet: usize,
    ) -> Result<(Self, Connect), WireError> {
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
            Some(Ok(other)) => Err(WireError::NotConnect(format!("{other:?}"))),
            Some(Err(e)) => Err(WireError::BadConnect(e.into())),
            None => Err(WireError::ClosedBeforeConnect),
        }
    }
}

#[cfg(test)]
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
