//! The process: how many threads run weir's tasks, and its logs.

use anyhow::bail;
use clap::Args;

use super::values::at_least_one;

#[derive(Debug, Clone, Args)]
pub struct RuntimeArgs {
    /// Threads that run weir's tasks [default: half the CPUs, at least 1]. weir often
    /// shares its host with a broker; fewer threads mean fewer wake-ups across threads
    /// (on 2 cores, one thread used a fifth less CPU per message than two, see README).
    #[arg(long)]
    pub worker_threads: Option<usize>,
    /// Log filter, e.g. info or weir=debug.
    #[arg(long, default_value = "info")]
    pub log: String,
    /// Log format: `human` (a line of text per event) or `json` (a JSON object per line,
    /// for log collectors).
    #[arg(long, default_value = "human", value_name = "human|json")]
    pub log_format: String,
}

/// The process's settings, resolved.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    pub worker_threads: usize,
    pub log: String,
    /// Log lines as JSON objects rather than text.
    pub log_json: bool,
}

impl RuntimeArgs {
    pub fn resolve(&self) -> anyhow::Result<RuntimeSettings> {
        let worker_threads = match self.worker_threads {
            Some(n) => at_least_one("worker-threads", n)?,
            None => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        };
        Ok(RuntimeSettings {
            worker_threads,
            log: self.log.clone(),
            log_json: match self.log_format.as_str() {
                "human" => false,
                "json" => true,
                other => bail!("--log-format must be human or json, got '{other}'"),
            },
        })
    }
}
