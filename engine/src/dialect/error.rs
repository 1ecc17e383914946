//! Why a rule or expression was refused, with its position in the SQL text ([`SqlError`]),
//! and why a function call in it was ([`CallError`], placed at the call by the rewrite).

use std::fmt;

use datafusion::sql::sqlparser::parser::ParserError;
use datafusion::sql::sqlparser::tokenizer::{Location, Span};

use crate::error::{Classify, ErrorClass};

/// A rule or expression that could not be accepted, with its position in the SQL text
/// where known (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    pub message: String,
    pub line: Option<u64>,
    pub column: Option<u64>,
}

impl SqlError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            line: None,
            column: None,
        }
    }

    /// An error at the start of `span`.
    pub(crate) fn at(message: impl Into<String>, span: Span) -> Self {
        let mut e = Self::new(message);
        if span.start != Location::empty() {
            e.line = Some(span.start.line);
            e.column = Some(span.start.column);
        }
        e
    }

    /// sqlparser gives no position for "found: EOF": point after the last character of
    /// `sql`.
    pub(crate) fn at_end_if_unplaced(mut self, sql: &str) -> Self {
        if self.line.is_none() {
            let line = sql.lines().count().max(1);
            let column = sql.lines().last().map_or(0, |l| l.chars().count()) + 1;
            self.line = Some(line as u64);
            self.column = Some(column as u64);
        }
        self
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{} (line {l}, column {c})", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for SqlError {}

impl Classify for SqlError {
    fn class(&self) -> ErrorClass {
        ErrorClass::User
    }
}

/// Why a function call is refused. The rewrite makes it a [`SqlError`] at the call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("{name}() takes {expected} argument(s), got {got}")]
    Arity {
        name: String,
        expected: usize,
        got: usize,
    },
    #[error("substring() takes 2 or 3 arguments, got {0}")]
    SubstringArity(usize),
    #[error(
        "get_thing_shadow() takes the thing, then the shadow's name if it is a named one, then a role ARN (ignored): 1 to 3 arguments, got {0}"
    )]
    ShadowArity(usize),
    /// An argument that is not an expression (`name => value`, `t.*`).
    #[error("unsupported argument to {0}()")]
    Argument(String),
    #[error("a subquery is not supported in a rule")]
    Subquery,
    #[error(
        "get_mqtt_property() takes one of the names '{}'",
        crate::message::MqttProperties::NAMES.join("', '")
    )]
    MqttPropertyName,
    #[error(
        "get_user_properties() takes no argument (all user properties) or a user property key as a string literal"
    )]
    UserPropertyKey,
    /// One of AWS's functions that weir does not have, and why.
    #[error("{name}() is not supported: it {why}")]
    Unsupported { name: String, why: &'static str },
    #[error("window clauses are not supported in a rule")]
    WindowClause,
    #[error("'{0}' is an aggregate or window function; a rule works on one message at a time")]
    Aggregate(String),
    #[error("unknown function '{0}'")]
    Unknown(String),
}

impl Classify for CallError {
    fn class(&self) -> ErrorClass {
        ErrorClass::User
    }
}

impl From<ParserError> for SqlError {
    fn from(e: ParserError) -> Self {
        let text = match e {
            ParserError::TokenizerError(s) | ParserError::ParserError(s) => s,
            ParserError::RecursionLimitExceeded => "the expression nests too deeply".to_owned(),
        };
        // sqlparser appends " at Line: L, Column: C" to its messages.
        if let Some(i) = text.rfind(" at Line: ") {
            let tail = &text[i + " at Line: ".len()..];
            let mut nums = tail.split(", Column: ").map(|s| s.trim().parse::<u64>());
            if let (Some(Ok(line)), Some(Ok(column))) = (nums.next(), nums.next()) {
                return Self {
                    message: text[..i].to_owned(),
                    line: Some(line),
                    column: Some(column),
                };
            }
        }
        Self::new(text)
    }
}
