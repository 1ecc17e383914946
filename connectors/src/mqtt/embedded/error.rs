//! Why a client was refused or its connection ended ([`ClientError`]), as the broker logs
//! it (at debug level: a device that goes is no operator's concern).

use std::time::Duration;

use weir_engine::{Classify, ErrorClass};

use super::access::Denied;
use super::limits::WRITE_TIMEOUT;
use super::session::MAX_QUEUED_MESSAGES;
use super::wire::{RECEIVE_MAX, TOPIC_ALIAS_MAX, WireError};

/// Why a client was refused, or its connection ended other than by its DISCONNECT.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Boxed, as is all that is larger than a word or two: a connection's future holds
    /// one, and it is kept as small as the `String` it replaced (see the test below).
    #[error(transparent)]
    Wire(Box<WireError>),
    /// Boxed: tungstenite's error holds a whole HTTP response.
    #[error("WebSocket handshake failed: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    #[error("no WebSocket handshake within {0:?}")]
    NoWebSocketHandshake(Duration),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("no TLS handshake within {0:?}")]
    NoTlsHandshake(Duration),
    #[error("client id differs from the certificate's name")]
    NotTheCertificatesName,
    #[error("refused: {}", .0.reason())]
    Refused(Denied),
    #[error("empty client id needs a clean session")]
    EmptyClientId,
    #[error("the broker holds its maximum of sessions")]
    MaxSessions,
    #[error("weir is shutting down")]
    ShuttingDown,
    #[error("a parked connection could not be served again: {0}")]
    Resume(std::io::Error),
    #[error("the connection could not be parked: {0}")]
    Park(std::io::Error),
    #[error("taken over by a new connection with the same client id")]
    TakenOver,
    /// More than `bytes` bytes (`--mqtt-max-queued-bytes`), or too many messages, waited.
    #[error(
        "a slow subscriber: more than {bytes} bytes or {messages} messages waited for it",
        messages = MAX_QUEUED_MESSAGES
    )]
    Slow { bytes: usize },
    #[error("let go while writing (a slow subscriber, or taken over)")]
    LetGo,
    #[error("the client read nothing for {timeout:?}", timeout = WRITE_TIMEOUT)]
    WriteTimeout,
    #[error("keep-alive timeout")]
    KeepAlive,
    #[error("topic alias {0} is not from 1 to {max}", max = TOPIC_ALIAS_MAX)]
    AliasOutOfRange(u16),
    #[error("topic alias {0} was never set")]
    AliasNeverSet(u16),
    #[error("invalid topic name '{0}'")]
    InvalidTopic(Box<str>),
    #[error("more than {max} QoS 1 and 2 messages unacknowledged", max = RECEIVE_MAX)]
    ReceiveMaximum,
    #[error("invalid will topic '{0}'")]
    InvalidWillTopic(Box<str>),
    #[error("the ACL does not let the client write its will topic")]
    WillNotAuthorized,
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        Self::Wire(Box::new(e))
    }
}

impl Classify for ClientError {
    /// What the client sent or did is the client's (user); the network, a slow reader
    /// or a limit reached are external; weir's own parking failing is internal.
    fn class(&self) -> ErrorClass {
        match self {
            Self::Wire(e) => e.class(),
            Self::WebSocket(_)
            | Self::Tls(_)
            | Self::NotTheCertificatesName
            | Self::Refused(_)
            | Self::EmptyClientId
            | Self::TakenOver
            | Self::AliasOutOfRange(_)
            | Self::AliasNeverSet(_)
            | Self::InvalidTopic(_)
            | Self::ReceiveMaximum
            | Self::InvalidWillTopic(_)
            | Self::WillNotAuthorized => ErrorClass::User,
            Self::NoWebSocketHandshake(_)
            | Self::NoTlsHandshake(_)
            | Self::MaxSessions
            | Self::ShuttingDown
            | Self::Slow { .. }
            | Self::LetGo
            | Self::WriteTimeout
            | Self::KeepAlive => ErrorClass::External,
            Self::Resume(_) | Self::Park(_) => ErrorClass::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_error_is_no_larger_than_a_string() {
        assert!(std::mem::size_of::<ClientError>() <= std::mem::size_of::<String>());
    }

    #[test]
    fn texts_are_those_logged_before() {
        let slow = ClientError::Slow { bytes: 16 };
        assert_eq!(
            slow.to_string(),
            "a slow subscriber: more than 16 bytes or 4096 messages waited for it"
        );
        assert_eq!(
            ClientError::AliasOutOfRange(11).to_string(),
            "topic alias 11 is not from 1 to 10"
        );
        assert_eq!(
            ClientError::from(WireError::ClosedBeforeConnect).to_string(),
            "closed before CONNECT"
        );
        assert_eq!(
            ClientError::Refused(Denied::BadCredentials).to_string(),
            "refused: bad_credentials"
        );
    }
}
