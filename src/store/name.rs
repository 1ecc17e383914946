//! The names objects go by: 1 to 128 letters, digits, '_' or '-', for every kind (a name
//! is a path segment of the API, a file name in the queries directory, a label value of
//! the metrics).

use super::backend::Kind;

/// Why a name was refused; the message names the kind (`rule name ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} name must have 1 to 128 characters, got {len}")]
    Length { kind: Kind, len: usize },
    #[error("{kind} name '{name}' contains '{c}'; use letters, digits, '_' and '-'")]
    Character { kind: Kind, name: String, c: char },
}

impl weir_engine::Classify for NameError {
    fn class(&self) -> weir_engine::ErrorClass {
        weir_engine::ErrorClass::User
    }
}

/// Checks the name of an object of `kind`.
pub fn validate_name(kind: Kind, name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > 128 {
        return Err(NameError::Length {
            kind,
            len: name.len(),
        });
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(NameError::Character {
            kind,
            name: name.to_owned(),
            c,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_say_what_they_name() {
        assert!(validate_name(Kind::Rule, "high_temp-1").is_ok());
        assert_eq!(
            validate_name(Kind::Rule, "").unwrap_err().to_string(),
            "rule name must have 1 to 128 characters, got 0"
        );
        assert_eq!(
            validate_name(Kind::Connection, "a b")
                .unwrap_err()
                .to_string(),
            "connection name 'a b' contains ' '; use letters, digits, '_' and '-'"
        );
        assert!(validate_name(Kind::Token, &"x".repeat(129)).is_err());
        assert!(validate_name(Kind::Token, &"x".repeat(128)).is_ok());
    }
}
