//! How an error is classified, once, where it is defined: whose fault it is and whether
//! trying again can help. Callers derive what they do from the class, never from an
//! error's text: the HTTP status of an API answer, the log level, whether a sink retries.
//!
//! Every library error enum implements [`Classify`].

/// Whose an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The input is wrong (SQL, a setting, a rule's action, a payload, a request): the one
    /// who sent it fixes it, and sending the same again fails the same way. An API answers
    /// 4xx; logged at most as a warning.
    User,
    /// Something outside weir failed or refused (a broker, a database, a sink's endpoint,
    /// the network): trying again later may succeed. An API answers 502 or 503; logged as
    /// a warning.
    External,
    /// weir itself failed (its own disk, a broken invariant): an operator looks. An API
    /// answers 500; logged as an error.
    Internal,
}

impl ErrorClass {
    /// Whether the same operation may succeed if tried again unchanged.
    pub fn retryable(self) -> bool {
        matches!(self, Self::External)
    }
}

/// An error that knows its [`ErrorClass`].
pub trait Classify {
    fn class(&self) -> ErrorClass;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_external_errors_are_worth_retrying() {
        assert!(ErrorClass::External.retryable());
        assert!(!ErrorClass::User.retryable());
        assert!(!ErrorClass::Internal.retryable());
    }
}
