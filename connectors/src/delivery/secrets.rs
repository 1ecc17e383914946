//! Secrets in an action's configuration (a Kafka SASL password, a storage key, a webhook's
//! `Authorization` header) are write-only: weir needs them to deliver, but no API answer
//! shows them. They are listed as [`REDACTED`], and a rule sent back with [`REDACTED`] where
//! a secret was keeps the secret it had, so a rule read, edited and written back loses
//! nothing.

use std::collections::BTreeMap;

use weir_engine::{Classify, ErrorClass};

/// What an API answer shows in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// The secret maps of a configuration (an action's, a connection's).
pub type SecretMaps<T> = for<'a> fn(&'a mut T) -> Vec<SecretMap<'a>>;

/// A secret sent back [`REDACTED`] that has no stored value to keep.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// A secret of a map: `properties.sasl.password`.
    #[error(
        "{field}.{key} is '{redacted}' and there is no stored value to keep: give its value",
        redacted = REDACTED
    )]
    NoStoredValue { field: &'static str, key: String },
    /// The password of an MQTT connection.
    #[error("password is {redacted}, but no password is stored", redacted = REDACTED)]
    NoStoredPassword,
}

impl Classify for SecretError {
    fn class(&self) -> ErrorClass {
        ErrorClass::User
    }
}

/// `value` with every secret [`REDACTED`].
pub fn redacted<T: Clone>(value: &T, maps: SecretMaps<T>) -> T {
    let mut shown = value.clone();
    maps(&mut shown).iter_mut().for_each(SecretMap::redact);
    shown
}

/// Gives the secrets `value` sends back as [`REDACTED`] their values in `old` (the same
/// configuration as stored, of the same type); `Err` names a secret that has none.
pub fn restore<T: Clone>(
    value: &mut T,
    old: Option<&T>,
    maps: SecretMaps<T>,
) -> Result<(), SecretError> {
    let mut old = old.cloned();
    let olds: Vec<_> = old
        .as_mut()
        .map(|o| maps(o).into_iter().map(|m| &*m.map).collect())
        .unwrap_or_default();
    for (i, m) in maps(value).iter_mut().enumerate() {
        m.restore(olds.get(i).copied())?;
    }
    Ok(())
}

/// A map of an action's configuration whose values may be secrets.
pub struct SecretMap<'a> {
    /// The map's field in the action (`properties`, `options`, `headers`).
    pub field: &'static str,
    pub map: &'a mut BTreeMap<String, String>,
    /// Whether a key's value is a secret.
    pub is_secret: fn(&str) -> bool,
}

impl SecretMap<'_> {
    /// Replaces every secret value with [`REDACTED`].
    pub fn redact(&mut self) {
        for (k, v) in self.map.iter_mut() {
            if (self.is_secret)(k) {
                *v = REDACTED.to_owned();
            }
        }
    }

    /// Gives every secret that is [`REDACTED`] the value it has in `old` (the same map of
    /// the action as stored); `Err` names one that has no value to keep.
    pub fn restore(&mut self, old: Option<&BTreeMap<String, String>>) -> Result<(), SecretError> {
        for (k, v) in self.map.iter_mut() {
            if v != REDACTED || !(self.is_secret)(k) {
                continue;
            }
            match old
                .and_then(|o| o.get(k))
                .filter(|o| o.as_str() != REDACTED)
            {
                Some(kept) => *v = kept.clone(),
                None => {
                    return Err(SecretError::NoStoredValue {
                        field: self.field,
                        key: k.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Whether a setting's name says it holds a secret.
pub fn sounds_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "token", "credential", "private"]
        .iter()
        .any(|s| k.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_kept_when_sent_back() {
        let mut stored: BTreeMap<String, String> = [
            ("sasl.password".to_owned(), "hunter2".to_owned()),
            ("acks".to_owned(), "all".to_owned()),
        ]
        .into();
        let mut shown = stored.clone();
        SecretMap {
            field: "properties",
            map: &mut shown,
            is_secret: sounds_secret,
        }
        .redact();
        assert_eq!(shown["sasl.password"], REDACTED);
        assert_eq!(shown["acks"], "all");
        let mut back = shown.clone();
        back.insert("acks".to_owned(), "1".to_owned());
        SecretMap {
            field: "properties",
            map: &mut back,
            is_secret: sounds_secret,
        }
        .restore(Some(&stored))
        .unwrap();
        assert_eq!(back["sasl.password"], "hunter2");
        assert_eq!(back["acks"], "1");
        stored.clear();
        let err = SecretMap {
            field: "properties",
            map: &mut shown,
            is_secret: sounds_secret,
        }
        .restore(Some(&stored))
        .unwrap_err()
        .to_string();
        assert!(err.contains("properties.sasl.password"), "{err}");
    }
}
