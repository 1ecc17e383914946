//! How rules run: batches, the time and memory a batch may take, how many rules, and what
//! an action may hold back.

use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::values::{at_least_one, positive};

/// The smallest memory budget a rule may have, in bytes: less would fail every batch
/// after halving it down to single messages.
const MIN_MEMORY_BUDGET: usize = 1 << 20;

#[derive(Debug, Clone, Args)]
pub struct PipelineArgs {
    /// Most messages per rule batch.
    #[arg(long, default_value_t = 1024)]
    pub batch_max_rows: usize,
    /// Longest a message waits for its batch to fill.
    #[arg(long, default_value = "1ms")]
    pub batch_linger: humantime::Duration,
    /// Longest a rule may take to evaluate one batch; past it the batch's messages fail
    /// to the rule's error action (reason `timeout`).
    #[arg(long, default_value = "10s")]
    pub rule_time_budget: humantime::Duration,
    /// Most memory a rule may allocate to evaluate one batch, in bytes (at least 1 MiB); a
    /// batch over it is run again in halves, and a message over it on its own fails to the
    /// rule's error action (reason `memory_budget`) [default: 268435456 (256 MiB)].
    #[arg(long, default_value_t = 256 << 20, hide_default_value = true)]
    pub rule_memory_budget: usize,
    /// Most rules this instance keeps; creating one more is a 409.
    #[arg(long, default_value_t = 1000)]
    pub max_rules: usize,
    /// Outputs queued per action before the rule waits.
    #[arg(long, default_value_t = 1024)]
    pub action_queue: usize,
    /// Size limit of each action's disk buffer, in bytes [default: 1073741824 (1 GiB)].
    #[arg(long, default_value_t = 1 << 30, hide_default_value = true)]
    pub action_buffer_max_bytes: u64,
}

/// How rules run, resolved.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub batch_max_rows: usize,
    pub batch_linger: Duration,
    pub rule_time_budget: Duration,
    pub rule_memory_budget: usize,
    pub max_rules: usize,
    pub action_queue: usize,
    pub action_buffer_max_bytes: u64,
}

impl PipelineArgs {
    pub fn resolve(&self) -> anyhow::Result<PipelineSettings> {
        if self.rule_memory_budget < MIN_MEMORY_BUDGET {
            bail!(
                "--rule-memory-budget must be at least {MIN_MEMORY_BUDGET} (1 MiB), got {}",
                self.rule_memory_budget
            );
        }
        Ok(PipelineSettings {
            batch_max_rows: at_least_one("batch-max-rows", self.batch_max_rows)?,
            batch_linger: self.batch_linger.into(),
            rule_time_budget: positive("rule-time-budget", self.rule_time_budget.into())?,
            rule_memory_budget: self.rule_memory_budget,
            max_rules: at_least_one("max-rules", self.max_rules)?,
            action_queue: at_least_one("action-queue", self.action_queue)?,
            action_buffer_max_bytes: self.action_buffer_max_bytes,
        })
    }
}
