//! Rules at start: the rule files of the queries directory loaded into the store, and the
//! stored rules started.

use std::path::Path;

use anyhow::Context;

use super::error::RuleError;
use super::spec::{StoredRule, parse_rule_file};
use super::state::{CONFLICT_TRIES, RuleService};

impl RuleService {
    /// Starts the stored rules, after loading the rule files of `queries_dir` into the
    /// store (a file replaces a stored rule of the same name). A rule file that is not
    /// valid stops weir; a stored rule that no longer starts is logged and left stopped.
    /// The store stays locked throughout, so that a change made over the API meanwhile
    /// waits and is not undone by the loading.
    pub async fn load(&self, queries_dir: &Path) -> anyhow::Result<()> {
        let mut rules = self.rules.lock().await;
        // The rules stored (and so started) from files here.
        let mut started = std::collections::HashSet::new();
        if let Ok(entries) = std::fs::read_dir(queries_dir) {
            let mut files: Vec<_> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sql"))
                .collect();
            files.sort();
            for path in files {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let (name, spec) = parse_rule_file(&path, &text)?;
                let source = format!("file:{}", path.display());
                // A file stored as it is now is not stored again (its version would
                // change at every start, of every replica of a fleet): it starts below.
                if rules
                    .get(&name)
                    .is_some_and(|r| r.spec == spec && r.source == source)
                {
                    continue;
                }
                let mut stored = None;
                for _ in 0..CONFLICT_TRIES {
                    match self
                        .put_locked(&mut rules, &name, spec.clone(), source.clone())
                        .await
                    {
                        Err(RuleError::Conflict(_)) => continue,
                        done => {
                            stored = Some(done);
                            break;
                        }
                    }
                }
                stored
                    .unwrap_or_else(|| Err(RuleError::Conflict(name.clone())))
                    .map_err(|e| anyhow::anyhow!("rule file {}: {e}", path.display()))?;
                started.insert(name.clone());
                tracing::info!(rule = %name, file = %path.display(), "loaded rule file");
            }
        }
        let stored: Vec<StoredRule> = rules
            .values()
            .filter(|r| r.spec.enabled && !started.contains(&r.name))
            .cloned()
            .collect();
        for rule in &stored {
            self.run_here(rule).await;
        }
        Ok(())
    }
}
