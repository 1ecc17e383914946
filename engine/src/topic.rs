//! MQTT topic filters and the router's topic trie.
//!
//! A rule's `FROM '<filter>'` is an MQTT topic filter: levels separated by `/`, `+` matching
//! exactly one level and `#` (last level only) matching any number of remaining levels,
//! including none. [`TopicTrie`] indexes many filters so that finding the rules for one
//! message costs in proportion to the topic's depth and the number of matches, not to the
//! number of rules installed.
//!
//! Topics and filters have at most [`MAX_LEVELS`] levels (as EMQX's default): a device
//! cannot make weir walk, build or drop a trie deep enough to exhaust a thread's stack. The
//! trie takes no deeper filter, so its depth, and the recursion of its walk, is bounded
//! whatever a topic holds.

use std::collections::HashMap;

use crate::error::{Classify, ErrorClass};

/// The most levels a topic or a topic filter may have.
pub const MAX_LEVELS: usize = 128;

/// Why a topic filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic filter is empty")]
    Empty,
    #[error("topic filter '{filter}': '#' must be the last level and stand alone in it")]
    MisplacedHash { filter: String },
    #[error("topic filter '{filter}': '+' must stand alone in its level")]
    MisplacedPlus { filter: String },
    #[error("topic filter '{filter}' contains a NUL character")]
    Nul { filter: String },
    #[error("topic '{topic}' must not contain the wildcards '+' or '#'")]
    WildcardInTopic { topic: String },
    #[error("topic or filter of {levels} levels: at most {MAX_LEVELS} are allowed")]
    TooDeep { levels: usize },
}

impl Classify for TopicError {
    fn class(&self) -> ErrorClass {
        ErrorClass::User
    }
}

/// Refuses a topic or filter of more than [`MAX_LEVELS`] levels.
fn check_depth(topic: &str) -> Result<(), TopicError> {
    let levels = topic.bytes().filter(|b| *b == b'/').count() + 1;
    if levels > MAX_LEVELS {
        return Err(TopicError::TooDeep { levels });
    }
    Ok(())
}

/// Checks that `filter` is a valid MQTT topic filter (MQTT 3.1.1 §4.7).
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if filter.contains('\0') {
        return Err(TopicError::Nul {
            filter: filter.to_owned(),
        });
    }
    check_depth(filter)?;
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
            return Err(TopicError::MisplacedHash {
                filter: filter.to_owned(),
            });
        }
        if level.contains('+') && *level != "+" {
            return Err(TopicError::MisplacedPlus {
                filter: filter.to_owned(),
            });
        }
    }
    Ok(())
}

/// Checks that `topic` is a valid topic name to publish to (no wildcards, at most
/// [`MAX_LEVELS`] levels). One pass over the bytes: it runs for every message.
pub fn validate_topic(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = 1;
    for b in topic.bytes() {
        match b {
            b'/' => levels += 1,
            b'+' | b'#' => {
                return Err(TopicError::WildcardInTopic {
                    topic: topic.to_owned(),
                });
            }
            0 => {
                return Err(TopicError::Nul {
                    filter: topic.to_owned(),
                });
            }
            _ => {}
        }
    }
    if levels > MAX_LEVELS {
        return Err(TopicError::TooDeep { levels });
    }
    Ok(())
}

/// Whether `topic` matches `filter`. Topics starting with `$` are not matched by filters
/// that start with a wildcard (MQTT 3.1.1 §4.7.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// AWS IoT Basic Ingest: a message published to `$aws/rules/<rule>/<topic>` goes to the
/// rule named `<rule>` only, as if published to `<topic>`. Returns `(rule, topic)`.
pub fn basic_ingest(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix("$aws/rules/")?;
    let (rule, topic) = rest.split_once('/')?;
    (!rule.is_empty() && !topic.is_empty()).then_some((rule, topic))
}

/// The topic filter that carries a rule's Basic Ingest messages: `$aws/rules/<rule>/`
/// and the rule's own filter.
pub fn basic_ingest_filter(rule: &str, filter: &str) -> String {
    format!("$aws/rules/{rule}/{filter}")
}

/// A trie of topic filters, each carrying values of type `T` (rule ids, subscriber ids).
#[derive(Debug, Clone)]
pub struct TopicTrie<T> {
    root: Node<T>,
    len: usize,
}

#[derive(Debug, Clone)]
struct Node<T> {
    children: Children<T>,
    plus: Option<Box<Node<T>>>,
    /// Values whose filter ends with `#` at this node.
    hash: Vec<T>,
    /// Values whose filter ends exactly at this node.
    exact: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            children: Children::Few(Vec::new()),
            plus: None,
            hash: Vec::new(),
            exact: Vec::new(),
        }
    }
}

/// The children of a trie node by level name. Most nodes have one or a few (with 10,000
/// rules on `site/<n>/metrics`, 10,000 nodes have one child each): those are a short list,
/// searched in order, which costs a tenth of the smallest hash table; a node with many
/// children (`site/` itself) gets a hash table.
#[derive(Debug, Clone)]
enum Children<T> {
    Few(Vec<(Box<str>, Node<T>)>),
    Many(HashMap<Box<str>, Node<T>>),
}

/// Above this many children, a node's children are a hash table.
const FEW: usize = 8;

impl<T> Children<T> {
    fn is_empty(&self) -> bool {
        match self {
            Self::Few(v) => v.is_empty(),
            Self::Many(m) => m.is_empty(),
        }
    }

    fn get(&self, level: &str) -> Option<&Node<T>> {
        match self {
            Self::Few(v) => v.iter().find(|(k, _)| &**k == level).map(|(_, n)| n),
            Self::Many(m) => m.get(level),
        }
    }

    fn get_mut(&mut self, level: &str) -> Option<&mut Node<T>> {
        match self {
            Self::Few(v) => v.iter_mut().find(|(k, _)| &**k == level).map(|(_, n)| n),
            Self::Many(m) => m.get_mut(level),
        }
    }

    fn get_or_default(&mut self, level: &str) -> &mut Node<T> {
        if let Self::Few(v) = self
            && v.len() >= FEW
            && !v.iter().any(|(k, _)| &**k == level)
        {
            *self = Self::Many(std::mem::take(v).into_iter().collect());
        }
        match self {
            Self::Few(v) => {
                let i = match v.iter().position(|(k, _)| &**k == level) {
                    Some(i) => i,
                    None => {
                        v.push((level.into(), Node::default()));
                        v.len() - 1
                    }
                };
                &mut v[i].1
            }
            Self::Many(m) => m.entry(level.into()).or_default(),
        }
    }

    fn remove(&mut self, level: &str) {
        match self {
            Self::Few(v) => v.retain(|(k, _)| &**k != level),
            Self::Many(m) => {
                m.remove(level);
            }
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.hash.is_empty()
            && self.exact.is_empty()
    }
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            len: 0,
        }
    }
}

impl<T: PartialEq + Clone> TopicTrie<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (filter, value) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `value` under `filter`. The filter must be valid (see [`validate_filter`]);
    /// one of more than [`MAX_LEVELS`] levels is not taken.
    pub fn insert(&mut self, filter: &str, value: T) {
        if check_depth(filter).is_err() {
            debug_assert!(false, "a filter deeper than MAX_LEVELS reached the trie");
            return;
        }
        let mut node = &mut self.root;
        for level in filter.split('/') {
            match level {
                "#" => {
                    node.hash.push(value);
                    self.len += 1;
                    return;
                }
                "+" => node = node.plus.get_or_insert_with(Default::default),
                _ => node = node.children.get_or_default(level),
            }
        }
        node.exact.push(value);
        self.len += 1;
    }

    /// Removes one `value` stored under `filter`; returns whether it was there.
    pub fn remove(&mut self, filter: &str, value: &T) -> bool {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = Self::remove_at(&mut self.root, &levels, value);
        if removed {
            self.len -= 1;
        }
        removed
    }

    fn remove_at(node: &mut Node<T>, levels: &[&str], value: &T) -> bool {
        let take = |list: &mut Vec<T>| match list.iter().position(|v| v == value) {
            Some(i) => {
                list.swap_remove(i);
                true
            }
            None => false,
        };
        match levels.split_first() {
            None => take(&mut node.exact),
            Some((&"#", _)) => take(&mut node.hash),
            Some((&"+", rest)) => {
                let Some(child) = node.plus.as_deref_mut() else {
                    return false;
                };
                let removed = Self::remove_at(child, rest, value);
                if child.is_empty() {
                    node.plus = None;
                }
                removed
            }
            Some((level, rest)) => {
                let Some(child) = node.children.get_mut(level) else {
                    return false;
                };
                let removed = Self::remove_at(child, rest, value);
                if child.is_empty() {
                    node.children.remove(level);
                }
                removed
            }
        }
    }

    /// Calls `f` with every value whose filter matches `topic`.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&T)) {
        let dollar = topic.starts_with('$');
        Self::walk(&self.root, topic.split('/'), dollar, &mut f);
    }

    /// The values whose filter matches `topic`.
    pub fn matches(&self, topic: &str) -> Vec<T> {
        let mut out = Vec::new();
        self.for_each_match(topic, |v| out.push(v.clone()));
        out
    }

    /// `levels` is the rest of the topic (a `Split` is cheap to clone: no allocation per
    /// message).
    fn walk(
        node: &Node<T>,
        mut levels: std::str::Split<'_, char>,
        skip_wild: bool,
        f: &mut impl FnMut(&T),
    ) {
        // `#` also matches the parent level: `a/#` matches `a`.
        if !skip_wild {
            node.hash.iter().for_each(&mut *f);
        }
        let Some(level) = levels.next() else {
            node.exact.iter().for_each(&mut *f);
            return;
        };
        let rest = levels;
        if let Some(child) = node.children.get(level) {
            Self::walk(child, rest.clone(), false, f);
        }
        if !skip_wild && let Some(plus) = &node.plus {
            Self::walk(plus, rest, false, f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_filters() {
        for ok in ["a", "a/b", "+", "#", "a/+/c", "a/#", "+/+/#", "/", "a//b"] {
            assert_eq!(validate_filter(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_filter(""), Err(TopicError::Empty));
        for bad in ["a#", "a/#/b", "#/a", "a+", "a/b+/c", "+a"] {
            assert!(validate_filter(bad).is_err(), "{bad}");
        }
        assert!(validate_topic("a/+/b").is_err());
        assert!(validate_topic("a/b").is_ok());
    }

    /// A device's 9,000-level topic or filter is refused, and a trie walk with such a
    /// topic goes no deeper than the trie, whose depth is bounded.
    #[test]
    fn deep_topics_are_refused_and_cannot_deepen_the_trie() {
        let deepest_ok = vec!["a"; MAX_LEVELS].join("/");
        assert!(validate_topic(&deepest_ok).is_ok());
        assert!(validate_filter(&deepest_ok).is_ok());
        let deep = vec!["a"; 9000].join("/");
        assert_eq!(
            validate_topic(&deep),
            Err(TopicError::TooDeep { levels: 9000 })
        );
        assert!(validate_filter(&format!("{deep}/#")).is_err());
        let mut trie = TopicTrie::new();
        trie.insert(&deepest_ok, 1);
        trie.insert("a/#", 2);
        // Walked, built and dropped on a thread with a small stack: a trie or walk as deep
        // as the topic would overflow it.
        let handle = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                assert_eq!(trie.matches(&deep), vec![2]);
                assert_eq!(trie.matches(&deepest_ok), vec![2, 1]);
            })
            .unwrap();
        handle.join().unwrap();
    }

    #[test]
    fn matches_like_the_spec() {
        let cases = [
            ("a/b/c", "a/b/c", true),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/d", false),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            (
                "enterprise/facilities/+/metrics",
                "enterprise/facilities/plant-01/metrics",
                true,
            ),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(matches(filter, topic), want, "{filter} vs {topic}");
            let mut trie = TopicTrie::new();
            trie.insert(filter, 1u32);
            assert_eq!(
                !trie.matches(topic).is_empty(),
                want,
                "trie: {filter} vs {topic}"
            );
        }
    }

    #[test]
    fn wide_levels_match_and_empty_out() {
        let mut trie = TopicTrie::new();
        for i in 0..3 * FEW {
            trie.insert(&format!("site/{i}/metrics"), i);
            trie.insert(&format!("site/{i}/+"), 1000 + i);
        }
        for i in 0..3 * FEW {
            let mut got = trie.matches(&format!("site/{i}/metrics"));
            got.sort();
            assert_eq!(got, [i, 1000 + i]);
            assert_eq!(trie.matches(&format!("site/{i}/other")), [1000 + i]);
        }
        assert!(trie.matches("site/x/metrics").is_empty());
        for i in 0..3 * FEW {
            assert!(trie.remove(&format!("site/{i}/metrics"), &i));
            assert!(trie.remove(&format!("site/{i}/+"), &(1000 + i)));
        }
        assert!(trie.is_empty());
        assert!(trie.root.is_empty());
    }

    #[test]
    fn basic_ingest_topics() {
        assert_eq!(
            basic_ingest("$aws/rules/BuildingManager/Buildings/Building5"),
            Some(("BuildingManager", "Buildings/Building5"))
        );
        assert_eq!(basic_ingest("$aws/rules/r"), None);
        assert_eq!(basic_ingest("$aws/rules//x"), None);
        assert_eq!(basic_ingest("plant/1"), None);
        let filter = basic_ingest_filter("BuildingManager", "Buildings/+");
        assert!(matches(
            &filter,
            "$aws/rules/BuildingManager/Buildings/Building5"
        ));
        assert_eq!(
            basic_ingest("$aws/rules/BuildingManager/Buildings/Building5"),
            Some(("BuildingManager", "Buildings/Building5"))
        );
    }

    #[test]
    fn trie_agrees_with_matches_over_many_filters() {
        let filters = [
            "a/b/c", "a/+/c", "a/#", "#", "+/b/+", "a/b", "x/y/z", "+", "a/+/+/d", "$SYS/#",
        ];
        let topics = [
            "a/b/c",
            "a/b",
            "a",
            "x/y/z",
            "a/q/c/d",
            "b/b/b",
            "$SYS/load",
            "z",
        ];
        let mut trie = TopicTrie::new();
        for (i, f) in filters.iter().enumerate() {
            trie.insert(f, i);
        }
        for t in topics {
            let mut got = trie.matches(t);
            got.sort();
            let want: Vec<usize> = (0..filters.len())
                .filter(|&i| matches(filters[i], t))
                .collect();
            assert_eq!(got, want, "topic {t}");
        }
        assert!(trie.remove("a/#", &2));
        assert!(!trie.remove("a/#", &2));
        assert!(!trie.matches("a/zzz").contains(&2));
        assert_eq!(trie.len(), filters.len() - 1);
        for (i, f) in filters.iter().enumerate() {
            if i != 2 {
                assert!(trie.remove(f, &i));
            }
        }
        assert!(trie.is_empty());
        assert!(trie.root.is_empty());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn level() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("a".to_owned()),
                Just("b".to_owned()),
                Just("".to_owned()),
                Just("$s".to_owned())
            ]
        }

        fn topic() -> impl Strategy<Value = String> {
            prop::collection::vec(level(), 1..5)
                .prop_map(|v| v.join("/"))
                .prop_filter("an empty topic is invalid", |t| !t.is_empty())
        }

        fn filter() -> impl Strategy<Value = String> {
            (
                prop::collection::vec(prop_oneof![level(), Just("+".to_owned())], 1..5),
                any::<bool>(),
            )
                .prop_map(|(mut v, hash)| {
                    if hash {
                        v.push("#".to_owned());
                    }
                    v.join("/")
                })
                .prop_filter("an empty filter is invalid", |f| !f.is_empty())
        }

        proptest! {
            #[test]
            fn trie_matches_exactly_what_matches_says(
                filters in prop::collection::vec(filter(), 1..20),
                topics in prop::collection::vec(topic(), 1..20),
            ) {
                let mut trie = TopicTrie::new();
                for (i, f) in filters.iter().enumerate() {
                    prop_assert!(validate_filter(f).is_ok(), "{}", f);
                    trie.insert(f, i);
                }
                for t in &topics {
                    let mut got = trie.matches(t);
                    got.sort();
                    let want: Vec<usize> = (0..filters.len()).filter(|&i| matches(&filters[i], t)).collect();
                    prop_assert_eq!(got, want, "topic {}", t);
                }
                for (i, f) in filters.iter().enumerate() {
                    prop_assert!(trie.remove(f, &i));
                }
                prop_assert!(trie.is_empty());
            }
        }
    }
}
