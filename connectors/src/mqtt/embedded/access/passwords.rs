//! The password file, in Mosquitto's `mosquitto_passwd` format: each user's salted hash,
//! checked in constant time. Errors name the line, never its contents.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

use base64::Engine as _;

use super::file::{AccessFileError, LineError, Problem, load};

/// A Mosquitto password file: `user:$7$iterations$salt$hash` (PBKDF2-SHA512, what
/// `mosquitto_passwd` 2 writes) or `user:$6$salt$hash` (salted SHA-512, what it wrote
/// before).
#[derive(Clone, Default)]
pub struct PasswordFile {
    users: HashMap<String, Hash>,
}

impl std::fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PasswordFile({} users)", self.users.len())
    }
}

#[derive(Clone)]
enum Hash {
    Pbkdf2 {
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl PasswordFile {
    /// Reads a password file. Errors name the line, never its contents.
    pub fn load(path: &Path) -> Result<Self, AccessFileError> {
        load(path, Self::parse)
    }

    /// Parses the text of a password file.
    pub fn parse(text: &str) -> Result<Self, LineError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |problem: Problem| LineError::at(n, problem);
            let (user, stored) = line.split_once(':').ok_or_else(|| bad(Problem::NoHash))?;
            if user.is_empty() {
                return Err(bad(Problem::EmptyUsername));
            }
            let fields: Vec<&str> = stored.split('$').collect();
            let decode = |s: &str| b64.decode(s).map_err(|_| bad(Problem::NotBase64));
            let hash = match fields.as_slice() {
                ["", "7", iterations, salt, hash] => Hash::Pbkdf2 {
                    iterations: iterations
                        .parse()
                        .map_err(|_| bad(Problem::BadIterations))?,
                    salt: decode(salt)?,
                    hash: decode(hash)?,
                },
                ["", "6", salt, hash] => Hash::Sha512 {
                    salt: decode(salt)?,
                    hash: decode(hash)?,
                },
                _ => {
                    return Err(bad(Problem::NotAHash));
                }
            };
            if users.insert(user.to_owned(), hash).is_some() {
                return Err(bad(Problem::UserTwice));
            }
        }
        Ok(Self { users })
    }

    /// Whether `password` is `user`'s. Constant-time in the hash comparison.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(Hash::Pbkdf2 {
                iterations,
                salt,
                hash,
            }) => ring::pbkdf2::verify(
                ring::pbkdf2::PBKDF2_HMAC_SHA512,
                *iterations,
                salt,
                password,
                hash,
            )
            .is_ok(),
            Some(Hash::Sha512 { salt, hash }) => {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
                ctx.update(password);
                ctx.update(salt);
                let digest = ctx.finish();
                constant_time_eq(digest.as_ref(), hash)
            }
            None => false,
        }
    }

    /// How many users the file lists.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file lists no user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
