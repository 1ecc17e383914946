//! The API tokens an admin made, as the store keeps them: a name, a role and the token's
//! SHA-256 hash; the tokens themselves are shown once, when made, and kept nowhere. This
//! is the copy a replica checks requests against ([`Tokens`]), in step with the store.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::role::{Caller, Role};
use crate::store::{NameError, Versioned};

/// Why a token could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("a token named '{0}' exists; delete it first")]
    Exists(String),
    #[error("the token '{0}' is weir's own and cannot be made or deleted over the API")]
    Reserved(String),
    #[error("there are {MAX_TOKENS} tokens, the most weir keeps; delete one first")]
    TooMany,
    /// Other replicas kept changing the token meanwhile.
    #[error("the token '{0}' was changed by another replica meanwhile, again and again; try again")]
    Conflict(String),
    #[error("{0:#}")]
    Store(anyhow::Error),
}

impl weir_engine::Classify for TokenError {
    fn class(&self) -> weir_engine::ErrorClass {
        use weir_engine::ErrorClass;
        match self {
            Self::Store(_) => ErrorClass::Internal,
            Self::Conflict(_) => ErrorClass::External,
            _ => ErrorClass::User,
        }
    }
}

/// A token as listed: never the token itself.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at_ms: Option<i64>,
}

/// A token as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    role: Role,
    /// Hex SHA-256 of the token.
    sha256: String,
    created_at_ms: i64,
}

/// The most tokens an admin can make. Every request compares its token with each, so
/// the count is bounded; a fleet needs tokens per team or service, not per device.
pub const MAX_TOKENS: usize = 1000;

/// The tokens held here, with their versions, and their hashes decoded.
#[derive(Default)]
pub struct Tokens {
    tokens: BTreeMap<String, Versioned<Stored>>,
    /// The hashes, decoded, in the order of `tokens`, with the token's name and role.
    hashes: Vec<([u8; 32], String, Role)>,
}
/// A new token: `weir_` and 32 random bytes, base64url.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "weir_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The SHA-256 of a token. Tokens are long and random, so a fast hash does.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether two hashes are equal, in constant time.
pub fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

fn hex(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Stored {
    /// A new token's entry: its role and hash.
    pub fn new(role: Role, token: &str) -> Self {
        Self {
            role,
            sha256: hex(&hash(token)),
            created_at_ms: weir_engine::now_ms(),
        }
    }
}

impl Tokens {
    /// The store's tokens; one without a valid hash is left out, logged.
    pub fn new(all: Vec<(String, Versioned<Stored>)>) -> Self {
        let mut t = Self::default();
        for (name, v) in all {
            t.set(&name, Some(v));
        }
        t
    }

    fn index(&mut self) {
        self.hashes = self
            .tokens
            .iter()
            .filter_map(|(name, t)| Some((unhex(&t.value.sha256)?, name.clone(), t.value.role)))
            .collect();
    }

    /// The bearer of the token whose hash is `h`. Every stored hash is compared, so the
    /// time taken does not say which, if any, matched.
    pub fn caller(&self, h: &[u8; 32]) -> Option<Caller> {
        let mut found = None;
        for (stored, name, role) in &self.hashes {
            if same(stored, h) {
                found = Some((name, *role));
            }
        }
        found.map(|(name, role)| Caller {
            name: name.clone(),
            role,
        })
    }

    /// Checks that a new token named `name` may be made: a name not taken, below
    /// [`MAX_TOKENS`].
    pub fn check_new(&self, name: &str) -> Result<(), TokenError> {
        if self.tokens.contains_key(name) {
            return Err(TokenError::Exists(name.to_owned()));
        }
        if self.tokens.len() >= MAX_TOKENS {
            return Err(TokenError::TooMany);
        }
        Ok(())
    }

    pub fn version(&self, name: &str) -> Option<u64> {
        self.tokens.get(name).map(|t| t.version)
    }

    /// Every token's version.
    pub fn versions(&self) -> Vec<(String, u64)> {
        self.tokens
            .iter()
            .map(|(n, t)| (n.clone(), t.version))
            .collect()
    }

    /// Makes `stored` the copy here of the token `name` (`None`: gone). An entry without
    /// a valid hash is left out, logged.
    pub fn set(&mut self, name: &str, stored: Option<Versioned<Stored>>) {
        match stored {
            Some(s) if unhex(&s.value.sha256).is_some() => {
                self.tokens.insert(name.to_owned(), s);
            }
            Some(_) => {
                tracing::error!(token = name, "a stored token has no valid hash: left out");
                self.tokens.remove(name);
            }
            None => {
                self.tokens.remove(name);
            }
        }
        self.index();
    }

    pub fn list(&self) -> Vec<TokenInfo> {
        self.tokens
            .iter()
            .map(|(name, t)| TokenInfo {
                name: name.clone(),
                role: t.value.role,
                created_at_ms: Some(t.value.created_at_ms),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_by_hash_and_a_bad_hash_is_left_out() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("weir_") && a.len() > 40, "{a}");
        let v = |s: Stored| Versioned {
            version: 1,
            value: s,
        };
        let mut t = Tokens::new(vec![
            ("ci".to_owned(), v(Stored::new(Role::Editor, &a))),
            ("dash".to_owned(), v(Stored::new(Role::Viewer, &b))),
        ]);
        let ci = t.caller(&hash(&a)).unwrap();
        assert_eq!((ci.name.as_str(), ci.role), ("ci", Role::Editor));
        assert_eq!(t.caller(&hash(&b)).map(|c| c.role), Some(Role::Viewer));
        assert_eq!(t.caller(&hash("weir_nope")), None);
        assert!(matches!(t.check_new("ci"), Err(TokenError::Exists(_))));
        let bad = Stored {
            sha256: "zz".to_owned(),
            ..Stored::new(Role::Admin, "x")
        };
        t.set("bad", Some(v(bad)));
        assert_eq!(
            t.list().len(),
            2,
            "a token without a valid hash is left out"
        );
        t.set("ci", None);
        assert_eq!(t.caller(&hash(&a)), None);
    }

    #[test]
    fn an_admin_makes_at_most_max_tokens() {
        let all = (0..MAX_TOKENS)
            .map(|i| {
                let s = Stored::new(Role::Viewer, &format!("token-{i}"));
                (
                    format!("t{i}"),
                    Versioned {
                        version: 1,
                        value: s,
                    },
                )
            })
            .collect();
        let mut t = Tokens::new(all);
        assert!(matches!(t.check_new("one-more"), Err(TokenError::TooMany)));
        t.set("t0", None);
        t.check_new("one-more").unwrap();
    }
}
