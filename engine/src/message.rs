//! A message as the ingress hands it to the rules, and what travels with it: the
//! publisher's identity, the PUBLISH's MQTT 5 properties, and the acknowledgement that
//! tells the source once every rule and action is done with it.

use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Classify, ErrorClass};

/// One message as the ingress received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: String,
    /// The publishing client's MQTT client id, where the ingress knows it.
    pub client_id: Option<String>,
    /// Who the publisher authenticated as (the MQTT username), where the ingress knows it.
    pub principal: Option<String>,
    /// The publisher's IP address, where the ingress knows it.
    pub source_ip: Option<String>,
    pub payload: Bytes,
    /// When weir received the message, in milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// A number unique to this message within this weir process ([`next_seq`]); the
    /// message's `traceid()` derives from it.
    pub seq: u64,
    /// The PUBLISH packet's MQTT 5 properties; `None` for a message that came over MQTT
    /// 3.1.1 (or HTTP), where `get_mqtt_property()` and `get_user_properties()` are
    /// Undefined.
    pub properties: Option<Arc<MqttProperties>>,
    /// Acknowledges the message to its source once every holder has let go of it.
    pub ack: Ack,
    /// Whether the message is a client's will, which the broker published for it when it
    /// went away: the rules see it, weir's own services (device shadows) do not, as on AWS.
    pub will: bool,
}

/// Acknowledges a message to its source (an external MQTT broker) when the last clone of
/// it is dropped: every rule that matched it is done with it, and every action has either
/// delivered its output or written it to its disk buffer. Cloning shares the one
/// acknowledgement. The default acknowledges nothing.
#[derive(Clone, Default)]
pub struct Ack(Option<Arc<AckOnDrop>>);

struct AckOnDrop(std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>);

impl Drop for AckOnDrop {
    fn drop(&mut self) {
        let f = self.0.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(f) = f {
            f();
        }
    }
}

impl Ack {
    /// An acknowledgement that runs `f` when the last clone is dropped.
    pub fn on_drop(f: impl FnOnce() + Send + 'static) -> Self {
        Self(Some(Arc::new(AckOnDrop(std::sync::Mutex::new(Some(
            Box::new(f),
        ))))))
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Ack(pending)"
        } else {
            "Ack(none)"
        })
    }
}

/// Acknowledgements do not take part in comparing messages.
impl PartialEq for Ack {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Message {
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Self {
            topic: topic.into(),
            client_id: None,
            principal: None,
            source_ip: None,
            payload: payload.into(),
            received_at_ms: now_ms(),
            seq: next_seq(),
            properties: None,
            ack: Ack::default(),
            will: false,
        }
    }

    /// The message's trace id, as AWS's `traceid()` gives it: a UUID (version 4 layout)
    /// made of a number drawn once per process and the message's [`Message::seq`].
    pub fn trace_id(&self) -> String {
        trace_id(self.seq)
    }

    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }
}

/// The MQTT 5 properties of a PUBLISH that rules can read (`get_mqtt_property()`,
/// `get_user_properties()`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MqttProperties {
    /// 1: the payload is UTF-8 text; 0 or absent: unspecified bytes.
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    /// In the order the publisher sent them; a key may repeat.
    pub user_properties: Vec<(String, String)>,
}

impl MqttProperties {
    /// The value `get_mqtt_property(name)` gives, as AWS names them: `format_indicator`
    /// (`UTF8_DATA` or `UNSPECIFIED_BYTES`), `content_type`, `response_topic` and
    /// `correlation_data` (base64). `None` is Undefined.
    pub fn get(&self, name: &str) -> Option<String> {
        use base64::Engine as _;
        match name {
            "format_indicator" => Some(
                if self.payload_format_indicator == Some(1) {
                    "UTF8_DATA"
                } else {
                    "UNSPECIFIED_BYTES"
                }
                .to_owned(),
            ),
            "content_type" => self.content_type.clone(),
            "response_topic" => self.response_topic.clone(),
            "correlation_data" => self
                .correlation_data
                .as_ref()
                .map(|d| base64::engine::general_purpose::STANDARD.encode(d)),
            _ => None,
        }
    }

    /// The names [`Self::get`] knows.
    pub const NAMES: [&str; 4] = [
        "content_type",
        "format_indicator",
        "response_topic",
        "correlation_data",
    ];

    /// Reads the JSON form that the rule test endpoint and the golden tests take:
    /// `{"content_type": "...", "format_indicator": "UTF8_DATA", "response_topic": "...",
    /// "correlation_data": "<base64>", "user_properties": [{"key": "value"}, ...]}`.
    pub fn from_json(v: &serde_json::Value) -> Result<Self, PropertiesError> {
        use base64::Engine as _;
        let obj = v.as_object().ok_or(PropertiesError::NotAnObject)?;
        let mut p = Self::default();
        let text = |key: &str, v: &serde_json::Value| {
            v.as_str()
                .map(str::to_owned)
                .ok_or_else(|| PropertiesError::NotAString(key.to_owned()))
        };
        for (key, value) in obj {
            match key.as_str() {
                "content_type" => p.content_type = Some(text(key, value)?),
                "response_topic" => p.response_topic = Some(text(key, value)?),
                "format_indicator" => {
                    p.payload_format_indicator = Some(match text(key, value)?.as_str() {
                        "UTF8_DATA" => 1,
                        "UNSPECIFIED_BYTES" => 0,
                        other => {
                            return Err(PropertiesError::FormatIndicator(other.to_owned()));
                        }
                    })
                }
                "correlation_data" => {
                    let b = base64::engine::general_purpose::STANDARD
                        .decode(text(key, value)?)
                        .map_err(PropertiesError::CorrelationData)?;
                    p.correlation_data = Some(Bytes::from(b));
                }
                "user_properties" => {
                    let bad = || PropertiesError::UserProperties;
                    for item in value.as_array().ok_or_else(bad)? {
                        for (k, v) in item.as_object().ok_or_else(bad)? {
                            p.user_properties
                                .push((k.clone(), v.as_str().ok_or_else(bad)?.to_owned()));
                        }
                    }
                }
                other => {
                    return Err(PropertiesError::Unknown(other.to_owned()));
                }
            }
        }
        Ok(p)
    }
}

/// Why the JSON form of MQTT properties was refused (see [`MqttProperties::from_json`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PropertiesError {
    #[error("MQTT properties must be a JSON object")]
    NotAnObject,
    #[error("{0} must be a string")]
    NotAString(String),
    #[error("format_indicator must be UTF8_DATA or UNSPECIFIED_BYTES, not '{0}'")]
    FormatIndicator(String),
    #[error("correlation_data is not base64: {0}")]
    CorrelationData(base64::DecodeError),
    #[error("user_properties must be an array of {{\"key\": \"value\"}} objects")]
    UserProperties,
    #[error(
        "unknown MQTT property '{0}' (known: {known}, user_properties)",
        known = MqttProperties::NAMES.join(", ")
    )]
    Unknown(String),
}

impl Classify for PropertiesError {
    fn class(&self) -> ErrorClass {
        ErrorClass::User
    }
}

/// The next message sequence number (see [`Message::seq`]).
pub fn next_seq() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The trace id of the message with sequence number `seq`.
pub fn trace_id(seq: u64) -> String {
    use std::hash::{BuildHasher, Hasher};
    static NONCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let nonce = *NONCE.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    });
    let hi = (nonce & !0xf000) | 0x4000; // version 4
    let lo = (seq & !(0b11 << 62)) | (0b10 << 62); // RFC 4122 variant
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
