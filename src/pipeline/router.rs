//! The router: sends each message the ingress hands over to every running rule whose
//! topic filter matches its topic, looked up in a trie of the filters
//! ([`weir_engine::topic::TopicTrie`]). A message published on `$aws/rules/<rule>/<topic>`
//! (AWS's Basic Ingest) goes to that rule only, as `<topic>`.
//!
//! The routing table is immutable and swapped whole on rule changes; what is queued is
//! routed together, against one snapshot of it.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use weir_engine::Message;
use weir_engine::topic::{TopicTrie, basic_ingest};

use super::{Pipeline, RunningRule};

/// Most ingress messages routed against one snapshot of the routing table.
const ROUTE_BATCH: usize = 256;

/// The routing table: the running rules, by topic filter and by name.
#[derive(Default)]
pub(super) struct Routes {
    trie: TopicTrie<usize>,
    rules: Vec<Arc<RunningRule>>,
    /// Rule name → index in `rules`, for Basic Ingest topics.
    by_name: HashMap<Arc<str>, usize>,
}

impl Routes {
    pub(super) fn new<'a>(running: impl Iterator<Item = &'a Arc<RunningRule>>) -> Self {
        let mut routes = Self::default();
        for r in running {
            routes.trie.insert(&r.filter, routes.rules.len());
            routes.by_name.insert(r.name.clone(), routes.rules.len());
            routes.rules.push(r.clone());
        }
        routes
    }

    /// The rules `msg` goes to, into `targets`; a Basic Ingest topic loses its prefix.
    fn targets(&self, msg: &mut Message, targets: &mut Vec<usize>) {
        targets.clear();
        if let Some((rule, topic)) = basic_ingest(&msg.topic) {
            // Basic Ingest: only the named rule, and only if its filter matches.
            if let Some(&i) = self.by_name.get(rule)
                && weir_engine::topic::matches(&self.rules[i].filter, topic)
            {
                targets.push(i);
            }
            msg.topic = topic.to_owned();
        } else {
            self.trie.for_each_match(&msg.topic, |i| targets.push(*i));
        }
    }
}

impl Pipeline {
    /// Routes ingress messages to the rules whose filters match, until the ingress closes.
    pub async fn route(self: Arc<Self>, mut ingress: mpsc::Receiver<Message>, embedded: bool) {
        let mut targets: Vec<usize> = Vec::new();
        let mut inbox: Vec<Message> = Vec::new();
        // What is queued is routed together, against one snapshot of the routing table.
        while ingress.recv_many(&mut inbox, ROUTE_BATCH).await > 0 {
            if embedded {
                self.metrics.ingress_messages.inc_by(inbox.len() as u64);
            }
            let routes = self
                .routes
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for msg in inbox.drain(..) {
                self.route_one(&routes, msg, &mut targets).await;
            }
        }
    }

    /// Sends one message to every rule whose filter matches its topic.
    async fn route_one(&self, routes: &Routes, mut msg: Message, targets: &mut Vec<usize>) {
        routes.targets(&mut msg, targets);
        if targets.is_empty() {
            self.metrics.ingress_unmatched.inc();
            return;
        }
        let msg = Arc::new(msg);
        for &i in targets.iter() {
            let rule = &routes.rules[i];
            if rule.sender(self).send(msg.clone()).await.is_err() {
                // The rule was replaced or stopped between the lookup and the send.
                tracing::debug!(rule = %rule.name, "rule stopped while routing");
            }
        }
    }
}
