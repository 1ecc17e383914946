//! Reading a password or ACL file, and what can be wrong with one: it cannot be read
//! ([`AccessFileError::Read`]), or one of its lines is not what the format allows
//! ([`LineError`], naming the line and the [`Problem`], never the line's contents: a
//! password file's lines hold hashes).

use std::path::{Path, PathBuf};

use weir_engine::{Classify, ErrorClass};

/// A password or ACL file weir cannot use. Its text starts with the file's path.
#[derive(Debug, thiserror::Error)]
pub enum AccessFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: LineError },
}

impl Classify for AccessFileError {
    /// The operator's file (or its path) is wrong.
    fn class(&self) -> ErrorClass {
        ErrorClass::User
    }
}

/// A line of a password or ACL file that the format does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct LineError {
    /// From 1.
    pub line: usize,
    pub problem: Problem,
}

impl LineError {
    /// `problem` on the line at index `n` (from 0) of a file's lines.
    pub(super) fn at(n: usize, problem: Problem) -> Self {
        Self {
            line: n + 1,
            problem,
        }
    }
}

impl Classify for LineError {
    fn class(&self) -> ErrorClass {
        ErrorClass::User
    }
}

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    // The password file.
    #[error("expected user:hash")]
    NoHash,
    #[error("empty username")]
    EmptyUsername,
    #[error("the hash is not base64")]
    NotBase64,
    #[error("the iteration count is not a positive number")]
    BadIterations,
    #[error(
        "not a mosquitto_passwd hash ($7$ PBKDF2-SHA512 or $6$ SHA-512); plain-text passwords are not accepted"
    )]
    NotAHash,
    #[error("this user is listed twice")]
    UserTwice,
    // The ACL file.
    #[error("`user` needs a username")]
    NoUsername,
    /// `topic` or `pattern` (the keyword) without a topic.
    #[error("`{0}` needs a topic")]
    NoTopic(String),
    #[error("'{topic}': {error}")]
    BadFilter {
        topic: String,
        error: weir_engine::topic::TopicError,
    },
    #[error("unknown keyword '{0}' (expected user, topic or pattern)")]
    UnknownKeyword(String),
}

/// Reads and parses a file; errors start with its path.
pub(super) fn load<T>(
    path: &Path,
    parse: fn(&str) -> Result<T, LineError>,
) -> Result<T, AccessFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| AccessFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(|source| AccessFileError::Invalid {
        path: path.to_owned(),
        source,
    })
}
