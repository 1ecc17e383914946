//! What both sides of weir's MQTT speak: QoS numbers as rumqttc's codec types, and the
//! MQTT 5 properties of a PUBLISH as the rules read them.

use rumqttc::v5::mqttbytes::v5;
use weir_engine::MqttProperties;

/// A QoS number (0, 1, 2) as the MQTT 3.1.1 codec's type.
pub(crate) fn qos_v4(q: u8) -> rumqttc::mqttbytes::QoS {
    match q {
        0 => rumqttc::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::mqttbytes::QoS::ExactlyOnce,
    }
}

/// A QoS number (0, 1, 2) as the MQTT 5 codec's type.
pub(crate) fn qos_v5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// The properties of a received MQTT 5 PUBLISH that rules can read.
pub(crate) fn properties_from_v5(p: v5::PublishProperties) -> MqttProperties {
    MqttProperties {
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
    }
}
