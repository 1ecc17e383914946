//! The rule service as a follower of the store's feed: a rule or a connection changed by
//! another replica (or by this one: then it is already in step) is brought in step here,
//! run, restarted or stopped, without writing anything back.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::spec::StoredRule;
use super::state::{RuleService, Rules, stored};
use crate::store::Kind;
use crate::store::follow::Follower;

impl RuleService {
    /// What follows the store's feed for the rules and for the connections.
    pub fn followers(self: &Arc<Self>) -> Vec<Arc<dyn Follower>> {
        vec![
            Arc::new(RulesFollower(self.clone())),
            Arc::new(ConnectionsFollower(self.clone())),
        ]
    }

    /// Brings the rule `name` in step with the store: what the store holds (or its
    /// absence) is what runs here.
    async fn follow_rule(&self, name: &str) {
        let mut rules = self.rules.lock().await;
        match self.store.get::<StoredRule>(Kind::Rule, name).await {
            Ok(remote) => {
                let remote = remote.and_then(|v| stored(name, v));
                self.adopt(&mut rules, name, remote).await;
            }
            Err(e) => {
                tracing::warn!(rule = name, error = %format!("{e:#}"), "cannot read a changed rule from the store")
            }
        }
    }

    /// Makes `remote` (another replica's version of the rule `name`, or its deletion)
    /// the rule here, and runs it, or stops it.
    async fn adopt(&self, rules: &mut Rules, name: &str, remote: Option<StoredRule>) {
        let local = rules.get(name).map(|r| r.version);
        match remote {
            // The same version with other contents: deleted and made again elsewhere
            // (versions count from 1 again).
            Some(rule) if Some(rule.version) != local || rules.get(name) != Some(&rule) => {
                rules.insert(name.to_owned(), rule.clone());
                tracing::info!(
                    rule = name,
                    version = rule.version,
                    "rule changed in the store: applied"
                );
                if rule.spec.enabled {
                    self.run_here(&rule).await;
                } else {
                    self.pipeline.stop(name);
                }
            }
            None if local.is_some() => {
                rules.remove(name);
                self.pipeline.stop(name);
                self.pipeline.metrics().forget_rule(name);
                tracing::info!(rule = name, "rule deleted in the store: stopped");
            }
            _ => {}
        }
    }
}

struct RulesFollower(Arc<RuleService>);

impl Follower for RulesFollower {
    fn kind(&self) -> Kind {
        Kind::Rule
    }

    fn held(&self) -> BoxFuture<'_, Vec<(String, u64)>> {
        Box::pin(async {
            let rules = self.0.rules.lock().await;
            rules
                .values()
                .map(|r| (r.name.clone(), r.version))
                .collect()
        })
    }

    fn sync<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(self.0.follow_rule(name))
    }
}

struct ConnectionsFollower(Arc<RuleService>);

impl Follower for ConnectionsFollower {
    fn kind(&self) -> Kind {
        Kind::Connection
    }

    fn held(&self) -> BoxFuture<'_, Vec<(String, u64)>> {
        Box::pin(std::future::ready(self.0.connection_versions()))
    }

    fn sync<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(self.0.follow_connection(name))
    }
}
