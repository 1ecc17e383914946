//! MQTT 5: the codec's packets as the broker's ([`Inbound`], a will as a [`Will`]), and
//! the broker's ([`Outbound`]) as the codec's, with the properties MQTT 5 adds: a
//! PUBLISH's properties both ways, reason codes, and the CONNACK that tells the client
//! what the broker allows.

use std::sync::Arc;

use rumqttc::v5::mqttbytes::v5;
use weir_engine::MqttProperties;

use super::error::WireError;
use super::packets::{
    Inbound, Outbound, Publish, RECEIVE_MAX, SubRefusal, SubRequest, TOPIC_ALIAS_MAX, Will,
};
use crate::mqtt::packets::{properties_from_v5, qos_v5};

pub(super) fn will_v5(w: v5::LastWill) -> Result<Will, WireError> {
    let topic = String::from_utf8(w.topic.to_vec()).map_err(|_| WireError::WillTopicNotUtf8)?;
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

pub(super) fn from_v5(p: v5::Packet) -> Result<Inbound, WireError> {
    Ok(match p {
        v5::Packet::Publish(p) => {
            let mut props = p.properties.unwrap_or_default();
            let topic = String::from_utf8(p.topic.to_vec()).map_err(|_| WireError::TopicNotUtf8)?;
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
        other => return Err(WireError::UnexpectedPacket(format!("{other:?}"))),
    })
}

pub(super) fn to_v5(p: Outbound<'_>, max_incoming: u32) -> v5::Packet {
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
