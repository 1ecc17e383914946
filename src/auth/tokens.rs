//! The API tokens an admin made: names, roles and SHA-256 hashes in
//! `<data-dir>/tokens.json` (mode 0600, replaced atomically). The tokens themselves are
//! shown once, when made, and kept nowhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Role;
use crate::rules::spec::validate_name;

/// Why a token could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    InvalidName(String),
    #[error("a token named '{0}' exists; delete it first")]
    Exists(String),
    #[error("the token '{0}' is weir's own and cannot be made or deleted over the API")]
    Reserved(String),
    #[error("there are {MAX_TOKENS} tokens, the most weir keeps; delete one first")]
    TooMany,
    #[error(transparent)]
    Store(anyhow::Error),
}

/// A token as listed: never the token itself.
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    role: Role,
    /// Hex SHA-256 of the token.
    sha256: String,
    created_at_ms: i64,
}

#[derive(Serialize, Deserialize)]
struct TokenFile {
    version: u32,
    tokens: BTreeMap<String, Stored>,
}

/// The most tokens an admin can make. Every request compares its token with each, so
/// the count is bounded; a fleet needs tokens per team or service, not per device.
pub const MAX_TOKENS: usize = 1000;

pub struct TokenStore {
    path: PathBuf,
    tokens: BTreeMap<String, Stored>,
    /// The hashes, decoded, in the order of `tokens`.
    hashes: Vec<([u8; 32], Role)>,
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

impl TokenStore {
    /// Opens the store at `path` (none yet: empty).
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let tokens = match std::fs::read(path) {
            Ok(bytes) => {
                let file: TokenFile = serde_json::from_slice(&bytes)
                    .with_context(|| format!("token store {} is not readable", path.display()))?;
                file.tokens
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut store = Self {
            path: path.to_owned(),
            tokens,
            hashes: Vec::new(),
        };
        store.index()?;
        Ok(store)
    }

    fn index(&mut self) -> anyhow::Result<()> {
        self.hashes = self
            .tokens
            .iter()
            .map(|(name, t)| {
                unhex(&t.sha256).map(|h| (h, t.role)).with_context(|| {
                    format!(
                        "token '{name}' in {} has no valid hash",
                        self.path.display()
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(())
    }

    /// The role of the token whose hash is `h`. Every stored hash is compared, so the
    /// time taken does not say which, if any, matched.
    pub fn role_of(&self, h: &[u8; 32]) -> Option<Role> {
        let mut found = None;
        for (stored, role) in &self.hashes {
            if same(stored, h) {
                found = Some(*role);
            }
        }
        found
    }

    pub fn insert(&mut self, name: &str, role: Role, token: &str) -> Result<(), TokenError> {
        let stored = self.new_entry(name, role, token)?;
        let mut next = self.tokens.clone();
        next.insert(name.to_owned(), stored);
        self.save(next)
    }

    /// What [`TokenStore::insert`] would store for a new token, once checked: a name not
    /// taken, below [`MAX_TOKENS`].
    pub fn new_entry(&self, name: &str, role: Role, token: &str) -> Result<Stored, TokenError> {
        validate_name(name)
            .map_err(|m| TokenError::InvalidName(m.replace("rule name", "token name")))?;
        if self.tokens.contains_key(name) {
            return Err(TokenError::Exists(name.to_owned()));
        }
        if self.tokens.len() >= MAX_TOKENS {
            return Err(TokenError::TooMany);
        }
        Ok(Stored {
            role,
            sha256: hex(&hash(token)),
            created_at_ms: weir_engine::now_ms(),
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tokens.contains_key(name)
    }

    /// Makes `stored` the copy here of the token `name` (`None`: gone), writing nothing:
    /// the fleet's shared store holds it. An entry without a valid hash is left out.
    pub fn set_cached(&mut self, name: &str, stored: Option<Stored>) {
        match stored {
            Some(s) if unhex(&s.sha256).is_some() => {
                self.tokens.insert(name.to_owned(), s);
            }
            Some(_) => {
                tracing::error!(
                    token = name,
                    "a token of the shared store has no valid hash: left out"
                );
                self.tokens.remove(name);
            }
            None => {
                self.tokens.remove(name);
            }
        }
        let _ = self.index();
    }

    /// Replaces every token with those of the fleet's shared store.
    pub fn set_all_cached(&mut self, all: Vec<(String, Stored)>) {
        self.tokens = all
            .into_iter()
            .filter(|(_, s)| unhex(&s.sha256).is_some())
            .collect();
        let _ = self.index();
    }

    pub fn remove(&mut self, name: &str) -> Result<bool, TokenError> {
        if !self.tokens.contains_key(name) {
            return Ok(false);
        }
        let mut next = self.tokens.clone();
        next.remove(name);
        self.save(next).map(|()| true)
    }

    pub fn list(&self) -> Vec<TokenInfo> {
        self.tokens
            .iter()
            .map(|(name, t)| TokenInfo {
                name: name.clone(),
                role: t.role,
                created_at_ms: Some(t.created_at_ms),
            })
            .collect()
    }

    /// Writes `tokens` (a temporary file, synced, renamed over the old one) and makes
    /// them the store's.
    fn save(&mut self, tokens: BTreeMap<String, Stored>) -> Result<(), TokenError> {
        let file = TokenFile { version: 1, tokens };
        serde_json::to_vec_pretty(&file)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| {
                crate::private_file::replace(&self.path, &bytes)
                    .with_context(|| format!("cannot write token store {}", self.path.display()))
            })
            .map_err(TokenError::Store)?;
        self.tokens = file.tokens;
        self.index().map_err(TokenError::Store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_stored_hashed_and_found_by_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("tokens.json");
        let mut store = TokenStore::open(&path).unwrap();
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(a.starts_with("weir_") && a.len() > 40, "{a}");
        store.insert("ci", Role::Editor, &a).unwrap();
        store.insert("dash", Role::Viewer, &b).unwrap();
        assert!(matches!(
            store.insert("ci", Role::Admin, &b),
            Err(TokenError::Exists(_))
        ));
        assert!(matches!(
            store.insert("a b", Role::Admin, &b),
            Err(TokenError::InvalidName(_))
        ));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&a) && !text.contains(&b), "{text}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let store = TokenStore::open(&path).unwrap();
        assert_eq!(store.role_of(&hash(&a)), Some(Role::Editor));
        assert_eq!(store.role_of(&hash(&b)), Some(Role::Viewer));
        assert_eq!(store.role_of(&hash("weir_nope")), None);
        let mut store = store;
        assert!(store.remove("ci").unwrap());
        assert!(!store.remove("ci").unwrap());
        assert_eq!(TokenStore::open(&path).unwrap().role_of(&hash(&a)), None);
    }

    #[test]
    fn an_admin_makes_at_most_max_tokens() {
        let tmp = tempfile::tempdir().unwrap();
        let mut store = TokenStore::open(&tmp.path().join("tokens.json")).unwrap();
        for i in 0..MAX_TOKENS - 1 {
            store.tokens.insert(
                format!("t{i}"),
                Stored {
                    role: Role::Viewer,
                    sha256: hex(&hash(&format!("token-{i}"))),
                    created_at_ms: 0,
                },
            );
        }
        store.insert("last", Role::Viewer, &new_token()).unwrap();
        let err = store.insert("one-more", Role::Viewer, &new_token());
        assert!(matches!(err, Err(TokenError::TooMany)), "{err:?}");
        assert!(store.remove("t0").unwrap());
        store
            .insert("one-more", Role::Viewer, &new_token())
            .unwrap();
        assert_eq!(store.list().len(), MAX_TOKENS);
    }

    #[test]
    fn a_damaged_token_store_is_refused_with_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("tokens.json");
        std::fs::write(&path, b"{\"version\": 1, \"tokens\": {\"ci\": ").unwrap();
        let err = TokenStore::open(&path).err().unwrap();
        assert!(
            format!("{err:#}").contains("tokens.json is not readable"),
            "{err:#}"
        );
        let bad_hash =
            r#"{"version":1,"tokens":{"ci":{"role":"editor","sha256":"zz","created_at_ms":0}}}"#;
        std::fs::write(&path, bad_hash).unwrap();
        let err = TokenStore::open(&path).err().unwrap();
        assert!(
            format!("{err:#}").contains("token 'ci' in")
                && format!("{err:#}").contains("has no valid hash"),
            "{err:#}"
        );
    }
}
