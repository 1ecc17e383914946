//! The webhook action: HTTP POST of each output as JSON. Transport errors, timeouts, 429 and
//! 5xx answers are retried by the worker's policy; other 4xx answers are final and go to
//! the error action.
mod config;
mod sink;
#[cfg(test)]
mod tests;

pub use config::{WebhookConfig, WebhookConnection};
pub use sink::{Settings, Webhook};
