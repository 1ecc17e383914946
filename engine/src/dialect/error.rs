//! Why a rule or expression was refused, with its position in the SQL text.

use std::fmt;

use datafusion::sql::sqlparser::parser::ParserError;
use datafusion::sql::sqlparser::tokenizer::{Location, Span};

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
