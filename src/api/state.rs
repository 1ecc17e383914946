//! What every handler shares: the service's state, and how a request body is read.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use super::error::ApiError;
use crate::auth::Auth;
use crate::auth::device::Devices;
use crate::config::Browsers;
use crate::rules::RuleService;
use crate::shadow::Shadows;

/// Shared state of the API handlers.
pub struct AppState {
    pub rules: Arc<RuleService>,
    pub auth: Arc<Auth>,
    pub shadows: Arc<Shadows>,
    /// What device tokens may publish and read (the broker's ACL), and how large.
    pub devices: Devices,
    /// Whether weir serves traffic: false while it starts (rules load) and once it stops.
    pub ready: AtomicBool,
    /// Which browser pages and host names may call `/v1` and `/metrics`.
    pub browsers: Browsers,
}

/// Parses a JSON body with an error that says where it is wrong: `invalid_json` when it
/// is not JSON, `shape` (`invalid_rule`, `invalid_request`) when it is JSON of another
/// shape.
pub fn parse_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    shape: &'static str,
) -> Result<T, ApiError> {
    serde_json::from_slice::<T>(body).map_err(|e| ApiError::body(&e, shape))
}
