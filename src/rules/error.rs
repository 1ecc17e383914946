//! Why a change of a rule or a connection was refused or failed, classified once: the
//! API's status and code follow from it (`src/api/error.rs`).

use weir_connectors::delivery::ConfigError;
use weir_engine::{Classify, ErrorClass, SqlError};

use crate::store::NameError;

/// Why a rule change was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("{0}")]
    Sql(SqlError),
    /// An action's configuration, or building its sink.
    #[error("{context}: {message}")]
    Action { context: String, message: String },
    /// An action's destination is one the operator's policy does not let rules reach.
    #[error("{context}: {message}")]
    NotAllowed { context: String, message: String },
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("no rule named '{0}'")]
    NotFound(String),
    #[error("no connection named '{0}'")]
    ConnectionNotFound(String),
    #[error("the connection '{name}' is used by the rules {rules:?}; change or delete them first")]
    ConnectionInUse { name: String, rules: Vec<String> },
    /// weir keeps this many connections, the most it keeps.
    #[error("weir has {0} connections, the most it keeps; delete one first")]
    TooManyConnections(usize),
    /// The instance has as many rules as it may.
    #[error("weir has {0} rules, as many as --max-rules allows; delete one or raise the limit")]
    TooManyRules(usize),
    /// Something else in the request is wrong.
    #[error("{0}")]
    Request(String),
    /// The rule is not at the version the request required (`If-Match`).
    #[error("{}", match current {
        Some(v) => format!("rule '{name}' is at version {v}, not the one the request names (read it again)"),
        None => format!("no rule named '{name}', as the request requires"),
    })]
    PreconditionFailed { name: String, current: Option<u64> },
    /// Other replicas kept changing the rule while this one tried to store its change.
    #[error("rule '{0}' was changed by another replica meanwhile, again and again; try again")]
    Conflict(String),
    /// The rule's own tests fail: each failure with what it expected, what the rule
    /// gave, and the difference.
    #[error("{} of the rule's {total} tests failed", failures.len())]
    TestsFailed {
        total: usize,
        failures: Vec<serde_json::Value>,
    },
    /// The store could not be written: the change was not made.
    #[error("{0:#}")]
    Store(anyhow::Error),
}

impl RuleError {
    pub(super) fn action(context: impl Into<String>, e: ConfigError) -> Self {
        let (context, message) = (context.into(), e.to_string());
        match e {
            ConfigError::NotAllowed { .. } => Self::NotAllowed { context, message },
            _ => Self::Action { context, message },
        }
    }
}

impl Classify for RuleError {
    fn class(&self) -> ErrorClass {
        match self {
            Self::Store(_) => ErrorClass::Internal,
            Self::Conflict(_) => ErrorClass::External,
            _ => ErrorClass::User,
        }
    }
}
