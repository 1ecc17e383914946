//! Why an action's configuration was refused.

use weir_engine::template::TemplateError;
use weir_engine::{Classify, ErrorClass};

/// Why an action's configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{action}: {message}")]
    Invalid {
        action: &'static str,
        message: String,
    },
    /// The operator's policy does not let a rule reach this destination.
    #[error("{action}: {message}")]
    NotAllowed {
        action: &'static str,
        message: String,
    },
    #[error(transparent)]
    Template(#[from] TemplateError),
}

impl ConfigError {
    pub fn invalid(action: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            action,
            message: message.into(),
        }
    }
}

/// A configuration is the rule author's (or the operator's) to fix: the same again is
/// refused the same way. A sink that cannot be built (a producer, a directory) is reported
/// as [`ConfigError::Invalid`] too, and so classified the same.
impl Classify for ConfigError {
    fn class(&self) -> ErrorClass {
        ErrorClass::User
    }
}
