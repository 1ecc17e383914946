//! Retained messages: the last message published with RETAIN on each topic, sent to every
//! new subscription that matches it. An empty retained message clears its topic. The
//! store is bounded in bytes; a message that does not fit is not retained (and counted).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use weir_engine::MqttProperties;
use weir_engine::topic::matches;

#[derive(Clone)]
pub struct Retained {
    pub payload: Bytes,
    pub qos: u8,
    pub properties: Option<Arc<MqttProperties>>,
    pub expires_at: Option<Instant>,
}

impl Retained {
    fn size(topic: &str, payload: &Bytes) -> usize {
        topic.len() + payload.len() + 64
    }
}

#[derive(Default)]
pub struct RetainedStore {
    messages: HashMap<Arc<str>, Retained>,
    bytes: usize,
}

impl RetainedStore {
    /// Stores (or, with an empty payload, clears) the retained message of `topic`.
    /// Returns false when it does not fit in `max_bytes`.
    pub fn set(&mut self, topic: &str, message: Retained, max_bytes: usize) -> bool {
        if let Some(old) = self.messages.remove(topic) {
            self.bytes -= Retained::size(topic, &old.payload);
        }
        if message.payload.is_empty() {
            return true;
        }
        let size = Retained::size(topic, &message.payload);
        if self.bytes + size > max_bytes {
            return false;
        }
        self.bytes += size;
        self.messages.insert(Arc::from(topic), message);
        true
    }

    /// The retained messages a subscription to `filter` gets, leaving out (and forgetting)
    /// expired ones.
    pub fn matching(&mut self, filter: &str) -> Vec<(Arc<str>, Retained)> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut out = Vec::new();
        for (topic, m) in &self.messages {
            if !matches(filter, topic) {
                continue;
            }
            if m.expires_at.is_some_and(|t| t <= now) {
                expired.push(topic.clone());
            } else {
                out.push((topic.clone(), m.clone()));
            }
        }
        for topic in expired {
            if let Some(old) = self.messages.remove(&topic) {
                self.bytes -= Retained::size(&topic, &old.payload);
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Every retained message, for saving.
    pub fn all(&self) -> impl Iterator<Item = (&Arc<str>, &Retained)> {
        self.messages.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(payload: &'static [u8]) -> Retained {
        Retained {
            payload: Bytes::from_static(payload),
            qos: 1,
            properties: None,
            expires_at: None,
        }
    }

    #[test]
    fn retained_messages_replace_clear_match_and_stay_bounded() {
        let mut store = RetainedStore::default();
        assert!(store.set("a/b", m(b"1"), 1 << 20));
        assert!(store.set("a/b", m(b"2"), 1 << 20));
        assert!(store.set("a/c", m(b"3"), 1 << 20));
        assert!(store.set("$SYS/x", m(b"4"), 1 << 20));
        let got: Vec<_> = store
            .matching("a/+")
            .into_iter()
            .map(|(t, r)| (t.to_string(), r.payload))
            .collect();
        assert_eq!(
            got,
            [
                ("a/b".to_owned(), Bytes::from_static(b"2")),
                ("a/c".to_owned(), Bytes::from_static(b"3"))
            ]
        );
        // `#` does not reach `$` topics.
        assert_eq!(store.matching("#").len(), 2);
        assert!(store.set("a/b", m(b""), 1 << 20));
        assert_eq!(store.len(), 2);
        // Over the bound: not retained, and what was there is cleared, not kept stale.
        let small = Retained::size("a/c", &Bytes::from_static(b"3")) + 1;
        assert!(!store.set("a/d", m(b"too big for what is left"), small));
        assert_eq!(store.len(), 2);
        let mut expired = m(b"old");
        expired.expires_at = Some(Instant::now());
        assert!(store.set("a/e", expired, 1 << 20));
        assert_eq!(store.matching("a/e").len(), 0);
        assert_eq!(store.len(), 2, "an expired message is forgotten");
    }
}
