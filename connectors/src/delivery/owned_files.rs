//! Files that a sink of this process owns (disk buffer segments, staging files), so that a
//! sink adopting what earlier runs left never takes a file that a running sink writes, and
//! names unique to each owner.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// The set of files some sink of this process holds.
pub(crate) fn claimed() -> MutexGuard<'static, HashSet<PathBuf>> {
    static CLAIMED: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    CLAIMED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Claims `path`; false if another sink of this process holds it.
pub(crate) fn claim(path: &Path) -> bool {
    claimed().insert(path.to_owned())
}

/// Lets go of `path`, so that a later sink of this process may adopt it.
pub(crate) fn release(path: &Path) {
    claimed().remove(path);
}

/// A name prefix unique to this process and caller, sortable by the process's start time.
pub(crate) fn unique_owner() -> String {
    static PROCESS: OnceLock<i64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let started = *PROCESS.get_or_init(weir_engine::now_ms);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{started:013}-{n:06}")
}
