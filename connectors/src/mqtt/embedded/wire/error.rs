//! What can go wrong between the broker and a client's bytes ([`WireError`]): the
//! connection closes or fails, the client sends what is not MQTT, or not what its
//! protocol level allows at that point.

use std::time::Duration;

use rumqttc::mqttbytes as v4;
use rumqttc::v5::mqttbytes as v5;
use weir_engine::{Classify, ErrorClass};

/// Why reading or writing a client's packets failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The stream failed while the CONNECT was read.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("closed before CONNECT")]
    ClosedBeforeConnect,
    #[error("no CONNECT within {0:?}")]
    NoConnect(Duration),
    /// The first packet was another (its debug form).
    #[error("expected CONNECT, got {0}")]
    NotConnect(String),
    /// An MQTT 3.1 client (or an unknown level), told which protocols the broker speaks.
    #[error("unsupported protocol: {0}")]
    UnsupportedProtocol(v4::Error),
    #[error("bad CONNECT: {0}")]
    BadConnect(CodecError),
    #[error("will topic is not UTF-8")]
    WillTopicNotUtf8,
    #[error("topic name is not UTF-8")]
    TopicNotUtf8,
    /// A packet a client does not send to a broker (its debug form).
    #[error("unexpected packet {0}")]
    UnexpectedPacket(String),
    /// A packet could not be decoded or encoded, or the stream failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("the connection is parked")]
    Parked,
}

impl WireError {
    /// Whether the client sent a packet larger than the broker accepts.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            Self::Codec(
                CodecError::V4(v4::Error::PayloadSizeLimitExceeded(_))
                    | CodecError::V5(v5::Error::PayloadSizeLimitExceeded { .. })
            )
        )
    }
}

impl Classify for WireError {
    fn class(&self) -> ErrorClass {
        match self {
            Self::Io(_) | Self::ClosedBeforeConnect | Self::NoConnect(_) => ErrorClass::External,
            Self::Codec(e) => e.class(),
            Self::NotConnect(_)
            | Self::UnsupportedProtocol(_)
            | Self::BadConnect(_)
            | Self::WillTopicNotUtf8
            | Self::TopicNotUtf8
            | Self::UnexpectedPacket(_) => ErrorClass::User,
            Self::Parked => ErrorClass::Internal,
        }
    }
}

/// An error of the codec of either protocol level (rumqttc's).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error(transparent)]
    V4(#[from] v4::Error),
    #[error(transparent)]
    V5(#[from] v5::Error),
}

impl Classify for CodecError {
    /// The stream failing is the network's; anything else, what the client sent.
    fn class(&self) -> ErrorClass {
        match self {
            Self::V4(v4::Error::Io(_)) | Self::V5(v5::Error::Io(_)) => ErrorClass::External,
            _ => ErrorClass::User,
        }
    }
}
