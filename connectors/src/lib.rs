//! weir's connectors: how messages get in (MQTT, from the embedded broker or an external
//! one) and how rule outputs get out (the actions), plus the metrics both report.
//!
//! Each connector lives in its own module with the same anatomy: a config type with a pure
//! `validate()`, a constructor that connects, and a run loop.

pub mod actions;
pub mod metrics;
pub mod mqtt;
pub mod retry;
