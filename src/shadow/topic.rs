//! Which shadow a topic names, and the topics its answers go to: AWS's
//! `$aws/things/{thing}/shadow[/name/{shadow}]/{update,get,delete}` and their
//! `/accepted`, `/rejected`, `/delta` and `/documents`.

use std::fmt;

/// The longest thing name AWS allows.
pub const THING_MAX: usize = 128;
/// The longest shadow name AWS allows.
pub const SHADOW_MAX: usize = 64;

/// What a request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Update,
    Get,
    Delete,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Update => "update",
            Self::Get => "get",
            Self::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "update" => Some(Self::Update),
            "get" => Some(Self::Get),
            "delete" => Some(Self::Delete),
            _ => None,
        }
    }
}

/// A shadow: a thing's classic shadow (`name` is `None`) or one of its named shadows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShadowId {
    pub thing: String,
    pub name: Option<String>,
}

impl ShadowId {
    /// A shadow whose names are checked: AWS's thing names (`[a-zA-Z0-9:_-]{1,128}`) and
    /// shadow names (`[a-zA-Z0-9:_-]{1,64}`; AWS also allows `$`, which weir, as
    /// Greengrass, does not: it would make topics that look like MQTT system topics).
    pub fn new(thing: &str, name: Option<&str>) -> Result<Self, NameError> {
        check(thing, THING_MAX).map_err(|()| NameError::Thing(shown(thing)))?;
        if let Some(n) = name {
            check(n, SHADOW_MAX).map_err(|()| NameError::Shadow(shown(n)))?;
        }
        Ok(Self {
            thing: thing.to_owned(),
            name: name.map(str::to_owned),
        })
    }

    /// The name AWS's 404 message gives: the shadow's, or the thing's for its classic one.
    pub fn shown(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.thing)
    }

    /// `$aws/things/{thing}/shadow` or `$aws/things/{thing}/shadow/name/{shadow}`.
    pub fn prefix(&self) -> String {
        match &self.name {
            None => format!("$aws/things/{}/shadow", self.thing),
            Some(n) => format!("$aws/things/{}/shadow/name/{n}", self.thing),
        }
    }

    /// The topic an answer to `op` goes to: `<prefix>/<op>/<answer>`.
    pub fn answer(&self, op: Op, answer: &str) -> String {
        format!("{}/{}/{answer}", self.prefix(), op.as_str())
    }
}

impl fmt::Display for ShadowId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            None => write!(f, "{} (classic)", self.thing),
            Some(n) => write!(f, "{}/{n}", self.thing),
        }
    }
}

/// A name no shadow may have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid thing name '{0}': 1 to {THING_MAX} of the characters a-z A-Z 0-9 : _ -")]
    Thing(String),
    #[error("invalid shadow name '{0}': 1 to {SHADOW_MAX} of the characters a-z A-Z 0-9 : _ -")]
    Shadow(String),
}

fn check(name: &str, max: usize) -> Result<(), ()> {
    let ok = (1..=max).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(()) }
}

/// A name as an error shows it: at most 140 characters of it.
fn shown(name: &str) -> String {
    name.chars().take(140).collect()
}

/// A topic that is a shadow request: `$aws/things/{t}/shadow[/name/{s}]/{op}`, its names
/// as the topic has them (checked by [`ShadowId::new`]).
pub fn request(topic: &str) -> Option<(&str, Option<&str>, Op)> {
    let rest = topic.strip_prefix("$aws/things/")?;
    let mut levels = rest.split('/');
    let thing = levels.next()?;
    if levels.next()? != "shadow" {
        return None;
    }
    let (name, op) = match (levels.next()?, levels.next(), levels.next()) {
        (op, None, None) => (None, op),
        ("name", Some(name), Some(op)) => (Some(name), op),
        _ => return None,
    };
    if levels.next().is_some() {
        return None;
    }
    Some((thing, name, Op::parse(op)?))
}

/// The topic filters of every shadow request, for an external broker's subscription.
pub const REQUEST_FILTERS: &[&str] = &[
    "$aws/things/+/shadow/update",
    "$aws/things/+/shadow/get",
    "$aws/things/+/shadow/delete",
    "$aws/things/+/shadow/name/+/update",
    "$aws/things/+/shadow/name/+/get",
    "$aws/things/+/shadow/name/+/delete",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_topics_name_the_shadow_and_the_operation() {
        assert_eq!(
            request("$aws/things/lamp/shadow/update"),
            Some(("lamp", None, Op::Update))
        );
        assert_eq!(
            request("$aws/things/lamp/shadow/name/cfg/get"),
            Some(("lamp", Some("cfg"), Op::Get))
        );
        for not in [
            "$aws/things/lamp/shadow/update/accepted",
            "$aws/things/lamp/shadow/name/cfg/update/delta",
            "$aws/things/lamp/shadow/name/delete",
            "$aws/things/lamp/shadow/patch",
            "$aws/things/lamp/shadows/get",
            "aws/things/lamp/shadow/get",
            "$aws/things/lamp/shadow",
        ] {
            assert_eq!(request(not), None, "{not}");
        }
        // Every request filter matches the requests of its shape.
        for t in [
            "$aws/things/a/shadow/update",
            "$aws/things/a/shadow/name/b/delete",
        ] {
            assert!(
                REQUEST_FILTERS
                    .iter()
                    .any(|f| weir_engine::topic::matches(f, t))
            );
        }
    }

    #[test]
    fn names_are_aws_names_without_dollar() {
        assert!(ShadowId::new("Thing_1:a-b", Some("cfg-2")).is_ok());
        assert_eq!(
            ShadowId::new("", None),
            Err(NameError::Thing(String::new()))
        );
        assert!(ShadowId::new(&"t".repeat(129), None).is_err());
        assert!(ShadowId::new(&"t".repeat(128), Some(&"s".repeat(64))).is_ok());
        assert!(ShadowId::new("t", Some(&"s".repeat(65))).is_err());
        assert!(ShadowId::new("t", Some("$x")).is_err());
        assert!(ShadowId::new("t/x", None).is_err());
        assert!(ShadowId::new("t+", None).is_err());
        let id = ShadowId::new("lamp", Some("cfg")).unwrap();
        assert_eq!(
            id.answer(Op::Update, "accepted"),
            "$aws/things/lamp/shadow/name/cfg/update/accepted"
        );
        assert_eq!(id.shown(), "cfg");
        assert_eq!(ShadowId::new("lamp", None).unwrap().shown(), "lamp");
    }
}
