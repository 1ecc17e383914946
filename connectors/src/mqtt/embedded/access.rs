//! Who may connect to the embedded broker and what each client may publish and read: a
//! password file in Mosquitto's `mosquitto_passwd` format and an ACL file in Mosquitto's
//! `acl_file` syntax, so that operators reuse the files they have.
//!
//! Anonymous clients (no username) are let in only where [`Access::allow_anonymous`] says
//! so: by default, only when the broker listens on loopback, as Mosquitto 2 does.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

use base64::Engine as _;
use weir_engine::topic::{matches, validate_filter};

/// How the broker checks clients.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Users and their password hashes; `None` when no password file was given.
    pub passwords: Option<PasswordFile>,
    /// Topic permissions; `None` lets every client publish and read every topic.
    pub acl: Option<Acl>,
    /// Whether a client that sends no username may connect to the plain listener
    /// (`--mqtt-listen`); the TLS listener has a setting of its own.
    pub allow_anonymous: bool,
}

/// Why a CONNECT was refused by [`Access::authenticate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No username, and anonymous clients are not allowed.
    Anonymous,
    /// An unknown username or a wrong password.
    BadCredentials,
}

impl Denied {
    /// The label of `weir_broker_connections_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Anonymous => "anonymous",
            Self::BadCredentials => "bad_credentials",
        }
    }
}

impl Access {
    /// The client's identity if it may connect: the username it proved, or `None` for an
    /// anonymous client. Without a password file a username is not checked, and so not
    /// trusted as an identity: the client counts as anonymous.
    pub fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        allow_anonymous: bool,
    ) -> Result<Option<String>, Denied> {
        match (username, &self.passwords) {
            (Some(user), Some(file)) => {
                if file.verify(user, password.unwrap_or_default()) {
                    Ok(Some(user.to_owned()))
                } else {
                    Err(Denied::BadCredentials)
                }
            }
            _ if allow_anonymous => Ok(None),
            _ => Err(Denied::Anonymous),
        }
    }
}

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
    pub fn load(path: &Path) -> Result<Self, String> {
        load(path, Self::parse)
    }

    /// Parses the text of a password file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| format!("line {}: {why}", n + 1);
            let (user, stored) = line
                .split_once(':')
                .ok_or_else(|| bad("expected user:hash"))?;
            if user.is_empty() {
                return Err(bad("empty username"));
            }
            let fields: Vec<&str> = stored.split('$').collect();
            let decode = |s: &str| b64.decode(s).map_err(|_| bad("the hash is not base64"));
            let hash = match fields.as_slice() {
                ["", "7", iterations, salt, hash] => Hash::Pbkdf2 {
                    iterations: iterations
                        .parse()
                        .map_err(|_| bad("the iteration count is not a positive number"))?,
                    salt: decode(salt)?,
                    hash: decode(hash)?,
                },
                ["", "6", salt, hash] => Hash::Sha512 {
                    salt: decode(salt)?,
                    hash: decode(hash)?,
                },
                _ => {
                    return Err(bad(
                        "not a mosquitto_passwd hash ($7$ PBKDF2-SHA512 or $6$ SHA-512); \
                         plain-text passwords are not accepted",
                    ));
                }
            };
            if users.insert(user.to_owned(), hash).is_some() {
                return Err(bad("this user is listed twice"));
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

/// Reads and parses a file; errors start with its path.
fn load<T>(path: &Path, parse: fn(&str) -> Result<T, String>) -> Result<T, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What an ACL entry allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    fn allows(self, want: Want) -> bool {
        matches!(
            (self, want),
            (Self::ReadWrite, _)
                | (Self::Read, Want::Read | Want::Subscribe)
                | (Self::Write, Want::Write)
        )
    }
}

/// What a client asks to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Receive a message published to this topic.
    Read,
    /// Publish to this topic.
    Write,
    /// Subscribe to this filter.
    Subscribe,
}

#[derive(Debug, Clone)]
struct Entry {
    grant: Grant,
    /// A topic filter; for `pattern` entries, with `%c` and `%u` still in it.
    topic: String,
}

/// A Mosquitto ACL file:
///
/// ```text
/// # lines before the first `user` apply to anonymous clients
/// topic read public/#
/// user dash
/// topic read plant/#
/// # pattern lines apply to every client; %c is its client id, %u its username
/// pattern write devices/%c/telemetry
/// ```
///
/// An entry without `read`, `write` or `deny` grants both reading and writing. A client
/// may do what some entry of its own (or a pattern) grants and no matching `deny` entry
/// forbids; anything else is refused.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    anonymous: Vec<Entry>,
    users: HashMap<String, Vec<Entry>>,
    patterns: Vec<Entry>,
}

impl Acl {
    /// Reads an ACL file. Errors name the line.
    pub fn load(path: &Path) -> Result<Self, String> {
        load(path, Self::parse)
    }

    /// Parses the text of an ACL file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut acl = Self::default();
        let mut user: Option<String> = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: String| format!("line {}: {why}", n + 1);
            let (keyword, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
            let rest = rest.trim_start();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(bad("`user` needs a username".into()));
                    }
                    user = Some(rest.to_owned());
                }
                "topic" | "pattern" => {
                    let (grant, topic) = match rest.split_once([' ', '\t']) {
                        Some(("read", t)) => (Grant::Read, t),
                        Some(("write", t)) => (Grant::Write, t),
                        Some(("readwrite", t)) => (Grant::ReadWrite, t),
                        Some(("deny", t)) => (Grant::Deny, t),
                        _ => (Grant::ReadWrite, rest),
                    };
                    let topic = topic.trim_start();
                    if topic.is_empty() {
                        return Err(bad(format!("`{keyword}` needs a topic")));
                    }
                    validate_filter(topic).map_err(|e| bad(format!("'{topic}': {e}")))?;
                    let entry = Entry {
                        grant,
                        topic: topic.to_owned(),
                    };
                    match (keyword, &user) {
                        ("pattern", _) => acl.patterns.push(entry),
                        (_, Some(u)) => acl.users.entry(u.clone()).or_default().push(entry),
                        (_, None) => acl.anonymous.push(entry),
                    }
                }
                other => {
                    return Err(bad(format!(
                        "unknown keyword '{other}' (expected user, topic or pattern)"
                    )));
                }
            }
        }
        Ok(acl)
    }

    /// Whether the client (`username`, `None` when anonymous) may do `want` with `topic`
    /// (a topic name, or for [`Want::Subscribe`] a filter).
    pub fn allows(&self, username: Option<&str>, client_id: &str, want: Want, topic: &str) -> bool {
        let own = match username {
            Some(u) => self.users.get(u).map_or(&[][..], Vec::as_slice),
            None => &self.anonymous,
        };
        let mut granted = false;
        let mut check = |grant: Grant, filter: &str| {
            let hit = match want {
                Want::Subscribe => covers(filter, topic),
                Want::Read | Want::Write => matches(filter, topic),
            };
            if !hit {
                return true;
            }
            if grant == Grant::Deny {
                return false;
            }
            granted |= grant.allows(want);
            true
        };
        for e in own {
            if !check(e.grant, &e.topic) {
                return false;
            }
        }
        for e in &self.patterns {
            // A pattern naming %u means nothing for an anonymous client.
            if username.is_none() && e.topic.contains("%u") {
                continue;
            }
            let Some(filter) = substitute(&e.topic, client_id, username.unwrap_or_default()) else {
                continue;
            };
            if !check(e.grant, &filter) {
                return false;
            }
        }
        granted
    }
}

/// `%c` and `%u` replaced by the client id and username; `None` when either holds a
/// character that would change the pattern's meaning (`+`, `#`, `/`), as Mosquitto does.
fn substitute(pattern: &str, client_id: &str, username: &str) -> Option<String> {
    let unsafe_in = |s: &str| s.contains(['+', '#', '/']);
    if (pattern.contains("%c") && unsafe_in(client_id))
        || (pattern.contains("%u") && unsafe_in(username))
    {
        return None;
    }
    Some(pattern.replace("%c", client_id).replace("%u", username))
}

/// Whether every topic `filter` matches is also matched by `acl` (so a subscription to
/// `filter` reads nothing the ACL entry does not cover).
fn covers(acl: &str, filter: &str) -> bool {
    if filter.starts_with('$') && (acl.starts_with('+') || acl.starts_with('#')) {
        // A wildcard ACL entry does not reach `$` topics, as with matching.
        return false;
    }
    let mut a = acl.split('/');
    let mut f = filter.split('/');
    loop {
        match (a.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(l)) if l != "#" => {}
            (Some(x), Some(y)) if x == y && x != "+" && x != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by `mosquitto_passwd -c -b pw device-1 's3cret!'` (Mosquitto 2.0.11).
    const PBKDF2: &str = "device-1:$7$101$PrIaRqhVTK63cBVC$9Fcb2QxPS7YBUzxAn1Bfo2VOvoSoMkh6XAztfRB6wQPVGvi5KbPnDV7WUeGMMmPYxYbBR3SOb/fBRfPx5D6ffg==";

    #[test]
    fn mosquitto_passwd_hashes_verify() {
        let file = PasswordFile::parse(&format!("# devices\n{PBKDF2}\n\n")).unwrap();
        assert_eq!(file.len(), 1);
        assert!(file.verify("device-1", b"s3cret!"));
        assert!(!file.verify("device-1", b"s3cret"));
        assert!(!file.verify("device-2", b"s3cret!"));

        // $6$: base64(SHA-512(password || salt)), with the salt's bytes base64 too.
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = b"0123456789ab";
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
        ctx.update(b"pw");
        ctx.update(salt);
        let line = format!(
            "old:$6${}${}",
            b64.encode(salt),
            b64.encode(ctx.finish().as_ref())
        );
        let file = PasswordFile::parse(&line).unwrap();
        assert!(file.verify("old", b"pw"));
        assert!(!file.verify("old", b"pW"));
    }

    #[test]
    fn bad_password_files_name_the_line_and_not_the_secret() {
        for (text, want) in [
            ("alice:plaintext", "line 1: not a mosquitto_passwd hash"),
            ("\nnocolon", "line 2: expected user:hash"),
            (":$6$YQ==$YQ==", "line 1: empty username"),
            ("a:$7$x$YQ==$YQ==", "line 1: the iteration count"),
            ("a:$6$!!$YQ==", "line 1: the hash is not base64"),
            (
                "a:$6$YQ==$YQ==\na:$6$YQ==$YQ==",
                "line 2: this user is listed twice",
            ),
        ] {
            let err = PasswordFile::parse(text).unwrap_err();
            assert!(err.starts_with(want), "{text:?}: {err}");
            assert!(!err.contains("plaintext"), "{err}");
        }
    }

    #[test]
    fn authentication_follows_the_password_file_and_the_anonymous_setting() {
        let passwords = Some(PasswordFile::parse(PBKDF2).unwrap());
        let strict = Access {
            passwords: passwords.clone(),
            acl: None,
            allow_anonymous: false,
        };
        assert_eq!(
            strict.authenticate(Some("device-1"), Some(b"s3cret!"), strict.allow_anonymous),
            Ok(Some("device-1".to_owned()))
        );
        assert_eq!(
            strict.authenticate(Some("device-1"), Some(b"nope"), strict.allow_anonymous),
            Err(Denied::BadCredentials)
        );
        assert_eq!(
            strict.authenticate(Some("device-1"), None, strict.allow_anonymous),
            Err(Denied::BadCredentials)
        );
        assert_eq!(
            strict.authenticate(None, None, strict.allow_anonymous),
            Err(Denied::Anonymous)
        );
        let open = Access {
            allow_anonymous: true,
            ..strict
        };
        assert_eq!(
            open.authenticate(None, None, open.allow_anonymous),
            Ok(None)
        );
        // A wrong password is refused even where anonymous clients are let in.
        assert_eq!(
            open.authenticate(Some("device-1"), Some(b"x"), open.allow_anonymous),
            Err(Denied::BadCredentials)
        );
        // Without a password file a username proves nothing: the client is anonymous.
        let none = Access {
            passwords: None,
            acl: None,
            allow_anonymous: true,
        };
        assert_eq!(
            none.authenticate(Some("root"), Some(b"x"), none.allow_anonymous),
            Ok(None)
        );
        let closed = Access {
            allow_anonymous: false,
            ..none
        };
        assert_eq!(
            closed.authenticate(Some("root"), Some(b"x"), closed.allow_anonymous),
            Err(Denied::Anonymous)
        );
    }

    const ACL: &str = "
# anonymous clients read the public topics
topic read public/#

user dash
topic read plant/#
topic deny plant/secret/#
topic readwrite dash/+

user admin
topic #

pattern write devices/%c/telemetry
pattern read devices/%c/commands
pattern readwrite users/%u/#
";

    #[test]
    fn acl_entries_grant_and_deny_as_mosquitto_does() {
        let acl = Acl::parse(ACL).unwrap();
        let (r, w, s) = (Want::Read, Want::Write, Want::Subscribe);
        // (username, client id, want, topic, allowed)
        for (user, client, want, topic, allowed) in [
            (None, "anon", r, "public/news", true),
            (None, "anon", w, "public/news", false),
            (None, "anon", s, "public/#", true),
            (None, "anon", s, "#", false),
            (None, "anon", r, "plant/1", false),
            (Some("dash"), "d", r, "plant/1/temp", true),
            (Some("dash"), "d", w, "plant/1/temp", false),
            (Some("dash"), "d", r, "plant/secret/key", false),
            (Some("dash"), "d", s, "plant/+/temp", true),
            (Some("dash"), "d", s, "plant/#", true),
            (Some("dash"), "d", s, "plant/secret/#", false),
            (Some("dash"), "d", w, "dash/x", true),
            (Some("dash"), "d", s, "dash/#", false),
            (Some("dash"), "d", r, "public/news", false),
            (Some("admin"), "a", w, "anything/at/all", true),
            (Some("admin"), "a", s, "#", true),
            // `#` does not reach `$` topics.
            (Some("admin"), "a", r, "$SYS/x", false),
            (Some("admin"), "a", s, "$SYS/#", false),
            (None, "dev-7", w, "devices/dev-7/telemetry", true),
            (None, "dev-7", w, "devices/dev-8/telemetry", false),
            (None, "dev-7", r, "devices/dev-7/telemetry", false),
            (None, "dev-7", s, "devices/dev-7/commands", true),
            (None, "dev-7", s, "devices/+/commands", false),
            // A client id with a wildcard in it does not widen a pattern.
            (None, "#", w, "devices/#/telemetry", false),
            (Some("dash"), "d", w, "users/dash/notes", true),
            (Some("dash"), "d", w, "users/admin/notes", false),
            // %u means nothing for an anonymous client.
            (None, "x", w, "users//notes", false),
            (Some("nobody"), "n", r, "public/news", false),
        ] {
            assert_eq!(
                acl.allows(user, client, want, topic),
                allowed,
                "{user:?} {client} {want:?} {topic}"
            );
        }
    }

    #[test]
    fn bad_acl_files_name_the_line() {
        for (text, want) in [
            ("topic", "line 1: `topic` needs a topic"),
            ("pattern", "line 1: `pattern` needs a topic"),
            ("\nuser", "line 2: `user` needs a username"),
            ("topics read a", "line 1: unknown keyword 'topics'"),
            ("topic read a/#/b", "line 1: 'a/#/b'"),
        ] {
            let err = Acl::parse(text).unwrap_err();
            assert!(err.starts_with(want), "{text:?}: {err}");
        }
    }
}
