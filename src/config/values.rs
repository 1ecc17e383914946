//! Checks shared by the sections: durations with a floor or `off`, counts of at least one,
//! directories as the policy compares them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

/// A duration setting's value: `5ms`, `30s`, `10m` (humantime's forms), or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrOff(pub Option<Duration>);

impl std::str::FromStr for OrOff {
    type Err = humantime::DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Self(None));
        }
        humantime::parse_duration(s).map(|d| Self(Some(d)))
    }
}

/// A duration of at least a second, or `off` (`None`).
pub fn at_least_a_second(setting: &str, value: OrOff) -> anyhow::Result<Option<Duration>> {
    match value.0 {
        Some(d) if d < Duration::from_secs(1) => bail!("--{setting} must be at least 1s, or off"),
        d => Ok(d),
    }
}

/// Refuses a zero duration.
pub fn positive(setting: &str, d: Duration) -> anyhow::Result<Duration> {
    if d.is_zero() {
        bail!("--{setting}: must be more than 0");
    }
    Ok(d)
}

/// Refuses 0.
pub fn at_least_one(setting: &str, n: usize) -> anyhow::Result<usize> {
    match n {
        0 => bail!("--{setting} must be at least 1"),
        n => Ok(n),
    }
}

/// A directory as an absolute path without `.` or `..`, as the policy compares them
/// with `file://` paths; it need not exist yet.
pub fn absolute_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let abs = std::path::absolute(dir)
        .with_context(|| format!("cannot make {} absolute", dir.display()))?;
    let mut clean = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                clean.pop();
            }
            std::path::Component::CurDir => {}
            other => clean.push(other),
        }
    }
    Ok(clean)
}
