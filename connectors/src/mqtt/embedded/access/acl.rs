//! The ACL file, in Mosquitto's `acl_file` syntax: per user (and for anonymous clients)
//! which topics it may read, write or not touch, and patterns for every client (`%c` its
//! client id, `%u` its username).

use std::collections::HashMap;
use std::path::Path;

use weir_engine::topic::{matches, validate_filter};

use super::file::{AccessFileError, LineError, Problem, load};

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
    pub fn load(path: &Path) -> Result<Self, AccessFileError> {
        load(path, Self::parse)
    }

    /// Parses the text of an ACL file.
    pub fn parse(text: &str) -> Result<Self, LineError> {
        let mut acl = Self::default();
        let mut user: Option<String> = None;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |problem: Problem| LineError::at(n, problem);
            let (keyword, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
            let rest = rest.trim_start();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(bad(Problem::NoUsername));
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
                        return Err(bad(Problem::NoTopic(keyword.to_owned())));
                    }
                    validate_filter(topic).map_err(|error| {
                        bad(Problem::BadFilter {
                            topic: topic.to_owned(),
                            error,
                        })
                    })?;
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
                    return Err(bad(Problem::UnknownKeyword(other.to_owned())));
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
