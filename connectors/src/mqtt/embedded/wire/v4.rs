//! MQTT 3.1.1: the codec's packets as the broker's ([`Inbound`]), and the broker's
//! ([`Outbound`]) as the codec's. MQTT 3.1.1 has no DISCONNECT from the broker.

use rumqttc::mqttbytes::v4;

use super::error::WireError;
use super::packets::{Inbound, Outbound, Publish, SubRequest};
use crate::mqtt::packets::qos_v4;

pub(super) fn from_v4(p: v4::Packet) -> Result<Inbound, WireError> {
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
        other => return Err(WireError::UnexpectedPacket(format!("{other:?}"))),
    })
}

pub(super) fn to_v4(p: Outbound<'_>) -> Option<v4::Packet> {
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
