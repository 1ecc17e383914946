//! Device shadows: how large a document may grow, how many shadows weir keeps, and how
//! much memory their cache may take (docs/shadows.md, "Limits").

use anyhow::bail;
use clap::Args;

use super::values::at_least_one;

/// The largest `--shadow-max-bytes`: Greengrass's local maximum (AWS's cloud: 8 KB).
const MAX_DOCUMENT: usize = 30 * 1024;
/// The smallest shadow cache: less than a few pages of the store.
const MIN_CACHE: usize = 1 << 20;

#[derive(Debug, Clone, Args)]
pub struct ShadowArgs {
    /// Most bytes of a shadow's desired and reported state (compact JSON, metadata
    /// excluded, after the update is merged); an update past it is a 413. At most 30720.
    #[arg(long, default_value_t = 8192)]
    pub shadow_max_bytes: usize,
    /// Most shadows (and deleted shadows' tombstones) weir keeps; an update making one
    /// more is a 429, so a client cannot fill the disk by inventing names.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_shadows: usize,
    /// Memory the shadow store may cache documents in, in bytes (at least 1 MiB); the rest
    /// is read from disk [default: 33554432 (32 MiB)].
    #[arg(long, default_value_t = 32 << 20, hide_default_value = true)]
    pub shadow_cache_bytes: usize,
    /// Requests a second one thing's shadows may take (a second's worth at once); past
    /// it, 429 Too Many Requests. 0: no limit.
    #[arg(long, default_value_t = 20)]
    pub shadow_requests_per_second_per_thing: u32,
}

/// Device shadows' limits, resolved.
#[derive(Debug, Clone)]
pub struct ShadowSettings {
    pub max_bytes: usize,
    pub max_shadows: usize,
    pub cache_bytes: usize,
    pub requests_per_second_per_thing: u32,
}

impl ShadowArgs {
    pub fn resolve(&self) -> anyhow::Result<ShadowSettings> {
        let max_bytes = at_least_one("--shadow-max-bytes", self.shadow_max_bytes)?;
        if max_bytes > MAX_DOCUMENT {
            bail!("--shadow-max-bytes must be at most {MAX_DOCUMENT} (30 KiB), got {max_bytes}");
        }
        if self.shadow_cache_bytes < MIN_CACHE {
            bail!(
                "--shadow-cache-bytes must be at least {MIN_CACHE} (1 MiB), got {}",
                self.shadow_cache_bytes
            );
        }
        Ok(ShadowSettings {
            max_bytes,
            max_shadows: at_least_one("--max-shadows", self.max_shadows)?,
            cache_bytes: self.shadow_cache_bytes,
            requests_per_second_per_thing: self.shadow_requests_per_second_per_thing,
        })
    }
}
