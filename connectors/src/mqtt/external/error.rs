//! What can go wrong with the external broker: its configuration ([`ExternalError`],
//! found before connecting), a connection to it ([`LinkError`]: connecting, reading,
//! writing, the broker closing it), and a publish it did not confirm ([`PublishError`],
//! which the republish action retries).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::tokio_rustls::rustls::pki_types::InvalidDnsNameError;
use rumqttc::v5::mqttbytes;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, DisconnectReasonCode, PubAckReason};
use weir_engine::{Classify, ErrorClass};

/// How to reach the external broker is wrong: its URL, a setting, a TLS file.
#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    #[error("broker url '{url}': {message}")]
    Url { url: String, message: String },
    #[error("cannot read {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Classify for ExternalError {
    /// Flags or a connection's settings, as the operator gave them.
    fn class(&self) -> ErrorClass {
        ErrorClass::User
    }
}

/// Why a connection to the external broker failed, or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("no CONNACK within {0:?}")]
    NoConnAck(Duration),
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    /// Nagle's algorithm could not be turned off.
    #[error("{0}")]
    NoDelay(std::io::Error),
    #[error("'{host}' is not a valid TLS server name: {source}")]
    ServerName {
        host: String,
        source: InvalidDnsNameError,
    },
    #[error("TLS handshake with {host}: {source}")]
    TlsHandshake {
        host: String,
        source: std::io::Error,
    },
    #[error("the broker refused the connection: {code:?}{}", reason_suffix(.reason))]
    Refused {
        code: ConnectReturnCode,
        reason: Option<String>,
    },
    /// The first packet was another (its debug form).
    #[error("expected CONNACK, got {0}")]
    NotConnAck(String),
    #[error("the broker closed the connection before CONNACK")]
    ClosedBeforeConnAck,
    #[error("read: {0}")]
    Read(std::io::Error),
    #[error("write: {0}")]
    Write(std::io::Error),
    #[error("malformed packet from the broker: {0}")]
    Malformed(mqttbytes::Error),
    /// A packet weir could not encode (its debug form), such as one over the largest
    /// packet weir sends.
    #[error("cannot encode {packet}: {source}")]
    Encode {
        packet: String,
        source: mqttbytes::Error,
    },
    #[error("no answer from the broker within the keep-alive time ({0:?})")]
    NoPingResp(Duration),
    #[error("the broker closed the connection")]
    Closed,
    #[error("the broker disconnected weir: {code:?}{}", reason_suffix(.reason))]
    Disconnected {
        code: DisconnectReasonCode,
        reason: Option<String>,
    },
    #[error("the broker disconnected weir's publisher: {code:?}{}", reason_suffix(.reason))]
    PublisherDisconnected {
        code: DisconnectReasonCode,
        reason: Option<String>,
    },
    /// A packet the broker should not send (its debug form).
    #[error("unexpected packet from the broker: {0}")]
    Unexpected(String),
}

/// A broker's reason string, to append to a message.
fn reason_suffix(reason: &Option<String>) -> String {
    reason
        .as_ref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default()
}

impl Classify for LinkError {
    /// The broker and the network are external; a server name that is not one, or a
    /// packet too large to encode, is what weir was given.
    fn class(&self) -> ErrorClass {
        match self {
            Self::ServerName { .. } | Self::Encode { .. } => ErrorClass::User,
            _ => ErrorClass::External,
        }
    }
}

/// Why a publish to the external broker was not confirmed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// weir is stopping; the action tries again after the restart.
    #[error("the publisher stopped")]
    Stopped,
    #[error("no acknowledgement from the broker within {0:?}")]
    NoAck(Duration),
    /// A job answered without a result for this publish (it should not happen).
    #[error("not published")]
    NotPublished,
    #[error("the broker refused the publish: {0:?}")]
    Refused(PubAckReason),
    /// The connection failed before the broker confirmed the publish.
    #[error("connection to {url} failed: {error}")]
    ConnectionFailed { url: String, error: Arc<LinkError> },
    #[error(transparent)]
    Link(Arc<LinkError>),
}

impl Classify for PublishError {
    fn class(&self) -> ErrorClass {
        match self {
            Self::NotPublished => ErrorClass::Internal,
            Self::Link(e) => e.class(),
            _ => ErrorClass::External,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_name_the_broker_s_reason() {
        let e = LinkError::Disconnected {
            code: DisconnectReasonCode::SessionTakenOver,
            reason: Some("bye".into()),
        };
        assert_eq!(
            e.to_string(),
            "the broker disconnected weir: SessionTakenOver (bye)"
        );
        let e = LinkError::Refused {
            code: ConnectReturnCode::NotAuthorized,
            reason: None,
        };
        assert_eq!(
            e.to_string(),
            "the broker refused the connection: NotAuthorized"
        );
        let e = PublishError::ConnectionFailed {
            url: "mqtt://broker:1883".into(),
            error: Arc::new(LinkError::Closed),
        };
        assert_eq!(
            e.to_string(),
            "connection to mqtt://broker:1883 failed: the broker closed the connection"
        );
    }
}
