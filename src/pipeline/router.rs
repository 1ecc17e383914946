//! The routing table: which running rules a message goes to, by their topic filters in a
//! trie ([`weir_engine::topic::TopicTrie`]). A message published on
//! `$aws/rules/<rule>/<topic>` (AWS's Basic Ingest) goes to that rule only, as `<topic>`.
//!
//! The table is immutable and swapped whole on rule changes; the pipeline's router
//! (`Pipeline::route`) routes what is queued together, against one snapshot of it.

use std::collections::HashMap;
use std::sync::Arc;

use weir_engine::Message;
use weir_engine::topic::{TopicTrie, basic_ingest};

/// What a routing table routes to: a rule, by its name and topic filter.
pub(super) trait Routed {
    fn name(&self) -> &Arc<str>;
    fn filter(&self) -> &str;
}

/// The routing table: the running rules, by topic filter and by name.
pub(super) struct Routes<R> {
    trie: TopicTrie<usize>,
    pub(super) rules: Vec<Arc<R>>,
    /// Rule name → index in `rules`, for Basic Ingest topics.
    by_name: HashMap<Arc<str>, usize>,
}

impl<R> Default for Routes<R> {
    fn default() -> Self {
        Self {
            trie: TopicTrie::default(),
            rules: Vec::new(),
            by_name: HashMap::new(),
        }
    }
}

impl<R: Routed> Routes<R> {
    pub(super) fn new<'a>(running: impl Iterator<Item = &'a Arc<R>>) -> Self
    where
        R: 'a,
    {
        let mut routes = Self::default();
        for r in running {
            routes.trie.insert(r.filter(), routes.rules.len());
            routes.by_name.insert(r.name().clone(), routes.rules.len());
            routes.rules.push(r.clone());
        }
        routes
    }

    /// The rules `msg` goes to, into `targets`; a Basic Ingest topic loses its prefix.
    pub(super) fn targets(&self, msg: &mut Message, targets: &mut Vec<usize>) {
        targets.clear();
        if let Some((rule, topic)) = basic_ingest(&msg.topic) {
            // Basic Ingest: only the named rule, and only if its filter matches.
            if let Some(&i) = self.by_name.get(rule)
                && weir_engine::topic::matches(self.rules[i].filter(), topic)
            {
                targets.push(i);
            }
            msg.topic = topic.to_owned();
        } else {
            self.trie.for_each_match(&msg.topic, |i| targets.push(*i));
        }
    }
}
